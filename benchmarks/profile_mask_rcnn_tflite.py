"""Mask R-CNN's mask branch, stage by stage, as TFLite (builtins only, kdet's export settings) next to TensorFlow.

    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/profile_mask_rcnn_tflite.py [--rounds 5] [--warmup 2]
        [--only paste,mask_head] [--static] [--output runs/bench/profile_mask_rcnn_tflite.json]

The model, weights and image are bench_mask_rcnn_speed.py's (the maskrcnn_resnet50_fpn twin on
tests/reference/make_mask_rcnn_twin_fixtures.py's seeded weights, 640x480, batch 1; torch only builds the weights);
its folded inference copy (what the export converts) runs the network and Faster R-CNN's decode once, and its
detections are the stages' inputs. Stages, as MaskRCNN.decode runs them:

    mask_roi_align   MultiScaleRoIAlign 14x14 (sampling 2) of P2-P5 on the detected boxes
    mask_head        the four 3x3 256 convs (mask_fcn1..4)
    mask_predictor   the 2x2 stride-2 transposed conv + ReLU and the detected class's logit map
    paste            zeroing rows past num_detections, paste_masks into the image, threshold, zero rows up to 100
    mask_branch      all of the above in one function (compare with the stages' sum)
    int8             the whole model exported fp32 and int8 (dynamic batch), each timed with and without
                     XNNPACK, and per op type how many ops take int8 / float inputs and how many XNNPACK does not
                     take (where the int8 model's time goes). Only with --only int8, in a process without torch
                     (an int8 conversion segfaulted in a process that had imported torch): --save-twin DIR with
                     the venv's python first, then
                     PYTHONPATH=. python3 benchmarks/profile_mask_rcnn_tflite.py --only int8 --twin DIR

Like MaskRCNN.decode, every stage runs on the first max(num_detections) rows of its [1, 100, ...] inputs, a count
only known at run time (TFLite then sizes those tensors at run time); --static cuts
the rows with a Python int instead (static shapes: what the same stages would cost without the data-dependent
count). Each stage goes through benchmarks/profile_tflite.stage_record: converted as kdet exports, timed round-robin
against tf.function of the same code ("tf"; "tf_builtins" too when the builtins-only twins change the graph), with
the ops XNNPACK does not take. Writes JSON with the load average before and after.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCHMARKS = Path(__file__).resolve().parent
STAGES = ("mask_roi_align", "mask_head", "mask_predictor", "paste", "mask_branch", "int8")


def twin_model(saved=None):
    """bench_mask_rcnn_speed.py's kdet model (seeded twin weights, 480x640) and image [1, 480, 640, 3] uint8; from
    `saved` (a --save-twin directory, no torch needed) when given."""
    if saved is not None:
        from kdet.models.mask_rcnn import MaskRCNN
        pixels = np.load(Path(saved) / "image.npy")
        model = MaskRCNN(int(np.load(Path(saved) / "num_classes.npy")), image_size=pixels.shape[1:3])
        model(np.zeros(pixels.shape, np.float32))
        model.load_weights(Path(saved) / "twin.weights.h5")
        return model, pixels
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    import bench_mask_rcnn_speed as bench
    from kdet.convert.torchvision import load_state_dict
    from kdet.models.mask_rcnn import MaskRCNN
    script = bench.fixture_script()
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=script.NUM_CLASSES,
                                      min_size=bench.HEIGHT, max_size=bench.WIDTH).eval()
    _, state = script.twin_state(reference)
    model = MaskRCNN(script.NUM_CLASSES - 1, image_size=(bench.HEIGHT, bench.WIDTH))
    model(np.zeros((1, bench.HEIGHT, bench.WIDTH, 3), np.float32))
    load_state_dict(model, state)
    pixels = script.smooth_images(np.random.default_rng(script.WEIGHT_SEED), 1, bench.HEIGHT, bench.WIDTH)
    return model, np.asarray(pixels, np.uint8)


def class_logits(model, head, columns):
    """The detected class's mask logits [B, R, 28, 28] as this checkout's MaskRCNN.decode computes them."""
    import tensorflow as tf
    predictor = model.mask_predictor
    if hasattr(predictor, "class_logits"):
        return predictor.class_logits(head, columns)
    from kdet.heads.mask_head import class_maps  # before class_logits: every column's map, then the gather
    return class_maps(tf.cast(predictor(head), tf.float32), columns)


def pad_rows(x, rows):
    """[B, K, ...] -> [B, rows, ...] with zeros (a stage's inputs are the decode's 100 rows)."""
    import tensorflow as tf
    x = tf.convert_to_tensor(x)
    return tf.pad(x, [[0, 0], [0, rows - x.shape[1]]] + [[0, 0]] * (x.shape.rank - 2))


def mask_stages(static=False):
    """(folded model, {stage: zero-argument callable with .fn / .inputs (profile_stages.stage)}, detection count)."""
    import tensorflow as tf
    from profile_stages import inference, stage
    from kdet.models.faster_rcnn import FasterRCNN
    from kdet.ops.masks import paste_masks

    unfolded, pixels = twin_model()
    model = inference(unfolded, fold=True)
    size = tuple(pixels.shape[1:3])
    outputs = model(tf.cast(tf.constant(pixels), tf.float32), training=False)
    detections = FasterRCNN.decode(model, outputs, size)
    features, rows = outputs["features"], detections["boxes"].shape[1]
    boxes, classes, found = detections["boxes"], detections["classes"], detections["num_detections"]
    detected = int(tf.reduce_max(found))
    label_ids = tf.constant(model.label_ids, tf.int32)
    # The row count the stages cut to: a run-time tensor as in decode (max(num_detections), at least 1), or --static.
    cut = (lambda n: detected) if static else (lambda n: tf.maximum(tf.reduce_max(n), 1))

    def roi_align(features, boxes, n):
        return model.mask_roi_align(features, tf.cast(boxes[:, :cut(n)], tf.float32))

    def head(pooled, n):
        return model.mask_head(pooled[:, :cut(n)])

    def predictor(head, classes, n):
        count = cut(n)
        return class_logits(model, head[:, :count], tf.gather(label_ids, classes[:, :count]))

    def paste_cut(logits, boxes, n, count):  # logits [B, count, 28, 28]
        probabilities = tf.sigmoid(logits)
        valid = tf.range(count)[None, :] < n[:, None]
        probabilities = probabilities * tf.expand_dims(tf.expand_dims(tf.cast(valid, tf.float32), -1), -1)
        return paste_masks(probabilities, boxes[:, :count], size, model.mask_threshold, rows=rows)

    def paste(logits, boxes, n):
        count = cut(n)
        return paste_cut(logits[:, :count], boxes, n, count)

    def branch(features, boxes, classes, n):
        logits = predictor(head(roi_align(features, boxes, n), n), classes, n)  # cut rows all the way
        return paste_cut(logits, boxes, n, cut(n))

    k = {}
    k["mask_roi_align"], pooled = stage(roi_align, features, boxes, found)
    k["mask_head"], head_out = stage(head, pad_rows(pooled, rows), found)
    k["mask_predictor"], logits = stage(predictor, pad_rows(head_out, rows), classes, found)
    k["paste"], masks = stage(paste, pad_rows(logits, rows), boxes, found)
    k["mask_branch"], whole = stage(branch, features, boxes, classes, found)
    reference = tf.function(lambda x: model.detect(tf.cast(x, tf.float32)))(tf.constant(pixels))["masks"]
    for name, value in (("paste", masks), ("mask_branch", whole)):
        if not np.array_equal(value.numpy(), reference.numpy()):
            raise AssertionError(f"the {name} stage's masks differ from model.detect's")
    return model, k, detected


def op_dtypes(flatbuffer):
    """Per op type of the main subgraph: {op: {"int8": n, "float": n, "other": n, "not_in_xnnpack_int8": n,
    "not_in_xnnpack_float": n}} by the dtype of the op's first input (QUANTIZE counted as float, DEQUANTIZE as
    int8), with profile_tflite.delegation's notion of what XNNPACK takes."""
    from profile_tflite import delegation, interpreter
    it = interpreter(flatbuffer)
    it.allocate_tensors()
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
    missing = delegation(flatbuffer)["not_delegated"]
    table = {}
    for node in it._get_ops_details():  # noqa: SLF001  (as profile_tflite.delegation)
        if node["op_name"] == "DELEGATE":
            continue
        first = next((int(t) for t in node["inputs"] if int(t) >= 0), None)
        kind = dtypes.get(first, "none")
        kind = "int8" if kind in ("int8", "uint8") else "float" if kind.startswith("float") else "other"
        row = table.setdefault(node["op_name"], {"int8": 0, "float": 0, "other": 0})
        row[kind] += 1
    for name, row in table.items():
        row["not_in_xnnpack"] = missing.get(name, 0)
    return dict(sorted(table.items()))


def int8_record(rounds, warmup, directory, twin=None):
    """The whole twin exported fp32 and int8 (calibrated on the bench image), timed round-robin each with and
    without XNNPACK, and per op type how many ops run on int8 / float inputs and how many XNNPACK does not take."""
    from profile_tflite import interpreter
    from speed_common import round_robin
    from kdet.export.tflite import export_tflite
    model, pixels = twin_model(twin)
    records, contenders = {}, {}
    for name, quantize in (("fp32", None), ("int8", "int8")):
        start = time.perf_counter()
        path = export_tflite(model, Path(directory) / f"mask_rcnn_{name}.tflite", quantize=quantize,
                             representative_images=pixels if quantize else None)
        flatbuffer = Path(path).read_bytes()
        records[name] = {"convert_seconds": round(time.perf_counter() - start, 1), "ops": op_dtypes(flatbuffer)}
        for delegate in (True, False):
            runner = interpreter(flatbuffer, delegate=delegate).get_signature_runner("serving_default")
            contenders[f"{name}{'' if delegate else '_no_xnnpack'}"] = lambda r=runner: r(images=pixels)
        print(f"[mask int8] {name}: " + ", ".join(f"{op} {row}" for op, row in records[name]["ops"].items()
                                                    if row["not_in_xnnpack"]), flush=True)
    timing = round_robin(contenders, rounds=rounds, warmup=warmup, reference="fp32")
    print("[mask int8] " + "  ".join(f"{key} {value['median_ms']:.0f} ms ({value['min_ms']:.0f}-{value['max_ms']:.0f})"
                                     for key, value in timing["contenders"].items()), flush=True)
    return {**records, **timing}


def run(names, rounds, warmup, threads, output, static=False, twin=None):
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from profile_tflite import stage_records
    from speed_common import load_average, machine
    start, load_start = time.perf_counter(), load_average()
    stage_names = [name for name in names if name != "int8"]
    model, stages, detected = mask_stages(static) if stage_names else (None, {}, None)
    records = stage_records("mask tflite", {name: stages[name] for name in stage_names}, model, rounds, warmup)
    if "int8" in names:
        with tempfile.TemporaryDirectory() as directory:
            records["int8"] = int8_record(rounds, warmup, directory, twin)
    report = {"machine": machine(threads), "input": {"image": [480, 640], "detections": detected,
                                                      "static_rows": static},
              "rounds": rounds, "warmup": warmup, "stages": records, "seconds": round(time.perf_counter() - start, 1),
              "load_average_start": load_start, "load_average_end": load_average()}
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(report, indent=1))
    print(f"wrote {output} ({report['seconds']} s, load {load_start} -> {report['load_average_end']})")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=",".join(STAGES[:-1]), help="comma-separated stages of " + ", ".join(STAGES))
    parser.add_argument("--static", action="store_true", help="cut the rows with a Python int (static shapes)")
    parser.add_argument("--output", default="runs/bench/profile_mask_rcnn_tflite.json")
    parser.add_argument("--save-twin", help="write the twin's weights and image to this directory and stop")
    parser.add_argument("--twin", help="a --save-twin directory: no torch in this process (int8 calibration "
                                       "segfaults next to torch)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {STAGES}")
    sys.path.insert(0, str(BENCHMARKS))
    if args.twin is None or args.save_twin:
        import torch  # noqa: F401  (both before TensorFlow initialises: importing torchvision after it segfaults)
        import torchvision  # noqa: F401
    if args.save_twin:
        model, pixels = twin_model()
        Path(args.save_twin).mkdir(parents=True, exist_ok=True)
        model.save_weights(Path(args.save_twin) / "twin.weights.h5")
        np.save(Path(args.save_twin) / "image.npy", pixels)
        np.save(Path(args.save_twin) / "num_classes.npy", model.num_classes)
        return
    run(names, args.rounds, args.warmup, args.threads, args.output, args.static, args.twin)


if __name__ == "__main__":
    main()
