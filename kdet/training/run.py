"""A training run from a config: seeds, precision policy, distribution strategy, resume, then the schedule.

    result = train(config, resume=False, callbacks=[...])     what `kdet train` and `kdet.train` call

Schedules (`train.schedule`): "joint" (one `recipe.fit`, every model), and for Faster R-CNN "alternating" (the
paper's 4 steps) and "fast_rcnn" (the second stage on the proposals of `train.proposals`), in
kdet.training.schedules. Every schedule runs under the same precision policy and strategy, honours `--resume`,
the time budget and the user's callbacks, because each of its fits is `recipe.fit`.
"""
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kdet.build import build_model, check_readable, load_split, restore
from kdet.data.check import check_dataset
from kdet.errors import ConfigError
from kdet.jsonio import write_json
from kdet.training import callbacks as cb
from kdet.training import recipe, schedules

SCHEDULES = ("joint", "alternating", "fast_rcnn")
RUN_CONFIG = "config.json"        # the run's whole config, written when it starts (resume checks its model section)
READ_REPORT = "read_report.json"  # kdet data check's figures and problems of each split the run read
ARCHITECTURE_KEYS = ("name", "num_classes", "args")
SHOWN_PROBLEMS = 10


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
    """A run started without --resume replaces what a previous run left in `out`."""
    for name in (cb.STATE, "history.jsonl", cb.CHECKPOINT, cb.MODEL_FILE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "logs", ignore_errors=True)


def prepare_output_dir(out):
    """Create `train.output_dir` and check that files can be written in it; a ConfigError naming it otherwise."""
    out = Path(out)
    blocking = next((p for p in [out, *out.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        where = "is a file" if blocking == out else f"is under {blocking}, which is a file"
        raise ConfigError(f"train.output_dir = {out} {where}, not a directory; choose another train.output_dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".kdet-write-test-"):
            pass
    except OSError as error:
        raise ConfigError(f"train.output_dir = {out}: cannot write there ({error.strerror or error}); choose "
                          f"another train.output_dir") from None


def _run_config(out):
    """The config.json of the run in `out`, or None when there is none."""
    path = Path(out) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        return saved if isinstance(saved.get("model"), dict) and isinstance(saved.get("train"), dict) else {}
    except (ValueError, UnicodeDecodeError, AttributeError):
        return {}


def check_fresh_start(config):
    """What `kdet train` checks without --resume: a ConfigError when `train.output_dir` already holds a run, saying
    how to continue (--resume), replace (--overwrite) or keep it (another output_dir)."""
    out = Path(config.train.output_dir)
    if not any((out / name).exists() for name in (cb.STATE, cb.CHECKPOINT, cb.MODEL_FILE, "step1")):
        return
    try:
        done = cb.completed_epochs(out)
    except ConfigError:
        done = None
    planned = (_run_config(out) or {}).get("train", {}).get("epochs", config.train.epochs)
    if done is None:
        what = "a run whose state.json is corrupt"
    elif done >= planned:
        what = f"a finished run ({done} of {planned} epochs, model {out / cb.MODEL_FILE})"
    else:
        what = f"a run stopped after {done} of {planned} epochs"
    raise ConfigError(f"train.output_dir = {out} already holds {what}; kdet train does not overwrite it: pass "
                      f"--resume to continue it (raise train.epochs to train longer), --overwrite to replace it, or "
                      f"choose another train.output_dir")


def check_same_architecture(config):
    """On --resume: a ConfigError when the run in `train.output_dir` was trained with another model.name,
    model.num_classes or model.args than `config` (its checkpoint cannot load into this model)."""
    out = Path(config.train.output_dir)
    saved = _run_config(out)
    if saved is None:
        return
    if not saved:
        raise ConfigError(f"{out / RUN_CONFIG}: corrupt run config (not the JSON kdet writes); cannot check that "
                          f"--resume continues the same model: fix or delete it")
    now = config.to_dict()["model"]
    differences = [(f"model.{key}", saved["model"].get(key), now[key]) for key in ARCHITECTURE_KEYS if key != "args"]
    before_args = saved["model"].get("args") or {}
    differences += [(f"model.args.{name}", before_args.get(name), now["args"].get(name))
                    for name in sorted(set(before_args) | set(now["args"]))]
    for key, before, after in differences:
        if json.dumps(before, sort_keys=True) != json.dumps(after, sort_keys=True):
            raise ConfigError(f"--resume: the run in {out} was trained with {key} = {json.dumps(before)}, this "
                              f"config has {json.dumps(after)}; its checkpoint cannot continue another "
                              f"architecture: restore the setting, or start again with --overwrite or another "
                              f"train.output_dir")


def report_reads(splits, out):
    """Print the read report of each split (as `kdet data check` does) and store them all in read_report.json."""
    stats = {name: check_dataset(data) for name, data in splits.items() if data is not None}
    path = write_json(stats, Path(out) / READ_REPORT)
    for name, figures in stats.items():
        print(f"kdet: {name} data: {figures['num_images']} images; read report: {figures['summary']}",
              file=sys.stderr)
        for problem in figures["problems"][:SHOWN_PROBLEMS]:
            print(f"kdet:   {problem}", file=sys.stderr)
        if len(figures["problems"]) > SHOWN_PROBLEMS:
            print(f"kdet:   ... {len(figures['problems']) - SHOWN_PROBLEMS} more problems in {path}", file=sys.stderr)
    return stats


def train(config, resume=False, callbacks=(), verbose="auto"):
    """Train the config's model with its schedule; checkpoints every epoch into `train.output_dir`.

    Without `resume` a previous run in that directory is replaced (`kdet train` refuses first, unless --overwrite:
    `check_fresh_start`); with `resume` the run must be of the same architecture (`check_same_architecture`).
    Writes config.json (the whole config) and read_report.json (what `kdet data check` reports of each split) there.
    Returns {"history": [per-epoch logs of history.jsonl], "checkpoint": last.weights.h5, "model_file": model.keras,
    "epochs": completed epochs, "model": the trained model, "report": the training split's read report}.
    """
    t = config.train
    schedule = t.schedule
    if schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule = {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    out = Path(t.output_dir)
    prepare_output_dir(out)
    if resume:  # a corrupt state, another architecture or a truncated checkpoint stop here, before any work
        check_same_architecture(config)
        if cb.completed_epochs(out):
            check_readable(out / cb.CHECKPOINT)
    seed_everything(t.seed)
    keras.mixed_precision.set_global_policy(t.mixed_precision)
    try:
        train_data = load_split(config, "train")
        val_data = load_split(config, "val") if config.data.val_split else None
        report_reads({"training": train_data, "validation": val_data}, out)
        write_json(config.to_dict(), out / RUN_CONFIG)
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
    if resume:
        cb.trim_history(out / "history.jsonl", start)
    else:
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
