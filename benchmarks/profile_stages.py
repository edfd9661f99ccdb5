"""Per-stage inference profile of each twin pair: kdet's stages against the same stages of torchvision's modules.

    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/profile_stages.py                 # all pairs, 5 rounds
    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/profile_stages.py --only retinanet --rounds 3
    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/run_all.py --profile              # the same, inside run_all
    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/profile_stages.py --tflite        # each kdet stage as TFLite
                                                                                          # vs TF (profile_tflite.py)

Pairs (same seeded weights and image as benchmarks/run_all.py's, batch 1): Faster R-CNN R50-FPN 640x480, RetinaNet
R50-FPN 512, SSD300 VGG-16, FCN ResNet-50 512. Every stage is a function of the previous stage's real outputs
(computed once, before timing): on kdet's side each stage is its own tf.function (traced and warmed up before the
timing), on torchvision's the model's own modules under no_grad (transform + backbone.body, backbone.fpn, rpn,
roi_heads.box_roi_pool, head, postprocess_detections, ...). Each stage is timed round-robin by
benchmarks/speed_common.round_robin (kdet and torchvision in turns, ratio per round), then the whole model end to end
the same way (the run_all contenders' calls, so stage sums can be compared with the total). "nms" is a part of
"postprocess": the NMS call inside it, timed alone on the arguments it got (captured from one eager call).
Writes JSON (default runs/bench/profile.json) with the machine record and the load average next to every pair.
"""
import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCHMARKS = Path(__file__).resolve().parent
PAIRS = ("faster_rcnn", "retinanet", "ssd300", "fcn_resnet50")


@contextlib.contextmanager
def capture(module, name, record):
    """Replace module.<name> by a wrapper that stores its last (args, kwargs) in record[name]."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        record[name] = (args, kwargs)
        return original(*args, **kwargs)
    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def stage(fn, *inputs):
    """(tf.function of fn, its real inputs) -> (zero-argument callable, its output). Eager TF on CPU returns when
    the work is done, so the callable's time is the stage's."""
    import tensorflow as tf
    function = tf.function(fn)
    call = lambda: function(*inputs)  # noqa: E731
    call.fn, call.inputs = fn, inputs  # what --tflite converts (benchmarks/profile_tflite.py)
    return call, function(*inputs)


def torch_stage(fn, *inputs):
    """The same for torch: fn under no_grad."""
    import torch

    def call():
        with torch.no_grad():
            return fn(*inputs)
    return call, call()


def nms_stage(module, name, run, replay):
    """The NMS call inside `run` (module.<name>), timed alone: run once to capture its arguments, then
    replay(function, args, kwargs) -> zero-argument callable."""
    record = {}
    with capture(module, name, record):
        run()
    args, kwargs = record[name]
    return replay(getattr(module, name), args, kwargs)


def tf_replay(function, args, kwargs):
    import tensorflow as tf
    where = [i for i, arg in enumerate(args) if tf.is_tensor(arg)]  # the rest (sizes, thresholds) stay constants

    def fn(*tensors):
        full = list(args)
        for i, tensor in zip(where, tensors):
            full[i] = tensor
        return function(*full, **kwargs)
    inputs = tuple(args[i] for i in where)
    traced = tf.function(fn)
    call = lambda: traced(*inputs)  # noqa: E731
    call.fn, call.inputs = fn, inputs
    return call


def inference(model, fold):
    """The model --tflite profiles: its folded inference copy (what kdet's exports convert) when fold."""
    from kdet.models.inference_copy import inference_model
    return inference_model(model) if fold else model


def torch_replay(function, args, kwargs):
    return lambda: function(*args, **kwargs)


def faster_rcnn_stages(fold=False):
    """Faster R-CNN R50-FPN 640x480: backbone, fpn, rpn_head, proposals (anchors, decode, top-k, NMS), roi_align,
    box_head (+ predictor), postprocess (decode, NMS, top 100), nms."""
    import tensorflow as tf
    import bench_faster_rcnn_speed as bench
    from torchvision.models.detection import roi_heads as tv_roi_heads
    from torchvision.models.detection.rpn import concat_box_prediction_layers
    from kdet.heads import roi_box_head
    from kdet.models.faster_rcnn import FPN_LEVELS

    pair = bench.speed_pair(export=False)
    model, reference, pixels, tensor = pair["model"], pair["reference"], pair["pixels"], pair["tensor"]
    image, size = tf.constant(pixels[None]), tuple(pixels.shape[:2])
    model = inference(model, fold)
    pair["kdet"] = {"model": model, "unfolded": pair["model"], "image": pixels[None]}
    k = {}
    k["backbone"], c = stage(lambda x: model.backbone(model.normalize(tf.cast(x, tf.float32))), image)
    k["fpn"], p = stage(lambda c: model.fpn(c), c)
    k["rpn_head"], rpn_out = stage(lambda p: model.rpn_head([p[f"P{level}"] for level in FPN_LEVELS]), p)
    k["proposals"], props = stage(lambda o: model.propose(
        {"rpn_objectness": tf.cast(o[0], tf.float32), "rpn_box_deltas": tf.cast(o[1], tf.float32)}, image), rpn_out)
    levels = [p[f"P{level}"] for level in FPN_LEVELS[:4]]
    k["roi_align"], pooled = stage(lambda rois: model.roi_align(levels, rois), props["proposals"])
    k["box_head"], head = stage(lambda x: model.box_predictor(model.box_head(x)), pooled)
    outputs = {"class_logits": tf.cast(head[0], tf.float32), "box_regression": tf.cast(head[1], tf.float32),
               "proposals": props["proposals"], "proposal_valid": props["proposal_valid"]}
    k["postprocess"], _ = stage(lambda o: model.decode(o, size), outputs)
    k["nms"] = nms_stage(roi_box_head, "combined_nms", lambda: model.decode(outputs, size), tf_replay)

    rpn, heads = reference.rpn, reference.roi_heads

    def proposals(images, features, objectness, deltas):
        anchors = rpn.anchor_generator(images, list(features.values()))
        counts = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        boxes = rpn.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
        return rpn.filter_proposals(boxes, objectness, images.image_sizes, counts)[0]

    def postprocess(logits, regression, rois, images):
        found = heads.postprocess_detections(logits, regression, rois, images.image_sizes)
        detections = [dict(zip(("boxes", "scores", "labels"), x)) for x in zip(*found)]
        return reference.transform.postprocess(detections, images.image_sizes, [tuple(tensor.shape[1:])])

    t = {}
    images = reference.transform([tensor])[0]
    t["backbone"], c = torch_stage(lambda x: reference.backbone.body(reference.transform([x])[0].tensors), tensor)
    t["fpn"], features = torch_stage(reference.backbone.fpn, c)
    t["rpn_head"], (objectness, deltas) = torch_stage(lambda f: rpn.head(list(f.values())), features)
    t["proposals"], rois = torch_stage(proposals, images, features, objectness, deltas)
    t["roi_align"], pooled = torch_stage(heads.box_roi_pool, features, rois, images.image_sizes)
    t["box_head"], (logits, regression) = torch_stage(lambda x: heads.box_predictor(heads.box_head(x)), pooled)
    t["postprocess"], _ = torch_stage(postprocess, logits, regression, rois, images)
    t["nms"] = nms_stage(tv_roi_heads.box_ops, "batched_nms", t["postprocess"], torch_replay)
    return pair, k, t


def retinanet_stages(size=512, fold=False):
    """RetinaNet R50-FPN: backbone, fpn, head, postprocess (per level top-k, box decode, NMS, top 100), nms."""
    import tensorflow as tf
    import torch
    import bench_retinanet_speed as bench
    from torchvision.models.detection import retinanet as tv_retinanet
    from torchvision.models.detection import retinanet_resnet50_fpn
    from kdet.models import retinanet as kdet_retinanet
    from kdet.models.retinanet import RetinaNet
    from kdet.convert.torchvision import load_state_dict, torch_shapes

    pixels = bench.smooth_image(size)
    model = RetinaNet(91, image_size=(size, size), max_detections=100)
    state = bench.seeded_state(torch_shapes(model))
    load_state_dict(model, state)
    kdet = {"model": inference(model, fold), "unfolded": model, "image": pixels}
    model = kdet["model"]
    reference = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=size,
                                       max_size=size, detections_per_img=100).eval()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    tensor = torch.from_numpy(pixels[0].transpose(2, 0, 1).astype(np.float32) / 255.0)
    image = tf.constant(pixels)
    k = {}
    k["backbone"], c = stage(lambda x: model.backbone(model.normalize(tf.cast(x, tf.float32))), image)
    k["fpn"], p = stage(lambda c: model.fpn(c), c)
    k["head"], head = stage(lambda p: {key: tf.cast(v, tf.float32) for key, v in
                                       model.head([p[f"P{level}"] for level in model.levels]).items()}, p)
    k["postprocess"], _ = stage(lambda o: model.decode(o, (size, size)), head)
    k["nms"] = nms_stage(kdet_retinanet, "combined_nms", lambda: model.decode(head, (size, size)), tf_replay)

    def postprocess(images, features, outputs):
        anchors = reference.anchor_generator(images, features)
        counts = [x.size(2) * x.size(3) * 9 for x in features]
        split = {key: list(v.split(counts, dim=1)) for key, v in outputs.items()}
        found = reference.postprocess_detections(split, [list(a.split(counts)) for a in anchors], images.image_sizes)
        return reference.transform.postprocess(found, images.image_sizes, [(size, size)])

    t = {}
    images = reference.transform([tensor])[0]
    t["backbone"], c = torch_stage(lambda x: reference.backbone.body(reference.transform([x])[0].tensors), tensor)
    t["fpn"], features = torch_stage(reference.backbone.fpn, c)
    features = list(features.values())
    t["head"], outputs = torch_stage(reference.head, features)
    t["postprocess"], _ = torch_stage(postprocess, images, features, outputs)
    t["nms"] = nms_stage(tv_retinanet.box_ops, "batched_nms", t["postprocess"], torch_replay)
    e2e = {"kdet_keras": lambda: kdet["unfolded"].predict_on_batch(pixels),
           "torchvision": torch_stage(reference, [tensor])[0]}
    return {"input": f"{size}x{size}", "contenders": e2e, "kdet": kdet}, k, t


def ssd300_stages(fold=False):
    """SSD300 VGG-16: backbone (VGG + extra layers), head, postprocess (softmax, decode, per-class top-k, NMS), nms."""
    import tensorflow as tf
    import torch
    import bench_ssd_speed as bench
    from torchvision.models.detection import ssd as tv_ssd
    from kdet.models import ssd as kdet_ssd

    from torchvision.models.detection import ssd300_vgg16
    from kdet.convert.torchvision import load_state_dict, torch_shapes
    from kdet.models.ssd import SSD

    model = SSD(90)
    state = bench.seeded_state(torch_shapes(model))
    load_state_dict(model, state)
    kdet = {"model": inference(model, fold), "unfolded": model, "image": bench.smooth_image(300)}
    model = kdet["model"]
    reference = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91).eval()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    pixels = bench.smooth_image(300)
    tensor = torch.from_numpy(pixels[0].transpose(2, 0, 1).astype(np.float32) / 255.0)
    image = tf.constant(pixels)
    k = {}
    k["backbone"], features = stage(lambda x: model.features(model.normalize(tf.cast(x, tf.float32))), image)
    k["head"], head = stage(lambda f: {key: tf.cast(v, tf.float32) for key, v in model.head(f).items()}, features)
    k["postprocess"], _ = stage(lambda o: model.decode(o, (300, 300)), head)
    k["nms"] = nms_stage(kdet_ssd, "combined_nms", lambda: model.decode(head, (300, 300)), tf_replay)

    def postprocess(images, features, outputs):
        anchors = reference.anchor_generator(images, features)
        found = reference.postprocess_detections(outputs, anchors, images.image_sizes)
        return reference.transform.postprocess(found, images.image_sizes, [(300, 300)])

    t = {}
    images = reference.transform([tensor])[0]
    t["backbone"], features = torch_stage(lambda x: reference.backbone(reference.transform([x])[0].tensors), tensor)
    features = list(features.values())
    t["head"], outputs = torch_stage(reference.head, features)
    t["postprocess"], _ = torch_stage(postprocess, images, features, outputs)
    t["nms"] = nms_stage(tv_ssd.box_ops, "batched_nms", t["postprocess"], torch_replay)
    e2e = {"kdet_keras": lambda: kdet["unfolded"].predict_on_batch(pixels),
           "torchvision": torch_stage(reference, [tensor])[0]}
    return {"input": "300x300", "contenders": e2e, "kdet": kdet}, k, t


def fcn_resnet50_stages(size=512, fold=False):
    """FCN ResNet-50 (dilated layer3 / layer4): stem (normalise, conv1, maxpool), layer1 .. layer4, classifier,
    upsample (bilinear to the input size), decode (softmax, argmax)."""
    import tensorflow as tf
    import torch
    import torch.nn.functional as F
    import bench_seg_twin_speed as bench

    pair = bench.speed_pair(size, export=False)
    model, reference = inference(pair["model"], fold), pair["reference"]
    net, body = model.backbone, reference.backbone
    pixels = pair["image"]
    pair["kdet"] = {"model": model, "unfolded": pair["model"], "image": pixels}

    def stem(x):
        x = model.normalize(tf.cast(x, tf.float32))
        for layer in net.conv1:
            x = layer(x)
        x = net.relu(net.bn1(x, training=False))
        for layer in net.maxpool:
            x = layer(x)
        return x

    def blocks(stage_blocks):
        def run(x):
            for block in stage_blocks:
                x = block(x, training=False)
            return x
        return run

    k = {}
    k["stem"], x = stage(stem, tf.constant(pixels))
    for i, stage_blocks in enumerate(net.stages):
        k[f"layer{i + 1}"], x = stage(blocks(stage_blocks), x)
    k["classifier"], logits = stage(lambda f: model.classifier(f, training=False), x)
    k["upsample"], full = stage(lambda f: tf.image.resize(f, (size, size), method="bilinear"), logits)
    k["decode"], _ = stage(lambda f: model.decode({"logits": f}, (size, size)), full)

    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    t = {}
    t["stem"], x = torch_stage(lambda image: body.maxpool(body.relu(body.bn1(body.conv1(
        (torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255.0 - mean) / std)))), pixels)
    for i in range(4):
        t[f"layer{i + 1}"], x = torch_stage(getattr(body, f"layer{i + 1}"), x)
    t["classifier"], logits = torch_stage(reference.classifier, x)
    t["upsample"], full = torch_stage(lambda f: F.interpolate(f, size=(size, size), mode="bilinear",
                                                              align_corners=False), logits)
    t["decode"], _ = torch_stage(lambda f: torch.softmax(f, dim=1).argmax(1), full)
    return pair, k, t


BUILDERS = {"faster_rcnn": faster_rcnn_stages, "retinanet": retinanet_stages, "ssd300": ssd300_stages,
            "fcn_resnet50": fcn_resnet50_stages}


def profile_pair(name, rounds, warmup):
    """One pair's record: {"input", "stages": {stage: round_robin result of kdet vs torchvision}, "end_to_end":
    round_robin of the pair's kdet_keras vs torchvision contenders, load averages, seconds}."""
    from speed_common import load_average, round_robin
    start, load_start = time.perf_counter(), load_average()
    pair, kdet_stages, torch_stages = BUILDERS[name]()
    built = time.perf_counter()
    stages = {}
    for stage_name in kdet_stages:
        stages[stage_name] = round_robin({"kdet": kdet_stages[stage_name], "torchvision": torch_stages[stage_name]},
                                         rounds=rounds, warmup=warmup, reference="torchvision")
        summary = {side: stages[stage_name]["contenders"][side]["median_ms"] for side in ("kdet", "torchvision")}
        print(f"[profile] {name} {stage_name:12s} kdet {summary['kdet']:9.2f} ms   torchvision "
              f"{summary['torchvision']:9.2f} ms   ratio {stages[stage_name]['ratios']['kdet']['median']:.3f}",
              flush=True)
    contenders = {key: pair["contenders"][key] for key in ("kdet_keras", "torchvision")}
    end_to_end = round_robin(contenders, rounds=rounds, warmup=warmup, reference="torchvision")
    print(f"[profile] {name} end to end   kdet {end_to_end['contenders']['kdet_keras']['median_ms']:9.2f} ms   "
          f"torchvision {end_to_end['contenders']['torchvision']['median_ms']:9.2f} ms   ratio "
          f"{end_to_end['ratios']['kdet_keras']['median']:.3f}", flush=True)
    return {"input": pair["input"], "stages": stages, "end_to_end": end_to_end,
            "build_seconds": round(built - start, 1), "timing_seconds": round(time.perf_counter() - built, 1),
            "load_average_start": load_start, "load_average_end": load_average()}


def run(names, rounds, warmup, threads, output, tflite=False):
    """Profile `names` (tflite: each kdet stage as TFLite against TensorFlow, benchmarks/profile_tflite.py),
    writing the JSON after every pair -> the record."""
    import torch  # before TensorFlow initialises: importing torchvision after it segfaults
    import torchvision  # noqa: F401
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(threads)
    os.environ["KDET_BENCH_THREADS"] = str(threads)
    sys.path.insert(0, str(BENCHMARKS))
    from speed_common import machine
    import profile_tflite
    record = {"command": "benchmarks/profile_stages.py" + (" --tflite" if tflite else ""), "machine": machine(threads),
              "settings": {"rounds": rounds, "warmup": warmup, "batch": 1}, "pairs": {}}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        if tflite:
            record["pairs"][name] = profile_tflite.profile_pair(name, BUILDERS[name], rounds, warmup, output.parent)
        else:
            record["pairs"][name] = profile_pair(name, rounds, warmup)
        output.write_text(json.dumps(record, indent=1) + "\n")
    print(f"[profile] wrote {output}", flush=True)
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=PAIRS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tflite", action="store_true", help="each kdet stage as its own TFLite model (kdet's "
                        "export settings, BN folded) against the same folded stage in TensorFlow, + XNNPACK coverage")
    parser.add_argument("--output", default=None, help="default runs/bench/profile.json (--tflite: "
                        "runs/bench/profile_tflite.json)")
    args = parser.parse_args(argv)
    output = args.output or f"runs/bench/profile{'_tflite' if args.tflite else ''}.json"
    run(args.only or PAIRS, args.rounds, args.warmup, args.threads, output, args.tflite)


if __name__ == "__main__":
    main()
