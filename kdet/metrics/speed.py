"""Wall-clock latency of a callable: warm-up runs, then timed runs, summarised by robust statistics.

The median (not the mean) is the headline figure because these machines are shared and noisy: one descheduled
run moves the mean, not the median. `fn` must return only when its work is done; TensorFlow eager and
`model.predict_on_batch` do on CPU, but for an asynchronous runtime convert the output (e.g. `.numpy()`) inside
`fn`.
"""
from __future__ import annotations

import time

import numpy as np

from kdet.errors import ConfigError


def measure_latency(fn, *args, warmup=5, runs=50, batch_size=None, **kwargs):
    """Time `fn(*args, **kwargs)`.

    warmup: calls made first and not timed (tracing, graph building, caches).
    runs: timed calls.
    batch_size: images per call; fps = batch_size * 1000 / median_ms (1 image per call if None).
    Returns {"median_ms", "p90_ms", "mean_ms", "min_ms", "max_ms", "fps", "runs", "batch_size"}.
    """
    return round_robin_latency({"fn": lambda: fn(*args, **kwargs)}, warmup=warmup, runs=runs,
                               batch_size=batch_size)["fn"]


def round_robin_latency(functions, warmup=5, runs=50, batch_size=None):
    """Time several zero-argument callables in turns: every round calls each once, so a change of load on a shared
    machine hits all of them alike and their ratios stay meaningful.

    functions: {name: callable that returns when its work is done}.
    Returns {name: the `measure_latency` dict}.
    """
    if runs < 1 or warmup < 0:
        raise ConfigError(f"latency needs runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times_ms = {name: np.empty(runs) for name in functions}
    for i in range(runs):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times_ms[name][i] = (time.perf_counter() - start) * 1000.0
    images = 1 if batch_size is None else batch_size
    results = {}
    for name, times in times_ms.items():
        median = float(np.median(times))
        results[name] = {
            "median_ms": median,
            "p90_ms": float(np.percentile(times, 90)),
            "mean_ms": float(times.mean()),
            "min_ms": float(times.min()),
            "max_ms": float(times.max()),
            "fps": images * 1000.0 / median if median > 0 else float("inf"),
            "runs": runs,
            "batch_size": images,
        }
    return results


def format_latency(result, name=None):
    """One line for logs: 'name: median 12.30 ms, p90 13.10 ms, mean 12.50 ms, 81.3 fps (batch 1, 50 runs)'."""
    prefix = f"{name}: " if name else ""
    return (f"{prefix}median {result['median_ms']:.2f} ms, p90 {result['p90_ms']:.2f} ms, "
            f"mean {result['mean_ms']:.2f} ms, {result['fps']:.1f} fps "
            f"(batch {result.get('batch_size', 1)}, {result.get('runs', '?')} runs)")


def latency_records(result, name):
    """The benchmark JSON-line records of one measurement: [{"name", "value", "unit"}, ...]."""
    return [
        {"name": f"{name}/median_latency", "value": result["median_ms"], "unit": "ms"},
        {"name": f"{name}/p90_latency", "value": result["p90_ms"], "unit": "ms"},
        {"name": f"{name}/throughput", "value": result["fps"], "unit": "images/s"},
    ]
