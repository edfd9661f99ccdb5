"""kdet.ops vs torchvision.ops latency: batched_nms and roi_align, TF and torch in one process on 2 threads each.

    /tmp/tvenv/bin/python benchmarks/bench_ops.py            # venv with torch + torchvision (see tests/reference)
    /tmp/tvenv/bin/python benchmarks/bench_ops.py --runs 10 --channels 64

Inputs are the same numbers for both libraries (yxyx/NHWC for kdet, xyxy/NCHW for torchvision). kdet runs as a
traced tf.function (how models call it); the builtins twin of roi_align (the TFLite path, run here by TF) is timed
too. Each round calls every implementation once (round-robin, so machine noise hits all alike) after warm-up; the
figure is the median. One JSON line per case: value = kdet median ms, plus torchvision ms and the ratio
kdet / torchvision (< 1: kdet faster). Results are checked equal before timing (same kept indices, RoIAlign 1e-4).
"""
import argparse
import json
import os

import numpy as np

THREADS = 2
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# torch and torchvision first: importing torchvision after TensorFlow segfaults (torch 2.14.1, TF 2.21).
import torch  # noqa: E402
import torchvision  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(THREADS)
torch.set_num_threads(THREADS)

from kdet.ops import batched_nms, builtins_only, roi_align  # noqa: E402


def emit(name, kdet_ms, torchvision_ms, **extra):
    print(json.dumps({"name": name, "value": round(kdet_ms, 3), "unit": "ms", "kdet_ms": round(kdet_ms, 3),
                      "torchvision_ms": round(torchvision_ms, 3), "ratio": round(kdet_ms / torchvision_ms, 3),
                      "threads": THREADS, **extra}), flush=True)


def time_round_robin(functions, runs, warmup):
    """functions: name -> zero-arg callable that blocks until done. -> name -> median ms, called in turns."""
    from kdet.metrics import round_robin_latency
    return {name: r["median_ms"] for name, r in round_robin_latency(functions, warmup=warmup, runs=runs).items()}


def nms_inputs(rng, count, num_classes=10, image=800.0):
    centres = rng.uniform(0, image, (count, 2))
    sizes = rng.uniform(16, 160, (count, 2))
    xyxy = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    return xyxy, rng.uniform(0, 1, count).astype(np.float32), rng.integers(0, num_classes, count)


def bench_batched_nms(rng, count, runs, warmup):
    xyxy, scores, classes = nms_inputs(rng, count)
    yxyx = tf.constant(xyxy[:, [1, 0, 3, 2]])
    scores_tf, classes_tf = tf.constant(scores), tf.constant(classes, tf.int32)
    kdet_fn = tf.function(lambda b, s, c: batched_nms(b, s, c, 0.5))
    boxes_t, scores_t, classes_t = torch.from_numpy(xyxy), torch.from_numpy(scores), torch.from_numpy(classes)
    kept = kdet_fn(yxyx, scores_tf, classes_tf).numpy()
    reference = torchvision.ops.batched_nms(boxes_t, scores_t, classes_t, 0.5).numpy()
    # Same boxes in the same score order; equal scores may swap (torchvision's per-class path sorts unstably).
    assert np.array_equal(np.sort(kept), np.sort(reference)), "kdet and torchvision keep different boxes"
    assert np.array_equal(scores[kept], scores[reference]), "kdet and torchvision order the boxes differently"
    medians = time_round_robin({
        "kdet": lambda: kdet_fn(yxyx, scores_tf, classes_tf).numpy(),
        "torchvision": lambda: torchvision.ops.batched_nms(boxes_t, scores_t, classes_t, 0.5),
    }, runs, warmup)
    emit(f"batched_nms/{count}_boxes", medians["kdet"], medians["torchvision"], kept=int(len(kept)), classes=10,
         iou_threshold=0.5)


def bench_roi_align(rng, num_rois, output, channels, runs, warmup, feature_size=64, stride=16,
                    sampling_ratio=2):
    image = feature_size * stride
    features = rng.normal(0, 1, (1, channels, feature_size, feature_size)).astype(np.float32)
    corner = rng.uniform(0, image * 0.8, (num_rois, 2))
    xyxy = np.concatenate([corner, np.minimum(corner + rng.uniform(32, 400, (num_rois, 2)), image)], 1)
    xyxy = xyxy.astype(np.float32)
    nhwc = tf.constant(np.transpose(features, [0, 2, 3, 1]))
    boxes = tf.constant(xyxy[:, [1, 0, 3, 2]])
    indices = tf.zeros([num_rois], tf.int32)

    def traced(builtins):
        @tf.function
        def run(f, b, i):
            with builtins_only(builtins):
                return roi_align(f, b, i, output, 1.0 / stride, sampling_ratio, aligned=True)
        return run

    kdet_fn, twin_fn = traced(False), traced(True)
    features_t = torch.from_numpy(features)
    rois_t = torch.from_numpy(np.concatenate([np.zeros((num_rois, 1), np.float32), xyxy], axis=1))

    def torch_fn():
        return torchvision.ops.roi_align(features_t, rois_t, output, 1.0 / stride, sampling_ratio, aligned=True)

    reference = torch_fn().numpy().transpose(0, 2, 3, 1)
    assert np.abs(kdet_fn(nhwc, boxes, indices).numpy() - reference).max() <= 1e-4
    assert np.abs(twin_fn(nhwc, boxes, indices).numpy() - reference).max() <= 1e-4
    medians = time_round_robin({
        "kdet": lambda: kdet_fn(nhwc, boxes, indices).numpy(),
        "twin": lambda: twin_fn(nhwc, boxes, indices).numpy(),
        "torchvision": torch_fn,
    }, runs, warmup)
    emit(f"roi_align/{num_rois}_rois_{output}x{output}", medians["kdet"], medians["torchvision"],
         kdet_builtins_twin_ms=round(medians["twin"], 3),
         twin_ratio=round(medians["twin"] / medians["torchvision"], 3), channels=channels,
         feature_map=[feature_size, feature_size], sampling_ratio=sampling_ratio, aligned=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--channels", type=int, default=256, help="feature channels for roi_align (FPN: 256)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for count in (1000, 10000):
        bench_batched_nms(rng, count, args.runs, args.warmup)
    for num_rois in (512, 2000):
        for output in (7, 14):
            bench_roi_align(rng, num_rois, output, args.channels, args.runs, args.warmup)


if __name__ == "__main__":
    main()
