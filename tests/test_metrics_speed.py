import itertools
import json
import time

import pytest

from kdet.errors import ConfigError
from kdet.metrics.speed import format_latency, latency_records, measure_latency, round_robin_latency


def test_sleep_median_and_call_count():
    calls = []

    def sleeper(seconds, tag=None):
        calls.append(tag)
        time.sleep(seconds)

    result = measure_latency(sleeper, 0.01, warmup=2, runs=12, batch_size=4, tag="x")
    assert len(calls) == 14 and set(calls) == {"x"}
    # sleep never returns early; on a busy 2-core machine it may overshoot by a few ms.
    assert 10.0 <= result["median_ms"] < 16.0
    assert result["min_ms"] <= result["median_ms"] <= result["p90_ms"] <= result["max_ms"]
    assert result["fps"] == pytest.approx(4 * 1000.0 / result["median_ms"])


def test_median_ignores_outliers_that_move_the_mean():
    durations = itertools.cycle([0.005, 0.005, 0.005, 0.040])

    def uneven():
        time.sleep(next(durations))

    result = measure_latency(uneven, warmup=0, runs=20)
    assert 5.0 <= result["median_ms"] < 10.0          # 15 of 20 runs take 5 ms
    assert result["p90_ms"] >= 40.0                    # the slow quarter
    assert result["mean_ms"] > result["median_ms"] + 5.0
    assert result["fps"] == pytest.approx(1000.0 / result["median_ms"])


def test_format_and_records():
    result = {"median_ms": 12.3, "p90_ms": 13.1, "mean_ms": 12.5, "fps": 81.3, "runs": 50, "batch_size": 1}
    assert format_latency(result, "yolo") == \
        "yolo: median 12.30 ms, p90 13.10 ms, mean 12.50 ms, 81.3 fps (batch 1, 50 runs)"
    records = latency_records(result, "yolo")
    assert records[0] == {"name": "yolo/median_latency", "value": 12.3, "unit": "ms"}
    assert all(json.loads(json.dumps(r)) == r for r in records)
    with pytest.raises(ConfigError, match="runs"):
        measure_latency(lambda: None, runs=0)


def test_round_robin_calls_in_turns_and_times_each():
    """Each round calls every function once (A, B, A, B, ...), warm-up included, and each gets its own timings."""
    calls = []

    def sleeper(name, seconds):
        def run():
            calls.append(name)
            time.sleep(seconds)
        return run

    results = round_robin_latency({"a": sleeper("a", 0.002), "b": sleeper("b", 0.006)}, warmup=1, runs=5,
                                  batch_size=2)
    assert calls == ["a", "b"] + ["a", "b"] * 5
    assert results["a"]["runs"] == results["b"]["runs"] == 5 and results["a"]["batch_size"] == 2
    assert 2.0 <= results["a"]["median_ms"] < results["b"]["median_ms"] and results["b"]["median_ms"] >= 6.0
    assert results["a"]["fps"] == pytest.approx(2 * 1000.0 / results["a"]["median_ms"])
    with pytest.raises(ConfigError, match="warmup"):
        round_robin_latency({"a": lambda: None}, warmup=-1)
