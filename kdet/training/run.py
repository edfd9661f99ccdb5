"""A training run from a config: seeds, precision policy, distribution strategy, resume, then the schedule.

    result = train(config, resume=False, callbacks=[...])     what `kdet train` and `kdet.train` call

Schedules (`train.schedule`): "joint" (one `recipe.fit`, every model), and for Faster R-CNN "alternating" (the
paper's 4 steps) and "fast_rcnn" (the second stage on the proposals of `train.proposals`), in
kdet.training.schedules. Every schedule runs under the same precision policy and strategy, honours `--resume`,
the time budget and the user's callbacks, because each of its fits is `recipe.fit`.
"""
import json
import random
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kdet.build import build_model, load_split, restore
from kdet.errors import ConfigError
from kdet.training import callbacks as cb
from kdet.training import recipe, schedules

SCHEDULES = ("joint", "alternating", "fast_rcnn")


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def make_strategy(name):
    if name == "none":
        return tf.distribute.get_strategy()
    from kdet.training.distribute import make_strategy as make
    return make(name)


class Session:
    """What every model of a run is built under: the strategy's scope and the class names of the training data.

    build() -> a model built (and compiled) in the strategy's scope, its class names from the training split.
    """

    def __init__(self, config, strategy, class_names):
        self.config, self.strategy, self.class_names = config, strategy, class_names

    def build(self, compile=True):
        with self.strategy.scope():
            model = build_model(self.config, class_names=self.class_names)
            if compile:
                model.compile(optimizer=cb.make_optimizer(self.config.train))
        return model


def _evaluate_fn(config, val_data):
    from kdet.eval import evaluate_model_on
    return lambda model: {k: v for k, v in evaluate_model_on(model, val_data, config, config.train.eval_metric,
                                                             progress=False).items() if not isinstance(v, dict)}


def _fresh_start(out):
    for name in (cb.STATE, "history.jsonl"):
        (out / name).unlink(missing_ok=True)


def train(config, resume=False, callbacks=(), verbose="auto"):
    """Train the config's model with its schedule; checkpoints every epoch into `train.output_dir`.

    Returns {"history": [per-epoch logs of history.jsonl], "checkpoint": last.weights.h5, "model_file": model.keras,
    "epochs": completed epochs, "model": the trained model, "report": the training split's read report}.
    """
    t = config.train
    schedule = t.schedule
    if schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule = {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    out = Path(t.output_dir)
    seed_everything(t.seed)
    keras.mixed_precision.set_global_policy(t.mixed_precision)
    try:
        train_data = load_split(config, "train")
        val_data = load_split(config, "val") if config.data.val_split else None
        print(f"kdet: training data: {len(train_data)} images; {train_data.report.summary()}", file=sys.stderr)
        session = Session(config, make_strategy(t.strategy), train_data.class_names)
        budget = cb.TimeBudget(t.budget_seconds, t.budget_clock) \
            if t.budget_seconds else None
        common = dict(callbacks=callbacks, budget=budget, verbose=verbose)
        if schedule == "alternating":
            model = schedules.train_alternating(session, train_data, resume=resume, **common)
        elif schedule == "fast_rcnn":
            model = schedules.train_fast_rcnn(session, train_data, t.proposals, resume=resume,
                                              **common)
        else:
            model = _train_joint(session, train_data, val_data, resume, **common)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    history_file = out / "history.jsonl"
    history = [json.loads(line) for line in history_file.read_text().splitlines()] if history_file.exists() else []
    return {"history": history, "checkpoint": str(out / cb.CHECKPOINT), "model_file": str(out / cb.MODEL_FILE),
            "epochs": cb.completed_epochs(out), "model": model, "report": train_data.report.summary(),
            "budget_exhausted": bool(budget and budget.exhausted)}


def _train_joint(session, train_data, val_data, resume, callbacks, budget, verbose):
    config = session.config
    out = Path(config.train.output_dir)
    start = cb.completed_epochs(out) if resume else 0
    if resume and start == 0:
        print(f"kdet: no checkpoint in {out}; starting from scratch", file=sys.stderr)
    if not resume:
        _fresh_start(out)
    model = session.build()
    if start:
        model.optimizer.build(model.trainable_variables)
        restore(model, config)
    else:
        recipe.prepare(model, config, train_data)
    if start < config.train.epochs:
        recipe.fit(model, config, train_data, val_data, initial_epoch=start, callbacks=callbacks,
                   evaluate_fn=_evaluate_fn(config, val_data) if val_data is not None else None, budget=budget,
                   verbose=verbose)
    return model
