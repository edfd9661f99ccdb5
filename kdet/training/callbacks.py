"""The callbacks of the training recipe and its optimizer: atomic per-epoch checkpoints with resume, the history
log with each epoch's step count, the non-finite loss guard, evaluation during fit, and a CPU- or wall-time
budget."""
import json
import math
import os
import signal
import time
from pathlib import Path

import keras

from kdet.build import CHECKPOINT, MODEL_FILE  # noqa: F401  (the file names a run writes, defined once)
from kdet.errors import ConfigError, KdetError

STATE = "state.json"             # {"epoch": epochs completed}
TEMPORARY_PATTERNS = ("tmp-*.weights.h5", f"tmp-*-{MODEL_FILE}", f"{STATE}.tmp")
# Tests only: SIGKILL the process at epoch N's checkpoint after its temporary files are written, before the renames.
KILL_BEFORE_RENAME = "KDET_TEST_KILL_BEFORE_RENAME"


class TrainingStopped(KdetError):
    """Training stopped on a condition the user must look at (a non-finite loss); the message says what and where."""


def make_optimizer(train_config):
    name, lr = train_config.optimizer, train_config.learning_rate
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, weight_decay=train_config.weight_decay or None)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=train_config.weight_decay or 0.004)
    return keras.optimizers.Adam(lr, weight_decay=train_config.weight_decay or None)


def _atomic_write_text(path, text):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_model_atomically(model, path):
    """model.save to a temporary file in the same directory, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"tmp-{os.getpid()}-{path.name}")
    model.save(tmp)
    os.replace(tmp, path)
    return str(path)


def remove_stale_temporaries(directory):
    """Delete the temporary files a killed checkpoint write left in `directory`; returns their names."""
    stale = sorted({path for pattern in TEMPORARY_PATTERNS for path in Path(directory).glob(pattern)})
    for path in stale:
        path.unlink(missing_ok=True)
    return [path.name for path in stale]


class AtomicCheckpoint(keras.callbacks.Callback):
    """After every epoch: write weights + optimizer and the whole model (`model.keras`, what `kdet predict` and
    `keras.saving.load_model` read, class names included) to temporary files, rename them over `model.keras` and
    `last.weights.h5`, then record the epoch in `state.json` (written the same way). A kill before the renames
    leaves the previous complete checkpoint and its state; a kill between the renames and the state leaves the newer
    weights, which `--resume` continues from (that epoch then runs once more). Temporaries a killed run left are
    removed when training begins."""

    def __init__(self, directory):
        super().__init__()
        self.directory = Path(directory)

    def on_train_begin(self, logs=None):
        remove_stale_temporaries(self.directory)

    def on_epoch_end(self, epoch, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        weights = self.directory / f"tmp-{os.getpid()}.weights.h5"
        whole = self.directory / f"tmp-{os.getpid()}-{MODEL_FILE}"
        self.model.save_weights(weights)
        self.model.save(whole)
        if os.environ.get(KILL_BEFORE_RENAME) == str(epoch + 1):
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(whole, self.directory / MODEL_FILE)
        os.replace(weights, self.directory / CHECKPOINT)
        write_state(self.directory, epoch + 1)


def write_state(directory, epochs):
    """Record in `directory`'s state.json (atomically) that `epochs` epochs are complete."""
    _atomic_write_text(Path(directory) / STATE, json.dumps({"epoch": int(epochs)}))


def completed_epochs(directory):
    """Epochs a previous run finished in `directory` (0 when there is no checkpoint); a ConfigError naming the file
    when its state.json is not what kdet writes."""
    state = Path(directory) / STATE
    if not state.is_file() or not (Path(directory) / CHECKPOINT).is_file():
        return 0
    try:
        epoch = json.loads(state.read_text())["epoch"]
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"'epoch' is {epoch!r}, not a count of epochs")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        detail = "no 'epoch' key" if isinstance(error, KeyError) else str(error).splitlines()[0]
        raise ConfigError(f"{state}: corrupt run state ({detail}); kdet writes {{\"epoch\": <epochs completed>}} "
                          f"there: fix it by hand to resume, or start again with --overwrite") from None
    return epoch


def trim_history(path, epochs):
    """Keep the rows of epochs 1..`epochs` in a history.jsonl (a resumed run redoes the later ones)."""
    path = Path(path)
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("epoch", 0) <= epochs]
    if len(kept) != len(rows):
        _atomic_write_text(path, "".join(f"{line}\n" for line in kept))


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops `fit` at the first training step whose loss is NaN or infinite, or at the end of an epoch whose last
    update made a weight non-finite (its loss was still finite), raising `TrainingStopped` with the epoch, the step
    and the last good checkpoint. Raising (instead of `stop_training`) skips the epoch-end callbacks after it (put
    it first), so no NaN weights are written: the last good checkpoint stays as it was."""

    def __init__(self, directory):
        super().__init__()
        self.directory = Path(directory)
        self.epoch = self.step = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.step = batch + 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._stop(f"the training loss is {float(loss)} at epoch {self.epoch + 1}, step {self.step}")

    def on_epoch_end(self, epoch, logs=None):
        if not all(bool(keras.ops.all(keras.ops.isfinite(w))) for w in self.model.weights
                   if keras.backend.is_float_dtype(w.dtype)):
            self._stop(f"the weights are not finite after epoch {epoch + 1}, step {self.step} (its loss was finite, "
                       f"its update was not)")

    def _stop(self, what):
        done = completed_epochs(self.directory)
        last = (f"the last good checkpoint is {self.directory / CHECKPOINT} (epoch {done}), unchanged; continue "
                f"from it with --resume once the cause is fixed (a lower train.learning_rate?)") if done else \
            "no checkpoint had been written yet"
        raise TrainingStopped(f"{what}: training stopped; {last}")


class HistoryLog(keras.callbacks.Callback):
    """Appends each epoch's logs as one JSON line to `history.jsonl`, so a resumed run keeps the whole history,
    with the number of training steps the epoch really ran ("steps"), its wall time ("seconds") and the part of it
    spent in training steps ("train_seconds", without validation and evaluation)."""

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)
        self.steps = 0
        self.started = self.trained = None

    def on_epoch_begin(self, epoch, logs=None):
        self.steps, self.started = 0, time.perf_counter()
        self.trained = self.started

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.trained = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        now = time.perf_counter()
        started = self.started or now
        row = {"epoch": epoch + 1, "steps": self.steps, "seconds": round(now - started, 3),
               "train_seconds": round((self.trained or now) - started, 3),
               **{k: float(v) for k, v in (logs or {}).items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class EvaluationCallback(keras.callbacks.Callback):
    """Runs COCO or VOC evaluation on the validation split every `every` epochs during `fit` and puts the figures into
    the epoch logs (so they reach the History, `history.jsonl` and TensorBoard, which run after this callback).

    Args:
        evaluate_fn: model -> dict of floats (e.g. {"AP": .., "AP50": ..}); logged as "val_<name>".
        every: evaluate after epochs every, 2*every, ... (and never when 0).
    """

    def __init__(self, evaluate_fn, every=1):
        super().__init__()
        self.evaluate_fn = evaluate_fn
        self.every = int(every)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self.every <= 0 or (epoch + 1) % self.every:
            return
        for name, value in self.evaluate_fn(self.model).items():
            if isinstance(value, (int, float)):
                logs[f"val_{name}"] = float(value)


def cpu_seconds():
    """CPU time of this process, user + system, all threads."""
    times = os.times()
    return times.user + times.system


class TimeBudget(keras.callbacks.Callback):
    """Stops `fit` at the end of the first batch after `seconds` of training time: process CPU time (clock "cpu",
    the default: on a shared machine 600 CPU-s is 5 minutes of both cores whatever else runs) or wall time
    ("wall"), counted from the end of the first step (which traces and compiles the train function: a fixed cost,
    not training). Validation, evaluation and checkpoint writing between epochs do not count: the budget buys
    training steps, whatever else a run does. Put it first among the callbacks (its epoch-end pause then starts
    before the others' work). `step_times` holds each later step's wall duration in seconds; `exhausted` says
    whether the budget ended fit. One instance can be shared by several fits (a schedule's steps).
    """

    def __init__(self, seconds, clock="cpu"):
        super().__init__()
        if clock not in ("cpu", "wall"):
            raise ValueError(f"budget clock must be 'cpu' or 'wall', got {clock!r}")
        self.seconds, self.clock = float(seconds), clock
        self.start = None
        self.paused = 0.0
        self._paused_at = None
        self.exhausted = False
        self.step_times = []
        self._last = None

    def _now(self):
        return cpu_seconds() if self.clock == "cpu" else time.perf_counter()

    def used(self):
        """Training time counted so far (seconds)."""
        if self.start is None:
            return 0.0
        pause = self._now() - self._paused_at if self._paused_at is not None else 0.0
        return self._now() - self.start - self.paused - pause

    def _pause(self):
        if self._paused_at is None:
            self._paused_at = self._now()

    def _resume(self):
        if self._paused_at is not None:
            self.paused += self._now() - self._paused_at
            self._paused_at = None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._last is not None:
            self.step_times.append(now - self._last)
        self._last = now
        if self.start is None:
            self.start = self._now()
        elif self.used() >= self.seconds:
            self.exhausted = True
            self.model.stop_training = True

    def on_train_begin(self, logs=None):
        if self.exhausted:  # a later fit of the same schedule: the budget is already spent
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self._resume()
        self._last = None  # the pause between epochs is not a training step

    def on_test_begin(self, logs=None):
        self._pause()

    def on_test_end(self, logs=None):
        self._resume()

    def on_epoch_end(self, epoch, logs=None):
        self._pause()  # evaluation, checkpoints and logs until the next epoch

    def on_train_end(self, logs=None):
        self._pause()  # until the next fit of a schedule starts its first epoch
