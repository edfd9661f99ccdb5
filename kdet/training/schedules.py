"""Faster R-CNN training beyond one joint `model.fit`: Fast R-CNN on given proposals, and the paper's 4-step
alternating training (Ren et al. 2015, section 3.2), each step one `model.fit`.

    train.schedule: fast_rcnn  (+ train.proposals: FILE)   train the second stage on proposals read from a JSON file
    train.schedule: alternating                             the 4 steps below; `train.epochs` epochs per step
    evaluate_fast_rcnn(config, "proposals.json")            COCO AP / VOC mAP of the second stage on given proposals
Both schedules are run by kdet.training.run.train; every step is one `kdet.training.recipe.fit`, so each honours
the precision policy, the strategy, the time budget, the user's callbacks and `--resume` (a finished step is
loaded from its checkpoint in `<output_dir>/step<k>/`, an unfinished one continues from its last epoch).

    step 1  RPN (backbone + RPN head), from the initial backbone weights                      network A
    step 2  Fast R-CNN (backbone + box head) on A's proposals (written to a proposal file), a
            separate network B started from the same initial backbone weights (no shared
            convs yet)                                                                           network B
    step 3  B's RPN head, started from A's, on B's frozen shared convs                        B
    step 4  B's box head on the proposals of its new RPN, shared convs and RPN frozen          B
The result is one network (B) whose RPN and detector share convs: the checkpoint `kdet evaluate` reads.
"Shared convs" are the backbone (and FPN); with the C4 head, ResNet's res5 runs per RoI and belongs to the detector.

Proposal files (`write_proposals_json` / `read_proposals_json`) hold boxes per image in the image's own pixels:
    {"bounding_box_format": "yxyx" | "xyxy" | ..., "proposals": {"<image file name or image id>": [[...], ...]}}
Boxes come in priority order (the first `max_proposals` are used). An image without an entry has no proposals (the
ground truth still trains it); a name that is not in the split fails with a DataError naming the file. Horizontal
flips are off while training on given proposals (the file's boxes would not follow the image).
"""
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from kdet.build import build_model, load_split, restore
from kdet.data.pipeline import make_tf_dataset
from kdet.errors import ConfigError, DataError
from kdet.ops import convert_format
from kdet.training import callbacks as cb
from kdet.training import recipe

MODEL_NAME = "faster_rcnn"


# -- proposal files ---------------------------------------------------------------------------------------------------
def _record_keys(record):
    keys = [str(record.image_id)]
    if record.path is not None:
        keys += [Path(record.path).name, str(record.path)]
    return keys


def write_proposals_json(path, dataset, proposals, bounding_box_format="yxyx"):
    """proposals: {image_id: [P, 4] yxyx pixels of the image} -> JSON keyed by file name (or image id)."""
    entries = {}
    for record in dataset.records:
        if record.image_id in proposals:
            boxes = np.asarray(proposals[record.image_id], np.float32).reshape(-1, 4)
            if bounding_box_format != "yxyx":
                boxes = np.asarray(convert_format(boxes, "yxyx", bounding_box_format))
            entries[_record_keys(record)[1 if record.path else 0]] = np.round(boxes, 2).tolist()
    Path(path).write_text(json.dumps({"bounding_box_format": bounding_box_format, "proposals": entries}))
    return str(path)


def read_proposals_json(path, dataset):
    """JSON proposal file -> {image_id: [P, 4] float32 yxyx pixels of the image}; names every unknown image."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "proposal file not found")
    try:
        content = json.loads(path.read_text())
        box_format = content.get("bounding_box_format", "yxyx")
        entries = content["proposals"]
        if not isinstance(entries, dict):
            raise TypeError("'proposals' must map image names to lists of boxes")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(str(path), f"not a proposal file ({error}); expected "
                        '{"bounding_box_format": "yxyx", "proposals": {"<image>": [[y1, x1, y2, x2], ...]}}') from None
    by_key = {key: record for record in dataset.records for key in _record_keys(record)}
    unknown = sorted(name for name in entries if name not in by_key)
    if unknown:
        raise DataError(str(path), f"{len(unknown)} image(s) not in the dataset split: {', '.join(unknown[:5])}"
                        f"{' ...' if len(unknown) > 5 else ''}")
    proposals = {}
    for name, boxes in entries.items():
        try:
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        except ValueError:
            raise DataError(str(path), f"proposals of {name!r} are not a list of 4-number boxes") from None
        if box_format != "yxyx" and len(boxes):
            boxes = np.asarray(convert_format(boxes, box_format, "yxyx"), np.float32)
        proposals[by_key[name].image_id] = boxes
    return proposals


def compute_proposals(model, dataset, batch_size=8, resize="stretch", training_counts=True):
    """The model's RPN proposals for every image: {image_id: [P, 4] yxyx pixels of the image}.

    training_counts: use the training-time numbers of proposals (rpn_*_train, 2000 in the paper) rather than the
    inference ones, as the paper trains Fast R-CNN on them.
    """
    def propose(images):
        outputs = model(images, training=False)
        return model.propose(outputs, images, training=training_counts)

    propose = tf.function(propose)
    results = {}
    for batch in make_tf_dataset(dataset, model.image_size, batch_size, resize=resize):
        out = propose(batch["images"])
        scale = np.tile(batch["scale"].numpy(), [1, 2])
        for i, image_id in enumerate(batch["image_id"].numpy()):
            valid = out["proposal_valid"][i].numpy()
            results[int(image_id)] = out["proposals"][i].numpy()[valid] / scale[i]
    return results


def proposal_table(dataset, proposals, max_proposals):
    """-> (lookup image_id -> row, [rows + 1, P, 4] float32 boxes of the image; the last row is empty)."""
    ids = [record.image_id for record in dataset.records]
    width = max([min(len(proposals.get(i, ())), max_proposals) for i in ids] + [1])
    table = np.zeros((len(ids) + 1, width, 4), np.float32)
    for row, image_id in enumerate(ids):
        boxes = np.asarray(proposals.get(image_id, np.zeros((0, 4))), np.float32)[:max_proposals]
        table[row, :len(boxes)] = boxes
    lookup = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.int64), tf.range(len(ids), dtype=tf.int64)),
        default_value=len(ids))
    return lookup, tf.constant(table)


def attach_proposals(dataset, proposals, max_proposals=2000):
    """-> batch -> batch adding "proposals" [B, P, 4] in network pixels (the image's boxes times the batch's scale)."""
    lookup, table = proposal_table(dataset, proposals, max_proposals)

    def attach(batch):
        rows = tf.gather(table, lookup.lookup(batch["image_id"]))
        return dict(batch, proposals=rows * tf.tile(batch["scale"], [1, 2])[:, None, :])

    return attach


# -- which layers a step trains ------------------------------------------------------------------------------------
def trainable_snapshot(model):
    """{id(layer): trainable} of every layer as built (frozen ResNet stages / frozen BN included), so that a step
    can unfreeze a part without undoing what the config froze (Keras' `trainable` setter is recursive)."""
    return {id(layer): layer.trainable for layer in model._flatten_layers(include_self=False, recursive=True)}


def _enable(layer, on, snapshot):
    if layer is None:
        return
    if not on:
        layer.trainable = False
        return
    # Pre-order: a parent first (its setter resets every child), then each child back to its built state.
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        sub.trainable = snapshot.get(id(sub), True)


def set_trainable(model, stage, snapshot, freeze_shared=False, freeze_rpn=False):
    """Select what a step trains: the stage's own layers, minus the frozen shared convs / RPN head.

    snapshot: `trainable_snapshot(model)` taken right after building it.
    """
    model.stage = stage
    for layer in (model.backbone, model.fpn):
        _enable(layer, not freeze_shared, snapshot)
    if model.backbone_name == "resnet_c4":  # res5 runs per RoI: it belongs to the detector, not the shared convs
        for block in model.backbone.stages[3]:
            _enable(block, stage != "rpn", snapshot)
    _enable(model.rpn_head, stage == "rpn" and not freeze_rpn, snapshot)
    for layer in (model.box_head, model.box_predictor):
        _enable(layer, stage == "fast_rcnn", snapshot)


def _check_model(config):
    if config.model.name != MODEL_NAME:
        raise ConfigError(f"model.name = {config.model.name!r}: train.schedule alternating / fast_rcnn train "
                          f"{MODEL_NAME} models")


def _step(model, config, train_data, step_dir, resume, extra=None, **fit_args):
    """One step of a schedule: `recipe.fit` into its own directory, or (resume) its finished checkpoint.
    Returns whether it trained anything."""
    done = cb.completed_epochs(step_dir) if resume else 0
    model.compile(optimizer=cb.make_optimizer(config.train))  # after set_trainable: the step's own variables
    if done:
        model.optimizer.build(model.trainable_variables)
        model.load_weights(Path(step_dir) / cb.CHECKPOINT)
    if done >= config.train.epochs:
        return False
    recipe.fit(model, config, train_data, out_dir=step_dir, initial_epoch=done, extra=extra, **fit_args)
    return True


def _finish(model, config):
    """The schedule's result becomes the run's checkpoint (what evaluate / predict / export read)."""
    out = Path(config.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"tmp-{os.getpid()}.weights.h5"  # atomically, as AtomicCheckpoint does
    model.save_weights(weights)
    cb.save_model_atomically(model, out / cb.MODEL_FILE)
    os.replace(weights, out / cb.CHECKPOINT)
    cb.write_state(out, config.train.epochs)


# -- Fast R-CNN mode ----------------------------------------------------------------------------------------------
def train_fast_rcnn(session, train_data, proposals_json, resume=False, model=None, max_proposals=2000,
                    step_dir=None, finish=True, **fit_args):
    """Train the second stage (backbone + box head; the RPN is unused and frozen) on proposals from a file.

    model: train this model instead of a new one (the alternating schedule's step 2). Horizontal flips are off
    (the file's boxes would not follow the image). Returns the model.
    """
    config = session.config
    _check_model(config)
    if not proposals_json:
        raise ConfigError("train.schedule fast_rcnn needs train.proposals (a JSON proposal file)")
    proposals = read_proposals_json(proposals_json, train_data)
    model = model or session.build(compile=False)
    set_trainable(model, "fast_rcnn", trainable_snapshot(model))
    augment = config.data.augment
    if augment is not None and augment.flip:
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, augment=dataclasses.replace(augment, flip=False)))
    _step(model, config, train_data, step_dir or Path(config.train.output_dir) / "fast_rcnn", resume,
          extra=attach_proposals(train_data, proposals, max_proposals), **fit_args)
    if finish:
        _finish(model, config)
    return model


def detect_with_proposals(model, dataset, proposals, batch_size=8, resize="stretch", max_proposals=2000):
    """Detections on given proposals, in each image's own pixels (the form kdet.eval.detection scores)."""
    detect = tf.function(model.detect, reduce_retracing=True)
    results = []
    attach = attach_proposals(dataset, proposals, max_proposals)
    for batch in make_tf_dataset(dataset, model.image_size, batch_size, resize=resize):
        batch = attach(batch)
        scale = tf.tile(batch["scale"], [1, 2])
        out = {k: v.numpy() for k, v in detect({"images": batch["images"], "proposals": batch["proposals"]}).items()}
        for i, image_id in enumerate(batch["image_id"].numpy()):
            n = int(out["num_detections"][i])
            results.append({"boxes": out["boxes"][i, :n] / scale[i].numpy(), "scores": out["scores"][i, :n],
                            "classes": out["classes"][i, :n], "image_id": int(image_id)})
    return results


def evaluate_fast_rcnn(config, proposals_json, split="test", checkpoint=None, model=None, metric="both",
                       max_proposals=2000):
    """COCO AP / VOC mAP@0.5 of the second stage on the proposals of a file (the trained checkpoint by default)."""
    from kdet.eval.detection import evaluate_detections

    _check_model(config)
    if model is None:
        model = build_model(config)
        restore(model, config, checkpoint)
    data = load_split(config, split)
    proposals = read_proposals_json(proposals_json, data)
    detections = detect_with_proposals(model, data, proposals, resize=config.data.resize,
                                       max_proposals=max_proposals)
    results = evaluate_detections(data, detections, metric)
    results["num_images"] = len(data)
    return results


# -- 4-step alternating training ----------------------------------------------------------------------------------
def train_alternating(session, train_data, resume=False, on_step=None, **fit_args):
    """The paper's 4-step alternating training; each step is one `recipe.fit` of `train.epochs` epochs into
    `<output_dir>/step<k>/`.

    Step 2 goes through a proposal file, `<output_dir>/proposals_step1.json` (network A's proposals on the train
    split), exactly as `train_fast_rcnn` reads one.
    on_step: optional callback(step, "start" | "end", network_a, network_b) (the tests check what is frozen).
    Returns network B, whose checkpoint becomes the run's.
    """
    config = session.config
    _check_model(config)
    out = Path(config.train.output_dir)
    notify = on_step or (lambda step, phase, a, b: None)

    network_a = session.build(compile=False)
    initial_backbone = [v.numpy() for v in network_a.backbone.weights]
    set_trainable(network_a, "rpn", trainable_snapshot(network_a))
    notify(1, "start", network_a, None)
    trained_a = _step(network_a, config, train_data, out / "step1", resume, **fit_args)
    notify(1, "end", network_a, None)

    proposal_file = out / "proposals_step1.json"
    if trained_a or not proposal_file.is_file():
        proposals = compute_proposals(network_a, train_data, config.train.batch_size, config.data.resize)
        write_proposals_json(proposal_file, train_data, proposals)
    network_b = session.build(compile=False)
    snapshot = trainable_snapshot(network_b)
    for variable, value in zip(network_b.backbone.weights, initial_backbone):
        variable.assign(value)
    notify(2, "start", network_a, network_b)
    train_fast_rcnn(session, train_data, proposal_file, resume=resume, model=network_b, step_dir=out / "step2",
                    max_proposals=network_a.rpn_settings["rpn_post_nms_top_n_train"], finish=False, **fit_args)
    notify(2, "end", network_a, network_b)

    if not (resume and cb.completed_epochs(out / "step3")):
        for target, source in zip(network_b.rpn_head.weights, network_a.rpn_head.weights):
            target.assign(source)
    set_trainable(network_b, "rpn", snapshot, freeze_shared=True)
    notify(3, "start", network_a, network_b)
    _step(network_b, config, train_data, out / "step3", resume, **fit_args)
    notify(3, "end", network_a, network_b)

    set_trainable(network_b, "fast_rcnn", snapshot, freeze_shared=True, freeze_rpn=True)
    notify(4, "start", network_a, network_b)
    _step(network_b, config, train_data, out / "step4", resume, **fit_args)
    notify(4, "end", network_a, network_b)

    network_b.stage = "joint"
    for layer in (network_b.backbone, network_b.fpn, network_b.rpn_head, network_b.box_head, network_b.box_predictor):
        _enable(layer, True, snapshot)
    _finish(network_b, config)
    return network_b
