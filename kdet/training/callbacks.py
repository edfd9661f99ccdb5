"""The callbacks of the training recipe and its optimizer: atomic per-epoch checkpoints with resume, the history
log with each epoch's step count, evaluation during fit, and a CPU- or wall-time budget."""
import json
import os
import time
from pathlib import Path

import keras

from kdet.build import CHECKPOINT, MODEL_FILE  # noqa: F401  (the file names a run writes, defined once)

STATE = "state.json"             # {"epoch": epochs completed}


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


class AtomicCheckpoint(keras.callbacks.Callback):
    """After every epoch: write weights + optimizer to a temp file, then rename it over `last.weights.h5`, the same
    for the whole model as `model.keras` (what `kdet predict` and `keras.saving.load_model` read, class names
    included), then record the epoch. A kill at any moment leaves the previous complete checkpoint, so `--resume`
    always has one to load."""

    def __init__(self, directory):
        super().__init__()
        self.directory = Path(directory)

    def on_epoch_end(self, epoch, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f"tmp-{os.getpid()}.weights.h5"
        self.model.save_weights(tmp)
        os.replace(tmp, self.directory / CHECKPOINT)
        save_model_atomically(self.model, self.directory / MODEL_FILE)
        _atomic_write_text(self.directory / STATE, json.dumps({"epoch": epoch + 1}))


def completed_epochs(directory):
    """Epochs a previous run finished in `directory` (0 when there is no checkpoint)."""
    state = Path(directory) / STATE
    if not state.is_file() or not (Path(directory) / CHECKPOINT).is_file():
        return 0
    return int(json.loads(state.read_text())["epoch"])


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
