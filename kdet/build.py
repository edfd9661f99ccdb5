"""From a config to the objects a run works on: the model, the data splits, the trained weights.

    model = build_model(config)                  the Keras model named by model.name, built at model.image_size
    train = load_split(config, "train")          a DetectionDataset (read report included)
    restore(model, config)                       the run's last checkpoint (or an explicit file)
    model = load_trained_model(config)           the run's model.keras (class names inside) or build + restore

Used by training, evaluation, inference and export alike, so each of them builds models one way.
"""
import inspect
from pathlib import Path

import keras
import tensorflow as tf

from kdet.errors import ConfigError, DataError
from kdet.models import MODELS

CHECKPOINT = "last.weights.h5"   # model + optimizer (Keras saves the optimizer's variables with the weights), for --resume
MODEL_FILE = "model.keras"       # the whole model (architecture, weights, class names): what users load
# Both written every epoch by kdet.training.callbacks.AtomicCheckpoint.
CONSTRUCTOR_KEYS = ("self", "kwargs", "num_classes", "image_size", "max_detections", "class_names")


def build_model(config, class_names=None):
    """The Keras model named by `model.name`, its weights created at `model.image_size`.

    class_names: saved with the model (and its exports); default `data.options.class_names` if the config has them.
    model.backbone_weights: initial backbone weights from a local file (kdet.convert.backbone_weights), e.g. a
    torchvision ImageNet ResNet state dict.
    """
    m = config.model
    if m.name not in MODELS:
        raise ConfigError(f"model.name = {m.name!r}; choose one of {', '.join(sorted(MODELS))}")
    cls = MODELS[m.name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in CONSTRUCTOR_KEYS]
    unknown = sorted(set(m.args) - set(valid))
    if unknown:
        raise ConfigError(f"model.args.{unknown[0]} is not an argument of {cls.__name__}; valid arguments: "
                          f"{', '.join(valid)}")
    names = class_names if class_names is not None else config.data.options.get("class_names")
    if names is not None and len(names) != m.num_classes:
        names = None  # the config check in load_split reports the mismatch with the data's names
    try:
        model = cls(num_classes=m.num_classes, image_size=tuple(m.image_size), max_detections=m.max_detections,
                    class_names=names, **m.args)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.args for {m.name}: {error}") from None
    model(tf.zeros([1, *m.image_size, 3]))
    if m.backbone_weights:
        from kdet.convert.backbone_weights import load_backbone_weights
        load_backbone_weights(model, m.backbone_weights)
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


def restore(model, config, checkpoint=None):
    """Load weights: an explicit file (.weights.h5 or .keras), else the run's last checkpoint; a clear error when
    there is none."""
    path = Path(checkpoint) if checkpoint else Path(config.train.output_dir) / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint found (train first, or pass --checkpoint)")
    if path.suffix == ".keras":
        model.set_weights(keras.saving.load_model(path).get_weights())
    else:
        model.load_weights(path, skip_mismatch=False)
    return path


def load_trained_model(config, checkpoint=None):
    """The trained model of a run: `checkpoint` if given (.keras loads whole, .weights.h5 into a built model),
    else the run's model.keras (its class names come with it), else build + the last weights."""
    path = Path(checkpoint) if checkpoint else Path(config.train.output_dir) / MODEL_FILE
    if path.suffix == ".keras" and path.is_file():
        return keras.saving.load_model(path)
    model = build_model(config)
    restore(model, config, checkpoint)
    return model


def load_model_file(path):
    """A whole model from a .keras file (kdet's, or one `kdet convert torchvision` wrote), with a clear error."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ConfigError(f"{path}: a model file must be a .keras file (weights alone need --config)")
    if not path.is_file():
        raise ConfigError(f"{path}: no such model file")
    return keras.saving.load_model(path)


def class_names_of(model, config):
    """The model's own class names, else the config's, else the dataset's, else "0", "1", ..."""
    if getattr(model, "class_names", None):
        return list(model.class_names)
    names = config.data.options.get("class_names")
    if names:
        return list(names)
    try:
        return load_split(config, "val" if config.data.val_split != "" else "train").class_names
    except (DataError, ConfigError):
        return [str(i) for i in range(config.model.num_classes)]
