"""The one training recipe: data -> `model.fit` -> checkpoints -> evaluation -> logs, for every model and schedule.

    history = fit(model, config, train_data, val_data)

`kdet train`, `kdet.train`, the Faster R-CNN schedules and every benchmark go through `fit`. What a model needs
from its data it declares in `model.data_needs` (kdet.models.base.DataNeeds): instance or semantic masks and
multi-scale sizes are applied here, the same way for every model; statistics of the data (class weights) come
from `model.adapt`, called by `prepare`. The batches reach the model in the layout a Keras user's own pipeline
yields: `(images, {"boxes", "labels"})` in the model's `bounding_box_format`, or `(images, masks)`; the model
encodes its targets in its train step.

Every epoch runs exactly `train.steps_per_epoch` steps (default: one pass over the data): the training data
repeats as needed, so a small `steps_per_epoch` never meets the end of the data part-way through an epoch.
"""
import math
import sys
from pathlib import Path

import tensorflow as tf

from kdet.data.multiscale import multiscale_batches
from kdet.data.pipeline import make_tf_dataset
from kdet.ops.box_ops import convert_format
from kdet.ops.images import image_hw
from kdet.training import callbacks as cb
from kdet.training.tensorboard import TensorBoardLog

AUTOTUNE = tf.data.AUTOTUNE


def to_keras(batch, model):
    """A batch of kdet element dicts -> (x, y) in the layout `model.fit` takes (what a user's pipeline yields).

    x: images [B, H, W, 3] 0..255, or {"images", "proposals"} when the batch carries proposals (Fast R-CNN).
    y: {"boxes": [B, M, 4] in model.bounding_box_format, "labels": [B, M] (-1 = padding)} (+ "masks"
       [B, M, H, W]); semantic models: masks [B, H, W, 1] (or {"segmentation_masks", "masks"} with instance masks);
       then `model.pipeline_targets(y, images)`, target work the model moves ahead of its train step.
    """
    needs = model.data_needs
    images = batch["images"]
    x = {"images": images, "proposals": batch["proposals"]} if "proposals" in batch else images
    if needs.semantic:
        masks = batch["segmentation_masks"]
        y = {"segmentation_masks": masks, "masks": batch["masks"]} if needs.instance_masks else masks
        return x, model.pipeline_targets(y, images)
    boxes = batch["bounding_boxes"]["boxes"]
    if model.bounding_box_format != "yxyx":
        height, width = image_hw(images)
        boxes = convert_format(boxes, "yxyx", model.bounding_box_format, height=height, width=width)
    y = {"boxes": boxes, "labels": batch["bounding_boxes"]["labels"]}
    if needs.instance_masks:
        y["masks"] = batch["masks"]
    return x, model.pipeline_targets(y, images)


def _batches(model, config, data, training, extra=None):
    t, needs = config.train, model.data_needs
    batches = make_tf_dataset(data, tuple(config.model.image_size), t.batch_size, training=training,
                              augment=config.data.augment if training else None, resize=config.data.resize,
                              seed=t.seed, with_masks=needs.instance_masks, with_segmentation=needs.semantic,
                              drop_remainder=training and t.strategy != "none")
    if extra is not None:
        batches = batches.map(extra, num_parallel_calls=AUTOTUNE)
    return batches


def training_dataset(model, config, data, extra=None):
    """-> (tf.data of (x, y) repeating forever, steps per epoch).

    extra: optional batch -> batch map applied before the conversion (adds "proposals" in Fast R-CNN mode).
    """
    t, needs = config.train, model.data_needs
    batches = _batches(model, config, data, True, extra)
    if needs.multiscale_sizes:
        ds = multiscale_batches(batches, needs.multiscale_sizes, needs.multiscale_every, seed=t.seed,
                                map_fn=lambda batch: to_keras(batch, model))
    else:
        ds = batches.map(lambda batch: to_keras(batch, model), num_parallel_calls=AUTOTUNE)
    per_pass = len(data) // t.batch_size if t.strategy != "none" else math.ceil(len(data) / t.batch_size)
    steps = t.steps_per_epoch or max(per_pass, 1)
    return ds.repeat().prefetch(AUTOTUNE), steps


def validation_dataset(model, config, data, extra=None):
    """One pass over the validation split in the fit layout (for the validation loss), or None."""
    if data is None or not len(data):
        return None
    return _batches(model, config, data, False, extra).map(lambda batch: to_keras(batch, model),
                                                           num_parallel_calls=AUTOTUNE)


def _sample_images(model, config, data, extra=None):
    """x of the first `train.log_images` images of `data` (unaugmented, in the fit layout) for TensorBoard, or None."""
    count = config.train.log_images
    if not count or data is None or not len(data):
        return None
    x, _ = next(iter(_batches(model, config, data, False, extra).map(lambda batch: to_keras(batch, model)).take(1)))
    return tf.nest.map_structure(lambda tensor: tensor[:count], x)


def prepare(model, config, train_data):
    """Before the first fit: statistics the model declared it needs (`data_needs.adapt`), from the training split
    without augmentation."""
    if model.data_needs.adapt:
        model.adapt(validation_dataset(model, config, train_data))


def verbosity(verbose="auto"):
    """Keras' progress bar on a terminal, one line per epoch in a log file."""
    return (1 if sys.stdout.isatty() else 2) if verbose == "auto" else verbose


def fit(model, config, train_data, val_data=None, *, out_dir=None, epochs=None, initial_epoch=0, callbacks=(),
        evaluate_fn=None, extra=None, budget=None, verbose="auto", history_name="history.jsonl"):
    """Fit `model` on a split with everything a run needs, and return the Keras History's dict.

    Args:
        model: a kdet model (compiled here with `train.optimizer` unless the caller compiled it).
        config: the run's `Config`; train_data / val_data: `DetectionDataset`s (val_data optional).
        out_dir: where checkpoints (last.weights.h5, model.keras, state.json), history and TensorBoard logs go
            (default `train.output_dir`).
        epochs, initial_epoch: as model.fit (default `train.epochs`, 0; resume passes the completed epochs).
        callbacks: the user's Keras callbacks, run after kdet's own.
        evaluate_fn: model -> {name: float}, run on the validation split every `train.eval_every` epochs.
        extra: batch -> batch map for the datasets (Fast R-CNN proposals).
        budget: a `TimeBudget` to share across several fits; default one from `train.budget_seconds`, if set.
        history_name: file name of the per-epoch log in out_dir.
    """
    t = config.train
    out = Path(out_dir or t.output_dir)
    train_ds, steps = training_dataset(model, config, train_data, extra)
    val_ds = validation_dataset(model, config, val_data, extra)
    if budget is None and t.budget_seconds:
        budget = cb.TimeBudget(t.budget_seconds, t.budget_clock)
    # The history row before the checkpoint that commits its epoch (a resumed run drops rows beyond its checkpoint,
    # so none is missing).
    own = [cb.HistoryLog(out / history_name), cb.AtomicCheckpoint(out)]
    if evaluate_fn is not None and t.eval_every and val_data is not None:
        own.insert(0, cb.EvaluationCallback(evaluate_fn, every=t.eval_every))
    own.append(TensorBoardLog(out / "logs", every_steps=t.log_every_steps,
                              images=_sample_images(model, config, val_data or train_data, extra)))
    if budget is not None:
        own.insert(0, budget)  # its epoch-end pause starts before evaluation and checkpoints
    own.insert(0, cb.NonFiniteLossGuard(out))  # first: it raises before any epoch-end callback uses NaN weights
    if not model.compiled:
        model.compile(optimizer=cb.make_optimizer(t))
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs or t.epochs, initial_epoch=initial_epoch,
                        steps_per_epoch=steps, callbacks=own + list(callbacks), verbose=verbosity(verbose),
                        shuffle=False)  # kdet's tf.data shuffles; Keras would only warn
    return {k: [float(v) for v in values] for k, values in history.history.items()}
