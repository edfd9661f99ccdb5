"""The speed benchmarks' harness: the round-robin timer on fake contenders with a fake clock (order of calls,
warm-up untimed, medians and min-max, the ratio taken per round), the machine record, and README's speed block
equal to what benchmarks/make_tables.py renders from the committed JSON. No torch, no TensorFlow."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import make_tables  # noqa: E402
import speed_common  # noqa: E402


class FakeClock:
    """A clock that only moves when a fake contender 'works': contender(name, costs) advances it by its next cost."""

    def __init__(self):
        self.now, self.calls = 100.0, []

    def __call__(self):
        return self.now

    def contender(self, name, costs_ms):
        costs = iter(costs_ms)

        def run():
            self.calls.append(name)
            self.now += next(costs) / 1000.0
        return run


def test_round_robin_calls_in_turns_rotating_and_keeps_warm_up_out_of_the_timings():
    clock = FakeClock()
    # warm-up costs (1000 ms) would dominate every statistic if they were timed
    a = clock.contender("a", [1000, 1000, 10, 30, 20])
    b = clock.contender("b", [1000, 1000, 20, 30, 80])
    c = clock.contender("c", [1000, 1000, 5, 60, 10])
    result = speed_common.round_robin({"a": a, "b": b, "c": c}, rounds=3, warmup=2, reference="b", clock=clock)
    assert clock.calls == ["a", "b", "c", "a", "b", "c",  # two warm-up passes in the given order
                           "a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts one further on
    assert result["order"] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    timings = result["contenders"]
    assert timings["a"]["times_ms"] == pytest.approx([10, 30, 20])
    assert timings["b"]["times_ms"] == pytest.approx([20, 30, 80])
    assert (timings["a"]["median_ms"], timings["a"]["min_ms"], timings["a"]["max_ms"]) == pytest.approx((20, 10, 30))
    assert timings["b"]["median_ms"] == pytest.approx(30)
    assert timings["c"]["median_ms"] == pytest.approx(10)


def test_round_robin_ratio_is_taken_per_round_not_from_the_medians():
    clock = FakeClock()
    # load doubles in round 2 and halves in round 3: per round, "fast" is always 0.5x the reference
    fast = clock.contender("fast", [10, 20, 5])
    slow = clock.contender("slow", [20, 40, 10])
    result = speed_common.round_robin({"fast": fast, "slow": slow}, rounds=3, warmup=0, reference="slow",
                                      clock=clock)
    ratio = result["ratios"]["fast"]
    assert ratio["per_round"] == pytest.approx([0.5, 0.5, 0.5])
    assert (ratio["median"], ratio["min"], ratio["max"]) == pytest.approx((0.5, 0.5, 0.5))
    assert "slow" not in result["ratios"]
    clock = FakeClock()
    one = clock.contender("one", [10, 30, 30, 10])
    ref = clock.contender("ref", [20, 20, 40, 40])
    ratio = speed_common.round_robin({"one": one, "ref": ref}, rounds=4, warmup=0, reference="ref",
                                     clock=clock)["ratios"]["one"]
    assert ratio["per_round"] == pytest.approx([0.5, 1.5, 0.75, 0.25])
    assert ratio["median"] == pytest.approx(np.median([0.5, 1.5, 0.75, 0.25]))
    assert (ratio["min"], ratio["max"]) == pytest.approx((0.25, 1.5))


def test_round_robin_repeat_times_several_calls_per_sample_and_divides():
    clock = FakeClock()
    a = clock.contender("a", [50, 1, 2, 3, 5, 7])
    b = clock.contender("b", [50, 50, 4, 4, 10, 10])
    result = speed_common.round_robin({"a": a, "b": b}, rounds=2, warmup=1, repeat=2, reference="b", clock=clock)
    assert clock.calls == ["a", "a", "b", "b", "a", "a", "b", "b", "b", "b", "a", "a"]
    assert result["contenders"]["a"]["times_ms"] == pytest.approx([2.5, 6.0])  # (2 + 3) / 2, (5 + 7) / 2
    assert result["contenders"]["b"]["times_ms"] == pytest.approx([4.0, 10.0])
    assert result["ratios"]["a"]["per_round"] == pytest.approx([2.5 / 4, 0.6])


def test_round_robin_rejects_a_reference_that_is_not_timed_and_empty_rounds():
    with pytest.raises(ValueError, match="torchvision"):
        speed_common.round_robin({"kdet": lambda: None}, reference="torchvision")
    with pytest.raises(ValueError, match="rounds"):
        speed_common.round_robin({"kdet": lambda: None}, rounds=0)


def test_cpu_description_reads_model_and_the_flags_that_matter(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse2 avx2 fma avx512f amx_tile\n"
                       "\nprocessor\t: 1\nmodel name\t: Some CPU 9000\nflags\t\t: fpu\n")
    cpu = speed_common.cpu_description(str(cpuinfo))
    assert cpu["model"] == "Some CPU 9000"
    assert cpu["flags"] == ["avx2", "fma", "avx512f", "amx_tile"]


def test_readme_speed_block_is_what_make_tables_renders_from_the_committed_json():
    record = json.loads((REPO / "benchmarks" / "results" / "speed.json").read_text())
    block = make_tables.render(record)
    assert make_tables.readme_block((REPO / "README.md").read_text()) == block
    # the committed figures are a full run: every pair, >= 7 rounds, exports timed, no pair failed
    assert record["settings"]["rounds"] >= 7 and record["settings"]["export"]
    assert set(record["pairs"]) == set(make_tables_titles())
    assert not [name for name, pair in record["pairs"].items() if "error" in pair]


def make_tables_titles():
    """run_all's pair names, read from its source (importing it is fine: torch loads only in main)."""
    import run_all
    return run_all.TITLES


def test_run_all_builds_every_titled_pair_the_training_steps_included_without_importing_torch():
    # In a fresh interpreter: this test process may already hold TensorFlow from another test file.
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        import run_all
        args = run_all.parse_args(["--only", "train_faster_rcnn", "train_retinanet", "--quick"])
        assert args.only == ["train_faster_rcnn", "train_retinanet"] and args.rounds == 3
        assert str(args.output).startswith("runs/bench")  # a partial run never replaces the README's source
        table = run_all.builders(args)
        assert list(table) == list(run_all.TITLES)
        assert {"train_faster_rcnn", "train_retinanet"} <= set(table)
        assert "torch" not in sys.modules and "tensorflow" not in sys.modules  # building the table imports neither
    """)
    done = subprocess.run([sys.executable, "-c", script, str(REPO / "benchmarks")], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_make_tables_renders_ratios_and_replaces_only_the_block():
    record = {"command": "benchmarks/run_all.py", "wall_seconds": 12,
              "machine": {"cpu": {"model": "X", "usable_cpus": 2, "flags": ["avx2"]}, "threads": 2,
                          "versions": {"tensorflow": "2.21.0", "torch": "2.14.1", "keras_hub": None},
                          "date": "2026-12-04T14:00:00+00:00", "load_average_start": [9.5, 9, 9],
                          "load_average_end": [7.25, 8, 9]},
              "settings": {"rounds": 7, "warmup": 2, "export": True, "batch": 1},
              "pairs": {"p": {"title": "Pair", "input": "512x512", "reference": "torchvision",
                              "notes": {"detections_agree": False, "kdet_detections": 3},
                              "contenders": {"kdet_keras": {"median_ms": 612.4, "min_ms": 9.87, "max_ms": 1234.5},
                                             "torchvision": {"median_ms": 800.0, "min_ms": 700.0, "max_ms": 900.0}},
                              "ratios": {"kdet_keras": {"median": 0.7654, "min": 0.5, "max": 1.25}}}}}
    block = make_tables.render(record)
    rows = [line for line in block.splitlines() if line.startswith("| ")]
    assert rows[1] == "| Pair | 512x512 | torchvision | 800 (700-900) | 1 (reference) |"
    assert rows[2] == "|  |  | kdet Keras | 612 (9.87-1234) | **0.77** (0.50-1.25) |"
    assert "KerasHub is not installed" in block and "no AMX" in block and "9.5 at the start" in block
    assert "same detections as torchvision: **no**; 3 detections." in block
    text = "intro\n" + make_tables.START + "\nold\n" + make_tables.END + "\noutro\n"
    assert make_tables.replace_block(text, block) == "intro\n" + block + "\noutro\n"
    with pytest.raises(SystemExit, match="README.md"):
        make_tables.replace_block("no markers here", block)


def test_make_tables_renders_a_training_step_pair_with_its_batch_and_its_random_weights_said():
    record = {"command": "benchmarks/run_all.py", "wall_seconds": 600,
              "machine": {"cpu": {"model": "X", "usable_cpus": 2, "flags": ["avx2"]}, "threads": 2,
                          "versions": {"tensorflow": "2.21.0", "torch": "2.14.1", "keras_hub": "0.32.0"},
                          "date": "2026-12-04T14:00:00+00:00", "load_average_start": [1.5, 1, 1],
                          "load_average_end": [1.25, 1, 1]},
              "settings": {"rounds": 7, "warmup": 2, "export": True, "batch": 1, "train_batch": 2},
              "pairs": {"train_x": {"title": "training step, X", "input": "batch 2, 512x512",
                                    "reference": "torchvision",
                                    "notes": {"weights": "random initialisation on each side", "batch_boxes": 24,
                                              "kdet_trainable_parameters": 41362531,
                                              "torchvision_trainable_parameters": 41362531,
                                              "first_losses": [2.09, 2.28]},
                                    "contenders": {"kdet_keras_train_step": {"median_ms": 4321.0, "min_ms": 4000.0,
                                                                             "max_ms": 5000.0},
                                                   "torchvision": {"median_ms": 6000.0, "min_ms": 5900.0,
                                                                   "max_ms": 6500.0}},
                                    "ratios": {"kdet_keras_train_step": {"median": 0.72, "min": 0.7, "max": 0.8}}}}}
    block = make_tables.render(record)
    rows = [line for line in block.splitlines() if line.startswith("| ")]
    assert rows[1] == "| training step, X | batch 2, 512x512 | torchvision | 6000 (5900-6500) | 1 (reference) |"
    assert rows[2] == "|  |  | kdet Keras `train_on_batch` | 4321 (4000-5000) | **0.72** (0.70-0.80) |"
    flat = " ".join(block.split())
    assert "batch 1 (training steps: batch 2)" in flat
    assert "same seeded weights on both sides unless the pair says otherwise" in flat
    assert ("random initialisation on each side; 24 boxes in the batch; 41,362,531 trainable parameters; "
            "torchvision 41,362,531; first step's loss (kdet, torchvision): [2.09, 2.28]") in flat


def test_train_profile_table_states_stages_twin_ratios_and_pipeline_rate():
    timing = {"kdet_train_step": 4000.0, "torchvision_forward_loss": 2000.0, "torchvision_train_step": 6000.0}
    model = {"input": "BCCD batch 2 at 512x512", "load_average_start": [1.2, 1, 1], "load_average_end": [1.4, 1, 1],
             "contenders": {k: {"median_ms": v} for k, v in timing.items()},
             "stages_ms": {"forward_ms": 1234.5, "targets_ms": 45.67, "loss_ms": 5.678, "gradient_and_apply_ms": 2700.0,
                           "train_step_ms": 4000.0, "torchvision_gradient_and_apply_ms": 4000.0},
             "kdet_over_torchvision_per_round": {"forward_targets_loss": {"median": 0.652, "min": 0.6, "max": 0.7},
                                                 "gradient_and_apply": {"median": 0.678, "min": 0.6, "max": 0.8},
                                                 "train_step": {"median": 0.667, "min": 0.61, "max": 0.72}},
             "pipeline_images_per_s": 80.0, "step_images_per_s": 0.5, "pipeline_over_step": 160.0}
    lines = make_tables.train_profile_table({"models": {"faster_rcnn": model}})
    assert len(lines) == 3 and lines[1] == "|---|---|---|---|---|"
    assert lines[2] == ("| faster_rcnn, BCCD batch 2 at 512x512 (load 1.2 -> 1.4) | 1234 / 45.7 / 5.68 / 2700 / 4000 | "
                        "2000 / 4000 / 6000 | 0.65 (0.60-0.70); 0.68 (0.60-0.80); 0.67 (0.61-0.72) | "
                        "160.0x (80.0 / 0.50) |")
