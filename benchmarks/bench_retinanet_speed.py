"""RetinaNet ResNet-50-FPN latency: kdet (Keras, SavedModel, TFLite) vs torchvision's retinanet_resnet50_fpn (same seeded weights, same image,
same threads, timed round-robin in one process) and vs KerasHub's RetinaNetObjectDetector (ResNet-50, random init:
KerasHub cannot take torchvision weights), as ratios. One JSON line per figure.

    /tmp/tvenv/bin/python benchmarks/bench_retinanet_speed.py            # torch installed: kdet vs torchvision
    /tmp/khvenv/bin/python benchmarks/bench_retinanet_speed.py           # keras-hub installed: kdet vs KerasHub

Whichever of torch / keras_hub imports is measured; the other is reported as skipped. Each run is one full
detection of one image (normalisation, backbone, FPN, heads, decoding, NMS): kdet and KerasHub through
a compiled function (kdet's `predict_on_batch`; KerasHub's model call + `decode_predictions` in tf.function), torchvision through `model([image])` under `no_grad` with its
resize disabled (min_size = max_size = the image size). The CPU is shared: compare the ratios, not the absolutes.
"""
import argparse
import json
import os

import numpy as np

# OpenMP threads that spin while waiting (torch's default) crawl when the 2 cores are shared with other jobs:
# measured 10 s instead of 1 s for one torchvision RetinaNet call at load 10. Passive waiting, as TF's pool does.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
try:  # torch must be imported before TensorFlow initialises, or importing torchvision later segfaults
    import torch
    import torchvision.models.detection  # noqa: F401
except ImportError:
    torch = None

THREADS = int(os.environ.get("KDET_BENCH_THREADS", "2"))
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(THREADS))
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(1)

from kdet.convert.torchvision import load_state_dict, seeded_state_dict, torch_shapes  # noqa: E402
from kdet.metrics import round_robin_latency  # noqa: E402
from kdet.models.retinanet import RetinaNet  # noqa: E402

WEIGHT_SEED, CLS_WEIGHT_SCALE, CLS_BIAS = 8, 3.0, -4.0  # as tests/reference/make_retinanet_twin_fixtures.py


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": round(float(value), 4), "unit": unit, **extra}), flush=True)


def seeded_state(shapes):
    state = seeded_state_dict(shapes, WEIGHT_SEED)
    state["head.classification_head.cls_logits.weight"] *= CLS_WEIGHT_SCALE
    state["head.classification_head.cls_logits.bias"][:] = CLS_BIAS
    return state


def smooth_image(size, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (1, size // 16 + 1, size // 16 + 1, 3)).astype(np.float32)
    image = tf.image.resize(coarse, (size, size)).numpy() + rng.normal(0, 20, (1, size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def torchvision_runner(size, state):
    import torch
    from torchvision.models.detection import retinanet_resnet50_fpn
    torch.set_num_threads(THREADS)
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=size, max_size=size,
                                   detections_per_img=100).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)

    def run(images):
        with torch.no_grad():
            return model([torch.from_numpy(images[0].transpose(2, 0, 1).astype(np.float32) / 255.0)])
    return run


def keras_hub_runner(size):
    import keras_hub
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
        image_shape=(size, size, 3))
    backbone = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=3, max_level=7, use_p5=True,
                                                  image_shape=(size, size, 3))
    model = keras_hub.models.RetinaNetObjectDetector(backbone=backbone, num_classes=91)
    # predict_on_batch fails in keras-hub 0.32 (decode_predictions unpacks the 1-tuple (x,) as (x, y)): the same
    # forward + decode, compiled with tf.function as kdet's predict function is.
    detect = tf.function(lambda x: model.decode_predictions(model(x, training=False), x))
    return lambda images: {k: v.numpy() for k, v in detect(tf.constant(images, tf.float32)).items()}


def exported_runners(model, images, tag="retinanet_r50"):
    """kdet's SavedModel and TFLite (fp32, builtins only) of the same model, through `kdet.export.load_runner`;
    emits each artifact's detection count next to Keras' (the timed work must be the same)."""
    import tempfile
    from kdet.export import export_saved_model, export_tflite, load_runner
    workdir = tempfile.mkdtemp(prefix="kdet-speed-bench-")
    runners = {}
    for fmt, export in (("saved_model", lambda: export_saved_model(model, os.path.join(workdir, "sm"))),
                        ("tflite", lambda: export_tflite(model, os.path.join(workdir, "m.tflite")))):
        runner = load_runner(export())
        out = runner(images)
        emit(f"{tag}_{fmt}_detections", int(out["num_detections"][0]), "count",
             keras=int(model.predict_on_batch(images)["num_detections"][0]))
        runners[f"kdet_{fmt}"] = runner
    return runners


def round_robin(runners, images, runs, warmup):
    """{name: median ms} of runners called on the same images in turns (`kdet.metrics.round_robin_latency`)."""
    results = round_robin_latency({name: (lambda run=run: run(images)) for name, run in runners.items()},
                                  warmup=warmup, runs=runs)
    return {name: result["median_ms"] for name, result in results.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--skip-export", action="store_true", help="no SavedModel / TFLite latency")
    args = parser.parse_args(argv)
    images = smooth_image(args.size)
    model = RetinaNet(91, image_size=(args.size, args.size), max_detections=100)
    state = seeded_state(torch_shapes(model))
    load_state_dict(model, state)
    runners = {"kdet": lambda x: model.predict_on_batch(x)}
    notes = {}
    try:
        runners["torchvision"] = torchvision_runner(args.size, state)
        kdet_out, torch_out = model.predict_on_batch(images), runners["torchvision"](images)[0]
        count = int(kdet_out["num_detections"][0])
        notes["torchvision_same_count"] = count == len(torch_out["boxes"])
        if notes["torchvision_same_count"] and count:
            notes["torchvision_max_box_diff_px"] = round(float(np.max(np.abs(
                kdet_out["boxes"][0, :count] - torch_out["boxes"].numpy()[:, [1, 0, 3, 2]]))), 5)
    except ImportError as error:
        emit("retinanet_r50_torchvision_skipped", 0, "flag", reason=str(error))
    if not args.skip_export:
        runners.update(exported_runners(model, images))
    try:
        runners["keras_hub"] = keras_hub_runner(args.size)
    except ImportError as error:
        emit("retinanet_r50_keras_hub_skipped", 0, "flag", reason=str(error))
    medians = round_robin(runners, images, args.runs, args.warmup)
    common = dict(image_size=args.size, threads=THREADS, runs=args.runs, batch=1)
    for name, value in medians.items():
        emit(f"retinanet_r50_{args.size}_{name}_median_latency", value, "ms", **common)
    for name in medians:
        if name != "kdet" and not name.startswith("kdet_"):
            emit(f"retinanet_r50_{args.size}_kdet_over_{name}", medians["kdet"] / medians[name], "ratio",
                 **common, **{k: v for k, v in notes.items() if k.startswith(name)})


if __name__ == "__main__":
    main()
