"""Issue 17 items 1-4 (training): every bad run is refused with one line and exit status 2, and nothing a run wrote
is lost: output_dir a file or not writable, a run already there, a corrupt state.json, a truncated checkpoint,
another architecture on --resume, a non-finite loss, a kill between a checkpoint's write and its rename."""
import json
import os
import re
import shutil
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

import kdet
from kdet.cli import main
from kdet.config import load_config
from kdet.training.callbacks import TrainingStopped

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "classloc_shapes.yaml")
SMALL = ["data.options.num_images=16", "model.image_size=[32, 32]", "data.options.image_size=[32, 32]",
         "model.args.widths=[8, 8]", "model.args.hidden=8", "train.batch_size=8", "train.eval_every=0",
         "data.max_eval_images=8", "train.epochs=1"]


def kdet_train(out, *extra, flags=()):
    """`kdet train` in this process on the tiny shapes config into `out`; returns the exit status."""
    sets = sum((["--set", item] for item in [*SMALL, f"train.output_dir={out}", *extra]), [])
    return main(["train", "--config", CONFIG, *sets, *flags])


def error_line(capsys):
    """The one `kdet: error:` line of stderr (and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("kdet: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0].removeprefix("kdet: error: ")


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def history(directory):
    return [json.loads(line) for line in (directory / "history.jsonl").read_text().splitlines()]


def checkpoint_arrays(path):
    with h5py.File(path, "r") as handle:
        arrays = []
        handle.visititems(lambda name, item: arrays.append(item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch run (read-only: tests copy it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert kdet_train(out) == 0
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def test_image_size_zero_is_one_line_naming_the_key(tmp_path, capsys):
    assert kdet_train(tmp_path / "run", "model.image_size=[0, 0]") == 2
    assert error_line(capsys) == ("model.image_size[0]: expected an integer >= 1, got 0 "
                                  "(from --set model.image_size=[0, 0])")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where, message", [
    ("file", "train.output_dir = {out} is a file, not a directory; choose another train.output_dir"),
    ("under", "train.output_dir = {out} is under {file}, which is a file, not a directory; choose another "
              "train.output_dir")], ids=["file", "under-a-file"])
def test_output_dir_that_is_a_file_or_under_one(tmp_path, capsys, where, message):
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    out = file if where == "file" else file / "run"
    assert kdet_train(out) == 2
    assert error_line(capsys) == message.format(out=out, file=file)
    assert file.read_text() == "keep me"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into a read-only directory; the cases above cover a path no one can write")
def test_output_dir_that_is_not_writable(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert kdet_train(locked / "run") == 2
        assert error_line(capsys).startswith(f"train.output_dir = {locked / 'run'}: cannot write there (")
    finally:
        locked.chmod(0o700)


def test_train_over_a_run_refuses_unless_resume_or_overwrite(run_copy, capsys):
    before = snapshot(run_copy)
    assert kdet_train(run_copy) == 2
    assert error_line(capsys) == (
        f"train.output_dir = {run_copy} already holds a finished run (1 of 1 epochs, model {run_copy / 'model.keras'}"
        f"); kdet train does not overwrite it: pass --resume to continue it (raise train.epochs to train longer), "
        f"--overwrite to replace it, or choose another train.output_dir")
    assert kdet_train(run_copy, flags=["--resume", "--overwrite"]) == 2
    assert error_line(capsys) == ("--resume continues the run in train.output_dir, --overwrite replaces it: give "
                                  "one")
    assert snapshot(run_copy) == before  # nothing written
    assert kdet_train(run_copy, "train.epochs=2", flags=["--overwrite"]) == 0
    assert [row["epoch"] for row in history(run_copy)] == [1, 2]  # a new run: the old history is gone
    assert snapshot(run_copy)["last.weights.h5"] != before["last.weights.h5"]


@pytest.mark.parametrize("text, detail", [("{\"epo", "Unterminated string starting at: line 1 column 2 (char 1)"),
                                          ("{\"epoch\": \"one\"}", "'epoch' is 'one', not a count of epochs"),
                                          ("[]", "list indices must be integers or slices, not str")],
                         ids=["not-json", "not-a-count", "not-an-object"])
def test_corrupt_state_json_is_refused_naming_it(run_copy, capsys, text, detail):
    (run_copy / "state.json").write_text(text)
    before = snapshot(run_copy)
    assert kdet_train(run_copy, "train.epochs=2", flags=["--resume"]) == 2
    assert error_line(capsys) == (f"{run_copy / 'state.json'}: corrupt run state ({detail}); kdet writes "
                                  f"{{\"epoch\": <epochs completed>}} there: fix it by hand to resume, or start again "
                                  f"with --overwrite")
    assert kdet_train(run_copy) == 2
    assert "already holds a run whose state.json is corrupt; kdet train does not overwrite it" in error_line(capsys)
    assert snapshot(run_copy) == before


def test_truncated_checkpoint_is_refused_by_resume_and_evaluate(run_copy, capsys):
    for name in ("last.weights.h5", "model.keras"):
        data = (run_copy / name).read_bytes()
        (run_copy / name).write_bytes(data[:len(data) // 2])
    before = snapshot(run_copy)
    message = ("{path}: the checkpoint is truncated or corrupt (not a readable {kind} file); train again "
               "(kdet train --overwrite) or pass another --checkpoint")
    assert kdet_train(run_copy, "train.epochs=2", flags=["--resume"]) == 2
    assert error_line(capsys) == message.format(path=run_copy / "last.weights.h5", kind="HDF5")
    sets = sum((["--set", s] for s in [*SMALL, f"train.output_dir={run_copy}"]), [])
    assert main(["evaluate", "--config", CONFIG, *sets]) == 2
    assert error_line(capsys) == message.format(path=run_copy / "model.keras", kind=".keras zip")
    from PIL import Image
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(run_copy.parent / "x.png")
    assert main(["predict", str(run_copy.parent / "x.png"), "--checkpoint", str(run_copy / "model.keras"),
                 "--out", str(run_copy.parent / "predictions")]) == 2
    assert error_line(capsys) == message.format(path=run_copy / "model.keras", kind=".keras zip")
    assert snapshot(run_copy) == before


def test_another_architecture_on_resume_is_refused(run_copy, capsys):
    before = snapshot(run_copy)
    assert kdet_train(run_copy, "train.epochs=2", "model.args.hidden=16", flags=["--resume"]) == 2
    assert error_line(capsys) == (
        f"--resume: the run in {run_copy} was trained with model.args.hidden = 8, this config has 16; its checkpoint "
        f"cannot continue another architecture: restore the setting, or start again with --overwrite or another "
        f"train.output_dir")
    assert kdet_train(run_copy, "train.epochs=2", "model.name=yolov1", flags=["--resume"]) == 2
    assert "was trained with model.name = \"classloc\", this config has \"yolov1\"" in error_line(capsys)
    assert snapshot(run_copy) == before
    (run_copy / "config.json").unlink()  # a run without its config: the checkpoint itself does not fit
    assert kdet_train(run_copy, "train.epochs=2", "model.args.hidden=16", flags=["--resume"]) == 2
    assert error_line(capsys).startswith(f"{run_copy / 'last.weights.h5'}: the checkpoint does not fit the "
                                         f"ClassLocModel of this config (was it trained with other model settings?): ")
    assert snapshot(run_copy)["last.weights.h5"] == before["last.weights.h5"]


class Poison(keras.callbacks.Callback):
    """Makes every weight NaN in epoch `epoch` (0-based): before its first step ("begin": that step's loss is NaN),
    or after its last step ("end": every loss of the epoch was finite, its last update was not)."""

    def __init__(self, out, epoch, when):
        super().__init__()
        self.out, self.epoch, self.when, self.kept, self.current = out, epoch, when, None, -1

    def _poison(self):
        self.kept = (self.out / "last.weights.h5").read_bytes()
        for weight in self.model.trainable_weights:
            weight.assign(np.full(weight.shape, np.nan, weight.dtype))

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.when == "begin" and self.current == self.epoch and batch == 0:
            self._poison()

    def on_train_batch_end(self, batch, logs=None):
        if self.when == "end" and self.current == self.epoch and batch == 1:  # 16 images / 8 = 2 steps an epoch
            self._poison()


@pytest.mark.parametrize("when, what", [("begin", "the training loss is nan at epoch 2, step 1"),
                                        ("end", "the weights are not finite after epoch 2, step 2 (its loss was "
                                                "finite, its update was not)")], ids=["loss", "weights"])
def test_a_non_finite_loss_or_weight_stops_before_any_nan_checkpoint(tmp_path, when, what):
    config = load_config(CONFIG, SMALL + [f"train.output_dir={tmp_path}", "train.epochs=3"])
    poison = Poison(tmp_path, epoch=1, when=when)
    with pytest.raises(TrainingStopped) as error:
        kdet.train(config, callbacks=[poison], verbose=0)
    assert str(error.value) == (
        f"{what}: training stopped; the last good checkpoint is {tmp_path / 'last.weights.h5'} (epoch 1), unchanged; "
        f"continue from it with --resume once the cause is fixed (a lower train.learning_rate?)")
    assert (tmp_path / "last.weights.h5").read_bytes() == poison.kept
    assert json.loads((tmp_path / "state.json").read_text()) == {"epoch": 1}
    assert [row["epoch"] for row in history(tmp_path)] == [1]
    assert all(np.isfinite(array).all() for array in checkpoint_arrays(tmp_path / "last.weights.h5"))


def test_a_diverging_cli_run_exits_2_naming_step_and_checkpoint(tmp_path, capsys):
    # How soon SGD at a huge rate overflows depends on the weights it starts from (seeded, but the CI's test order
    # shares one process): at 1e6 one CI run's loss stayed finite (1.4e6) for 3 epochs. Raise the rate until it
    # diverges; what is checked is the guard's behaviour when it does.
    codes = []
    for rate in ("1e6", "1e8", "1e10"):
        out = tmp_path / f"lr{rate}"
        codes.append(kdet_train(out, "train.epochs=4", "train.optimizer=sgd", f"train.learning_rate={rate}"))
        if codes[-1] == 2:
            break
    assert codes[-1] == 2, codes
    tmp_path = out
    line = error_line(capsys)
    if line.endswith("no checkpoint had been written yet"):  # diverged within epoch 1 (the other order's state)
        assert re.fullmatch(r"the (training loss is nan at|weights are not finite after) epoch 1, step \d+.*: "
                            r"training stopped; no checkpoint had been written yet", line), line
        assert not (tmp_path / "last.weights.h5").exists() and not (tmp_path / "state.json").exists()
        return
    match = re.fullmatch(r"the (training loss is nan at|weights are not finite after) epoch (\d+), step (\d+).*: "
                         r"training stopped; the last good checkpoint is (.*) \(epoch (\d+)\), unchanged; .*", line)
    assert match and int(match[2]) >= 2 and int(match[5]) == int(match[2]) - 1, line
    assert match[4] == str(tmp_path / "last.weights.h5")
    assert json.loads((tmp_path / "state.json").read_text()) == {"epoch": int(match[5])}
    assert all(np.isfinite(array).all() for array in checkpoint_arrays(tmp_path / "last.weights.h5"))


def test_kill_between_checkpoint_write_and_rename_loses_nothing(tmp_path, capsys):
    sets = sum((["--set", s] for s in [*SMALL, f"train.output_dir={tmp_path}", "train.epochs=3"]), [])
    killed = subprocess.run([sys.executable, "-m", "kdet.cli", "train", "--config", CONFIG, *sets], cwd=REPO,
                            env={**os.environ, "KDET_TEST_KILL_BEFORE_RENAME": "2"}, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    orphans = sorted(p.name for p in tmp_path.glob("tmp-*"))  # epoch 2's files, written but never renamed
    assert len(orphans) == 2 and orphans[0].endswith("-model.keras") and orphans[1].endswith(".weights.h5")
    # what had been committed is whole: epoch 1's checkpoint, model and history row (epoch 2's row, written before
    # its checkpoint, is dropped by --resume, which runs epoch 2 again)
    assert json.loads((tmp_path / "state.json").read_text()) == {"epoch": 1}
    epoch_one = history(tmp_path)[:1]
    assert [row["epoch"] for row in history(tmp_path)] == [1, 2]
    weights = checkpoint_arrays(tmp_path / "last.weights.h5")
    model = keras.saving.load_model(tmp_path / "model.keras")
    assert sum(a.size for a in weights) > sum(int(np.prod(w.shape)) for w in model.weights)  # + optimizer state
    keras_weights = [np.asarray(w) for w in model.weights]
    assert all(any(a.shape == w.shape and np.array_equal(a, w) for a in weights) for w in keras_weights)

    assert kdet_train(tmp_path, "train.epochs=3", flags=["--resume"]) == 0
    capsys.readouterr()
    assert history(tmp_path)[0] == epoch_one[0]
    assert [row["epoch"] for row in history(tmp_path)] == [1, 2, 3]
    assert json.loads((tmp_path / "state.json").read_text()) == {"epoch": 3}
    assert list(tmp_path.glob("tmp-*")) == []  # the stale temporaries were removed


def test_train_prints_and_stores_the_read_report(tmp_path, shared_data, capsys):
    source = shared_data / "bccd" / "BCCD"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / "voc" / sub).mkdir(parents=True)
    ids = ["BloodImage_00000", "BloodImage_00338"]  # 00338 holds a zero-area box
    for image_id in ids:
        shutil.copy(source / "Annotations" / f"{image_id}.xml", tmp_path / "voc" / "Annotations")
        shutil.copy(source / "JPEGImages" / f"{image_id}.jpg", tmp_path / "voc" / "JPEGImages")
    (tmp_path / "voc" / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids) + "\n")
    out = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {{name: classloc, num_classes: 2, image_size: [32, 32], args: {{widths: [8, 8], "
                      f"hidden: 8}}}}\ndata: {{format: voc, path: {tmp_path / 'voc'}, val_split: ''}}\n"
                      f"train: {{output_dir: {out}, epochs: 1, batch_size: 2}}\n")
    assert main(["train", "--config", str(config)]) == 0
    err = capsys.readouterr().err.splitlines()
    problem = next(p for p in err if "BloodImage_00338.xml" in p)
    assert "kdet: training data: 2 images; read report: 0 images skipped, 1 boxes dropped, 0 boxes clipped" in err
    assert problem.startswith("kdet:   ") and "zero or negative area" in problem
    stored = json.loads((out / "read_report.json").read_text(),
                        parse_constant=lambda name: pytest.fail(f"non-strict JSON: {name}"))
    assert list(stored) == ["training"]
    assert stored["training"]["problems"] == [problem.removeprefix("kdet:   ")]
    assert stored["training"]["dropped_boxes"] == 1 and stored["training"]["num_images"] == 2
