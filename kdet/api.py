"""The Python API; the CLI is a thin shell over it. Each function takes a config (YAML path, dict or `Config`) and
`overrides` (the CLI's `--set key=value` list).

    model = kdet.build_model("configs/classloc_shapes.yaml")
    kdet.train("configs/classloc_shapes.yaml", overrides=["train.epochs=2"])
    kdet.evaluate("configs/classloc_shapes.yaml")            # COCO AP + VOC mAP on the test split
    kdet.predict("configs/classloc_shapes.yaml", ["img.png"], out_dir="out")
    kdet.export("configs/classloc_shapes.yaml", formats=["saved_model", "tflite"])
"""
import inspect
import json
import random
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kdet.training import callbacks as training
from kdet.config import load_config
from kdet.data.augment import resize_image
from kdet.data.pipeline import make_tf_dataset
from kdet.errors import ConfigError, DataError
from kdet.models import MODELS


def _config(config, overrides=()):
    return load_config(config, overrides)


def build_model(config, overrides=()):
    """The Keras model named by `model.name`, built (weights created) at `model.image_size`."""
    config = _config(config, overrides)
    m = config.model
    if m.name not in MODELS:
        raise ConfigError(f"model.name = {m.name!r}; choose one of {', '.join(sorted(MODELS))}")
    cls = MODELS[m.name]
    valid = [p for p in inspect.signature(cls.__init__).parameters
             if p not in ("self", "kwargs", "num_classes", "image_size", "max_detections")]
    unknown = sorted(set(m.args) - set(valid))
    if unknown:
        raise ConfigError(f"model.args.{unknown[0]} is not an argument of {cls.__name__}; valid arguments: "
                          f"{', '.join(valid)}")
    try:
        model = cls(num_classes=m.num_classes, image_size=tuple(m.image_size), max_detections=m.max_detections,
                    **m.args)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.args for {m.name}: {error}") from None
    model(tf.zeros([1, *m.image_size, 3]))
    return model


def load_split(config, split):
    """The `DetectionDataset` of one split ("train", "val", "test") of the config's data section.

    data.<split>_split null reads every image of the dataset; "" means the config has no such split (ConfigError).
    """
    from kdet.data.io import load_dataset
    d = config.data
    name = {"train": d.train_split, "val": d.val_split, "test": d.test_split}.get(split, split)
    if name == "":
        raise ConfigError(f"data.{split}_split is empty: the config has no {split} split")
    dataset = load_dataset(d.format, d.path, split=name, strict=d.strict, **d.options)
    if split != "train" and d.max_eval_images is not None:
        dataset.records = dataset.records[:d.max_eval_images]
    if len(dataset.class_names) != config.model.num_classes:
        raise ConfigError(f"model.num_classes = {config.model.num_classes} but the {d.format} data has "
                          f"{len(dataset.class_names)} classes ({', '.join(dataset.class_names)})")
    return dataset


def _seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def _strategy(name):
    if name == "none":
        return tf.distribute.get_strategy()
    from kdet.training.distribute import make_strategy
    return make_strategy(name)


def restore(model, config, checkpoint=None):
    """Load weights: an explicit file, else the run's last checkpoint; a clear error when there is none."""
    path = Path(checkpoint) if checkpoint else Path(config.train.output_dir) / training.CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint found (train first, or pass --checkpoint)")
    model.load_weights(path, skip_mismatch=False) if path.suffix != ".keras" else \
        model.set_weights(keras.saving.load_model(path).get_weights())
    return path


def train(config, overrides=(), resume=False, verbose="auto"):
    """Train with `model.fit`, checkpointing every epoch; `resume=True` continues from the last checkpoint.

    Returns {"history": [per-epoch logs], "checkpoint": path, "epochs": completed epochs}.
    """
    config = _config(config, overrides)
    t = config.train
    out = Path(t.output_dir)
    _seed(t.seed)
    keras.mixed_precision.set_global_policy(t.mixed_precision)
    try:
        train_data = load_split(config, "train")
        val_data = load_split(config, "val") if config.data.val_split else None
        start = training.completed_epochs(out) if resume else 0
        if resume and start == 0:
            print(f"kdet: no checkpoint in {out}; starting from scratch", file=sys.stderr)
        if not resume and (out / training.STATE).exists():
            (out / training.STATE).unlink()
            (out / "history.jsonl").unlink(missing_ok=True)
        strategy = _strategy(t.strategy)
        with strategy.scope():
            model = build_model(config)
            if isinstance(getattr(model, "class_weights", None), str) and not start:
                # "median" / "inverse": computed once from the training masks; a resumed run restores them.
                from kdet.data.label_image import class_weights_from_dataset
                model.set_class_weights(class_weights_from_dataset(train_data, model.num_mask_classes,
                                                                   model.class_weights, model.ignore_index))
            optimizer = training.make_optimizer(t)
            model.compile(optimizer=optimizer)
            if start:
                optimizer.build(model.trainable_variables)
                restore(model, config)
        size = tuple(config.model.image_size)

        def to_xy(batch):
            return batch["images"], model.encode_targets(batch)

        needs = _pipeline_needs(model)
        train_ds = make_tf_dataset(train_data, size, t.batch_size, training=True, augment=config.data.augment,
                                   resize=config.data.resize, seed=t.seed, drop_remainder=t.strategy != "none",
                                   **needs)
        train_ds = train_ds.map(to_xy, num_parallel_calls=tf.data.AUTOTUNE)
        val_ds = None
        if val_data is not None and len(val_data):
            val_ds = make_tf_dataset(val_data, size, t.batch_size, resize=config.data.resize, **needs).map(to_xy)
        callbacks = [training.AtomicCheckpoint(out), training.HistoryLog(out / "history.jsonl")]
        if t.eval_every and val_data is not None:
            callbacks.insert(0, training.EvaluationCallback(
                lambda m: {k: v for k, v in _evaluate(m, val_data, config, t.eval_metric, progress=False).items()
                           if not isinstance(v, dict)}, every=t.eval_every))
        callbacks.append(keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False))
        if verbose == "auto":
            verbose = 1 if sys.stdout.isatty() else 2
        if start < t.epochs:
            model.fit(train_ds, validation_data=val_ds, epochs=t.epochs, initial_epoch=start,
                      steps_per_epoch=t.steps_per_epoch, callbacks=callbacks, verbose=verbose,
                      shuffle=False)  # tf.data shuffles; Keras would only warn
    finally:
        keras.mixed_precision.set_global_policy("float32")
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()] \
        if (out / "history.jsonl").exists() else []
    return {"history": history, "checkpoint": str(out / training.CHECKPOINT), "epochs": training.completed_epochs(out),
            "model": model}


def _pipeline_needs(model):
    """What the model's targets are made from: semantic masks for segmenters, instance masks where asked."""
    return {"with_segmentation": model.task == "semantic",
            "with_masks": bool(getattr(model, "uses_instance_masks", False))}


def _evaluate(model, dataset, config, metric="both", progress=True):
    if model.task == "semantic":
        from kdet.eval.semantic import evaluate_semantic
        return evaluate_semantic(model, dataset, resize=config.data.resize, progress=progress)
    from kdet.eval.detection import evaluate_model
    return evaluate_model(model, dataset, metric, resize=config.data.resize, progress=progress)


def evaluate(config, overrides=(), split="test", checkpoint=None, metric="both", progress=True):
    """Detectors: COCO AP (pycocotools) and VOC mAP@0.5 on a split, boxes in each image's own frame.
    Semantic models: mIoU, per-class IoU and pixel accuracy (255 ignored)."""
    config = _config(config, overrides)
    model = build_model(config)
    restore(model, config, checkpoint)
    dataset = load_split(config, split)
    results = _evaluate(model, dataset, config, metric, progress=progress)
    results["num_images"] = len(dataset)
    results["skipped"] = dataset.report.summary()
    return results


def predict(config, images, out_dir="predictions", overrides=(), checkpoint=None, score_threshold=0.3, tiled=False):
    """Detect objects in image files; writes <name>.png (boxes drawn) and <name>.json per image into `out_dir`.

    Returns the list of per-image results (boxes yxyx in the image's own pixels, scores, class ids and names).
    Semantic models write <name>.png as a colour overlay, <name>_mask.png (class ids) and <name>.json (pixels per
    class); `tiled=True` segments at the image's own resolution by overlap-tile prediction instead of resizing
    it to the model size (U-Net trained on tiles of a larger image).
    """
    from kdet.data.images import read_image
    from kdet.inference.visualize import draw_detections, save_png
    config = _config(config, overrides)
    model = build_model(config)
    restore(model, config, checkpoint)
    class_names = _class_names(config)
    if model.task == "semantic":
        from kdet.eval.semantic import predict_files
        return predict_files(model, images, out_dir, class_names, tiled=tiled)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in images:
        image = read_image(path)
        element = resize_image({"images": tf.cast(image, tf.float32), "bounding_boxes": {
            "boxes": tf.zeros([0, 4]), "labels": tf.zeros([0], tf.int32)}}, config.model.image_size,
            config.data.resize)
        det = {k: v.numpy()[0] for k, v in model.detect(element["images"][None]).items()}
        n = int(det["num_detections"])
        keep = det["scores"][:n] >= score_threshold
        boxes = det["boxes"][:n][keep] / np.tile(element["scale"].numpy(), 2)  # back to the image's own pixels
        classes = det["classes"][:n][keep]
        result = {"image": str(path), "boxes": boxes.round(2).tolist(), "scores": det["scores"][:n][keep].tolist(),
                  "classes": classes.tolist(), "names": [class_names[c] for c in classes],
                  "bounding_box_format": "yxyx"}
        stem = Path(path).stem
        save_png(draw_detections(image, boxes, classes, result["scores"], class_names), out / f"{stem}.png")
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
        results.append(result)
    return results


def _class_names(config):
    names = config.data.options.get("class_names")
    if names:
        return list(names)
    try:
        return load_split(config, "val" if config.data.val_split != "" else "train").class_names
    except (DataError, ConfigError):
        return [str(i) for i in range(config.model.num_classes)]


def export(config, overrides=(), formats=None, quantize=None, checkpoint=None, out_dir=None, name=None):
    """SavedModel (TF Serving layout), TFLite and/or ONNX of the trained model. Returns {format: path}."""
    from kdet.export import export_model
    config = _config(config, overrides)
    model = build_model(config)
    restore(model, config, checkpoint)
    formats = formats or config.export.formats
    quantize = quantize if quantize is not None else config.export.quantize
    representative = None
    if quantize == "int8":
        dataset = load_split(config, "train")
        batches = make_tf_dataset(dataset, tuple(config.model.image_size), 8, resize=config.data.resize).take(8)
        representative = np.concatenate([b["images"].numpy() for b in batches])
    return export_model(model, out_dir or config.export.out_dir, name or config.export.name, formats=formats,
                        quantize=quantize, representative_images=representative)


def benchmark(paths, runs=50, warmup=5, batch=1, seed=0):
    """Latency of artifacts (.keras, SavedModel, .tflite, .onnx) on the same images, timed in turns in one process.
    Returns one row per artifact: {"name", "format", "median_ms", "p90_ms", "mean_ms", "fps", "batch"}."""
    from kdet.inference.benchmark import benchmark_artifacts
    return benchmark_artifacts(paths, runs=runs, warmup=warmup, batch=batch, seed=seed)
