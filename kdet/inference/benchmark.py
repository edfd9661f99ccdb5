"""`kdet benchmark`: latency and FPS of any artifact (.keras, SavedModel, .tflite, .onnx) on the same images.

All artifacts run in one process, round-robin, on identical inputs, so their ratios are meaningful on a noisy machine.
"""
import numpy as np

from kdet.errors import KdetError
from kdet.inference.runners import load_runner
from kdet.metrics.speed import round_robin_latency


def benchmark_artifacts(paths, runs=50, warmup=5, batch=1, seed=0):
    """One row per artifact: {"name", "format", "median_ms", "p90_ms", "mean_ms", "fps", "batch"}."""
    runners = [load_runner(p) for p in paths]
    sizes = {r.image_size for r in runners}
    if len(sizes) != 1:
        raise KdetError(f"artifacts take different input sizes {sorted(sizes)}: benchmark them separately")
    height, width = sizes.pop()
    images = np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    results = round_robin_latency({i: (lambda r=runner: r(images)) for i, runner in enumerate(runners)},
                                  warmup=warmup, runs=runs, batch_size=batch)
    return [{"name": runner.path, "format": runner.format, "batch": batch,
             **{k: round(float(results[i][k]), 4) for k in ("median_ms", "p90_ms", "mean_ms", "fps")}}
            for i, runner in enumerate(runners)]
