"""Mask R-CNN speed: kdet's maskrcnn_resnet50_fpn twin against torchvision's, same weights, same threads, same process,
at 640x480 batch 1; kdet's SavedModel and TFLite (builtins only) latency; the mask branch's share of each total.

Needs torch + torchvision next to TensorFlow (the scratch venv sees both), from the repo root:

    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/bench_mask_rcnn_speed.py [--runs 7] [--threads 2]
        [--skip-export]

Both models get the seeded weights of tests/reference/make_mask_rcnn_twin_fixtures.py (`twin_state`: seed 8, the
box predictor's class output and the mask logits' bias rescaled so that random weights give confident detections
and masks covering part of their boxes), so their detections and masks are compared first. torchvision's transform
is set to min_size=480, max_size=640: no resize, as kdet takes the image at its network size.

The mask branch's share: each model is also timed without it (kdet: Faster R-CNN's decode on the same outputs;
torchvision: roi_heads without mask_roi_pool), share = 1 - without / with. All functions are timed round-robin
(`kdet.metrics.round_robin_latency`: every round calls each once, so load changes on the shared machine hit all
alike); median, min and max per function; the ratios are what to read. Prints one JSON line per figure.

Measured 2026-12-04 (--runs 7 --threads 2, 2 cores shared with ~7 other sessions, load ~11; 30 detections, kdet =
torchvision: boxes <= 1e-4 px, mask IoU 1.0, also for the SavedModel and the TFLite file): median ms (min-max)
kdet Keras 2744 (1794-3450), torchvision 3962 (2282-5368): ratio 0.693; kdet SavedModel 2747 (1834-2816), 0.693;
kdet TFLite fp32 builtins 3612 (2264-4829), 0.912; mask branch share of the total: kdet 0.218, torchvision 0.167.
Before MaskRCNN.decode ran the mask branch on the max(num_detections) rows only (all 100 rows): ratio 0.944, kdet's
mask branch share 0.403.
"""
import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 480, 640
REPO = Path(__file__).resolve().parents[1]


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": value, "unit": unit, **extra}), flush=True)


def fixture_script():
    """tests/reference/make_mask_rcnn_twin_fixtures.py as a module (its twin_state and constants)."""
    path = REPO / "tests" / "reference" / "make_mask_rcnn_twin_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_mask_rcnn_twin_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(ours, theirs):
    """kdet's detection dict of one image (numpy) vs torchvision's -> (count agrees, pairs, max box px, min mask
    IoU). Pairs: same label, score within 1e-3, box within 0.5 px (greedy: near-tied scores may swap rows)."""
    boxes = theirs["boxes"].numpy()[:, [1, 0, 3, 2]]
    scores, labels = theirs["scores"].numpy(), theirs["labels"].numpy()
    masks = theirs["masks"].numpy()[:, 0] > 0.5
    free, worst_box, worst_iou, pairs = list(range(int(ours["num_detections"]))), 0.0, 1.0, 0
    for box, score, label, mask in zip(boxes, scores, labels, masks):
        errors = [(float(np.max(np.abs(ours["boxes"][j] - box))), j) for j in free
                  if ours["classes"][j] + 1 == label and abs(ours["scores"][j] - score) <= 1e-3]
        errors = [e for e in errors if e[0] <= 0.5]
        if not errors:
            continue
        error, j = min(errors)
        free.remove(j)
        ours_mask = ours["masks"][j] > 0
        union = np.logical_or(ours_mask, mask).sum()
        iou = np.logical_and(ours_mask, mask).sum() / union if union else 1.0
        pairs, worst_box, worst_iou = pairs + 1, max(worst_box, error), min(worst_iou, float(iou))
    return int(ours["num_detections"]) == len(boxes), pairs, worst_box, worst_iou


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-export", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's spinning OpenMP threads crawl on a shared CPU
    import torch  # before TensorFlow initialises: importing torchvision after it segfaults
    import torchvision
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(args.threads)

    from kdet.convert.torchvision import load_state_dict
    from kdet.metrics import round_robin_latency
    from kdet.models.faster_rcnn import FasterRCNN
    from kdet.models.mask_rcnn import MaskRCNN

    script = fixture_script()
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=script.NUM_CLASSES,
                                      min_size=HEIGHT, max_size=WIDTH).eval()
    shapes, state = script.twin_state(reference)
    script.load_state(reference, shapes, state)
    model = MaskRCNN(script.NUM_CLASSES - 1, image_size=(HEIGHT, WIDTH))
    model(np.zeros((1, HEIGHT, WIDTH, 3), np.float32))
    load_state_dict(model, state)

    pixels = script.smooth_images(np.random.default_rng(script.WEIGHT_SEED), 1, HEIGHT, WIDTH)
    inputs = script.torch_inputs(pixels)
    batch = tf.constant(pixels)
    spec = [tf.TensorSpec((None, HEIGHT, WIDTH, 3), tf.uint8)]
    detect = tf.function(lambda x: model.detect(tf.cast(x, tf.float32)), input_signature=spec)
    detect_boxes = tf.function(  # the same network and box post-processing, no mask branch
        lambda x: FasterRCNN.decode(model, model(tf.cast(x, tf.float32), training=False), (HEIGHT, WIDTH)),
        input_signature=spec)
    mask_parts = (reference.roi_heads.mask_roi_pool, reference.roi_heads.mask_head, reference.roi_heads.mask_predictor)

    def run_torch(with_masks=True):
        heads = reference.roi_heads
        heads.mask_roi_pool, heads.mask_head, heads.mask_predictor = mask_parts if with_masks else (None,) * 3
        with torch.no_grad():
            return reference(inputs)[0]

    ours = {k: v.numpy()[0] for k, v in detect(batch).items()}
    agree, pairs, box_error, mask_iou = compare(ours, run_torch())
    emit("mask_rcnn_twin/detections_agree", bool(agree and pairs == int(ours["num_detections"])), "bool",
         kdet=int(ours["num_detections"]), matched=pairs, max_box_error_px=round(box_error, 4),
         min_mask_iou=round(mask_iou, 4))

    functions = {"kdet_keras": lambda: detect(batch), "torchvision": run_torch,
                 "kdet_keras_no_mask_branch": lambda: detect_boxes(batch),
                 "torchvision_no_mask_branch": lambda: run_torch(with_masks=False)}
    if not args.skip_export:
        from kdet.export import export_saved_model, export_tflite, load_runner
        workdir = tempfile.mkdtemp(prefix="kdet-mrcnn-bench-")
        for fmt, export in (("saved_model", lambda: export_saved_model(model, os.path.join(workdir, "sm"))),
                            ("tflite", lambda: export_tflite(model, os.path.join(workdir, "m.tflite")))):
            start = time.perf_counter()
            path = export()
            emit(f"mask_rcnn_twin/export_{fmt}_time", round(time.perf_counter() - start, 1), "s")
            runner = load_runner(path)
            outputs = runner(pixels)
            agree, pairs, box_error, mask_iou = compare({k: v[0] for k, v in outputs.items()}, run_torch())
            emit(f"mask_rcnn_twin/{fmt}_agrees_with_torchvision", bool(agree), "bool", matched=pairs,
                 max_box_error_px=round(box_error, 4), min_mask_iou=round(mask_iou, 4))
            functions[f"kdet_{fmt}"] = (lambda r: lambda: r(pixels))(runner)
            if fmt == "tflite":
                emit("mask_rcnn_twin/tflite_bytes", os.path.getsize(path), "bytes", note="builtins only")
    start = time.perf_counter()
    latencies = round_robin_latency(functions, warmup=args.warmup, runs=args.runs)
    emit("mask_rcnn_twin/timing_wall", round(time.perf_counter() - start, 1), "s", rounds=args.runs)
    for name, r in latencies.items():
        emit(f"mask_rcnn_twin/latency_640x480/{name}", round(r["median_ms"], 1), "ms", min_ms=round(r["min_ms"], 1),
             max_ms=round(r["max_ms"], 1), threads=args.threads, runs=args.runs)
    median = {name: r["median_ms"] for name, r in latencies.items()}
    for name in median:
        if name.startswith("kdet"):
            emit(f"mask_rcnn_twin/latency_ratio/{name}_vs_torchvision", round(median[name] / median["torchvision"], 3),
                 "ratio", goal="<= 0.7" if name == "kdet_keras" else None)
    for who in ("kdet_keras", "torchvision"):
        emit(f"mask_rcnn_twin/mask_branch_share/{who}", round(1 - median[f"{who}_no_mask_branch"] / median[who], 3),
             "fraction", note="1 - median without the mask branch / median with it")
    emit("versions", 0, "-", torch=torch.__version__, torchvision=torchvision.__version__, tensorflow=tf.__version__)


if __name__ == "__main__":
    main()
