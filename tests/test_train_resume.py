"""`kdet train` checkpoints atomically every epoch and `--resume` continues after a kill."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--set", "data.options.num_images=96", "--set", "model.image_size=[48, 48]",
         "--set", "data.options.image_size=[48, 48]", "--set", "model.args.widths=[8, 16, 16, 16]",
         "--set", "model.args.hidden=16", "--set", "train.batch_size=16", "--set", "train.eval_every=0",
         "--set", "data.max_eval_images=32"]


def _kdet(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "kdet.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, **kwargs)


@pytest.mark.slow
def test_kill_then_resume_continues_from_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--config", "configs/classloc_shapes.yaml", *SMALL, "--set", f"train.output_dir={out}"]
    process = subprocess.Popen([sys.executable, "-m", "kdet.cli", *args, "--set", "train.epochs=200"], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (out / "state.json").exists():
            time.sleep(0.2)
        assert (out / "state.json").exists(), "no checkpoint written"
        time.sleep(1.0)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = json.loads((out / "state.json").read_text())["epoch"]
    assert 1 <= done < 200
    # the checkpoint on disk is complete (loadable), whatever moment the kill came
    result = _kdet(*args, "--set", f"train.epochs={done + 1}", "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Epoch {done + 1}/{done + 1}" in result.stdout
    assert f"Epoch {done}/" not in result.stdout  # finished epochs are not run again
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history][-1] == done + 1
    assert json.loads((out / "state.json").read_text())["epoch"] == done + 1

    evaluated = _kdet("evaluate", "--config", "configs/classloc_shapes.yaml", *SMALL, "--set",
                      f"train.output_dir={out}", "--json", str(tmp_path / "eval.json"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    figures = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= figures["AP"] <= 1.0 and figures["num_images"] == 32

    # predict on a file of another size: boxes come back in that image's own pixels, with a PNG and a JSON
    from kdet.data.shapes import make_shapes
    from kdet.inference.visualize import save_png
    image = make_shapes(1, image_size=(80, 120), max_objects=1, seed=5).records[0].image
    save_png(image, tmp_path / "wide.png")
    predicted = _kdet("predict", "--config", "configs/classloc_shapes.yaml", *SMALL, "--set",
                      f"train.output_dir={out}", str(tmp_path / "wide.png"), "--out", str(tmp_path / "pred"),
                      "--score-threshold", "0")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    result = json.loads((tmp_path / "pred" / "wide.json").read_text())
    assert len(result["boxes"]) == 1 and result["names"][0] in ("circle", "square", "triangle")
    y1, x1, y2, x2 = result["boxes"][0]
    assert -1 <= y1 < y2 <= 81 and -1 <= x1 < x2 <= 121
    assert (tmp_path / "pred" / "wide.png").stat().st_size > 1000


def test_resume_weights_equal_the_checkpoint(tmp_path):
    import numpy as np

    import kdet
    from kdet.api import build_model, restore
    from kdet.config import load_config
    config = load_config(os.path.join(REPO, "configs/classloc_shapes.yaml"),
                         [s for s in SMALL if s != "--set"] + [f"train.output_dir={tmp_path}", "train.epochs=1"])
    result = kdet.train(config, verbose=0)
    trained = result["model"]
    fresh = build_model(config)
    restore(fresh, config)
    for a, b in zip(trained.weights, fresh.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_bfloat16"])
def test_mixed_precision_and_evaluation_during_fit(tmp_path, policy):
    import math

    import keras

    import kdet
    from kdet.config import load_config
    config = load_config(os.path.join(REPO, "configs/classloc_shapes.yaml"),
                         [s for s in SMALL if s != "--set"] + [f"train.output_dir={tmp_path}", "train.epochs=1",
                                                              f"train.mixed_precision={policy}",
                                                              "train.steps_per_epoch=3", "train.eval_every=1"])
    result = kdet.train(config, verbose=0)
    assert result["model"].dtype_policy.name == policy
    assert result["model"].backbone.weights[0].dtype == "float32"  # variables stay float32
    assert math.isfinite(result["history"][-1]["loss"])
    assert keras.mixed_precision.global_policy().name == "float32"
    # COCO evaluation ran inside fit and reached the history (and so TensorBoard, which runs after it)
    assert 0.0 <= result["history"][-1]["val_AP"] <= 1.0 and "val_AP50" in result["history"][-1]
