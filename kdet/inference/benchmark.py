"""`kdet benchmark`: latency and FPS of any artifact (.keras, SavedModel, .tflite, .onnx) on the same images.

All artifacts run in one process, round-robin, on identical inputs, so their ratios are meaningful on a noisy machine.
A .keras file runs as its inference copy (kdet.models.inference_copy): BatchNorm folded unless fold_bn=False, bfloat16
compute with precision="bfloat16"; exported artifacts run as they were exported (export folds BN by default).
"""
import numpy as np

from kdet.errors import KdetError
from kdet.models.inference_copy import check_precision, inference_model
from kdet.inference.runners import load_runner
from kdet.metrics.speed import round_robin_latency


def optimized(runner, precision="float32", fold_bn=True):
    """A .keras runner switched to the model's inference copy; other runners as they are."""
    if runner.format == "keras" and (fold_bn or precision != "float32"):
        import tensorflow as tf

        model = inference_model(runner.model, precision=precision, fold_bn=fold_bn)
        height, width = model.image_size
        runner.model = model
        runner._detect = tf.function(lambda images: model.detect(tf.cast(images, tf.float32)),
                                     input_signature=[tf.TensorSpec((None, height, width, 3), tf.uint8)])
    return runner


def benchmark_artifacts(paths, runs=50, warmup=5, batch=1, seed=0, precision="float32", fold_bn=True):
    """One row per artifact: {"name", "format", "median_ms", "p90_ms", "mean_ms", "fps", "batch"} (.keras rows add
    "precision" and "fold_bn")."""
    check_precision(precision)
    runners = [optimized(load_runner(p), precision, fold_bn) for p in paths]
    sizes = {r.image_size for r in runners}
    if len(sizes) != 1:
        raise KdetError(f"artifacts take different input sizes {sorted(sizes)}: benchmark them separately")
    height, width = sizes.pop()
    images = np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    results = round_robin_latency({i: (lambda r=runner: r(images)) for i, runner in enumerate(runners)},
                                  warmup=warmup, runs=runs, batch_size=batch)
    return [{"name": runner.path, "format": runner.format, "batch": batch,
             **({"precision": precision, "fold_bn": bool(fold_bn)} if runner.format == "keras" else {}),
             **{k: round(float(results[i][k]), 4) for k in ("median_ms", "p90_ms", "mean_ms", "fps")}}
            for i, runner in enumerate(runners)]
