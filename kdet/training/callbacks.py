"""Pieces of `kdet train` around `model.fit`: optimizer, atomic per-epoch checkpoints with resume, evaluation callback."""
import json
import os
from pathlib import Path

import keras

CHECKPOINT = "last.weights.h5"   # model + optimizer state (Keras saves the optimizer's variables with the weights)
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


class AtomicCheckpoint(keras.callbacks.Callback):
    """After every epoch: write weights + optimizer to a temp file, then rename it over `last.weights.h5`, then record
    the epoch. A kill at any moment leaves the previous complete checkpoint, so `--resume` always has one to load."""

    def __init__(self, directory):
        super().__init__()
        self.directory = Path(directory)

    def on_epoch_end(self, epoch, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f"tmp-{os.getpid()}.weights.h5"
        self.model.save_weights(tmp)
        os.replace(tmp, self.directory / CHECKPOINT)
        _atomic_write_text(self.directory / STATE, json.dumps({"epoch": epoch + 1}))


def completed_epochs(directory):
    """Epochs a previous run finished in `directory` (0 when there is no checkpoint)."""
    state = Path(directory) / STATE
    if not state.is_file() or not (Path(directory) / CHECKPOINT).is_file():
        return 0
    return int(json.loads(state.read_text())["epoch"])


class HistoryLog(keras.callbacks.Callback):
    """Appends each epoch's logs as one JSON line to `history.jsonl`, so a resumed run keeps the whole history."""

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
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
