"""Configs: YAML (safe load only) into dataclasses, validated strictly.

A config file has four sections, each a dataclass below. An unknown key anywhere fails with a `ConfigError` naming
the key and the valid ones, so a typo never silently falls back to a default. `--set section.key=value` overrides
use the same validation (the value is parsed as YAML: `--set train.epochs=3`, `--set data.options.num_images=64`).

    model:  {name: classloc, num_classes: 3, image_size: [128, 128], max_detections: 1, args: {...}}
    data:   {format: shapes, path: null, train_split: train, val_split: val, options: {...}, augment: {...}}
    train:  {epochs: 10, batch_size: 32, learning_rate: 1e-3, ...}
    export: {name: classloc_shapes, formats: [saved_model, tflite], quantize: null}
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml

from kdet.errors import ConfigError


@dataclasses.dataclass
class ModelConfig:
    name: str = "classloc"             # a key of kdet.models.MODELS
    num_classes: int = 3
    image_size: list = dataclasses.field(default_factory=lambda: [128, 128])  # [height, width]
    max_detections: int = 100
    args: dict = dataclasses.field(default_factory=dict)  # extra constructor arguments of the model class


@dataclasses.dataclass
class AugmentConfig:
    flip: bool = True                  # random horizontal flip (boxes, masks follow)
    scale_jitter: list = dataclasses.field(default_factory=lambda: [1.0, 1.0])  # [min, max] zoom, then crop/pad
    color_jitter: float = 0.0          # strength of brightness/contrast/saturation jitter (0 = off)
    ssd: bool = False                  # SSD's photometric distortion, expand, min-IoU crop and flip (boxes only)
    elastic: float = 0.0               # U-Net's elastic deformation: sigma in px on a 3x3 grid (paper: 10; 0 = off)


@dataclasses.dataclass
class DataConfig:
    format: str = "shapes"             # shapes | coco | voc | yolo | tfrecord | label_image
    path: typing.Optional[str] = None  # dataset root / annotation file / dataset yaml (relative to the config file's cwd)
    # Split names. null = every image of the dataset (a VOC folder without ImageSets lists); "" = no such split
    # (val_split: "" trains without validation).
    train_split: typing.Optional[str] = "train"
    val_split: typing.Optional[str] = "val"
    test_split: typing.Optional[str] = "test"
    options: dict = dataclasses.field(default_factory=dict)  # reader options, e.g. shapes: num_images, max_objects
    resize: str = "stretch"            # stretch | letterbox (top-left, keeps aspect ratio)
    strict: bool = False               # raise on the first bad record instead of counting and skipping it
    max_eval_images: typing.Optional[int] = None  # evaluate on at most this many images of the val / test split
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-3
    optimizer: str = "adam"            # adam | sgd | adamw
    weight_decay: float = 0.0
    seed: int = 0
    mixed_precision: str = "float32"   # float32 | mixed_float16 | mixed_bfloat16
    strategy: str = "none"             # none | mirrored | multi_worker
    eval_every: int = 0                # run COCO/VOC evaluation on the val split every N epochs (0 = off)
    eval_metric: str = "coco"          # coco | voc
    output_dir: str = "runs/default"   # checkpoints, history, TensorBoard logs
    steps_per_epoch: typing.Optional[int] = None


@dataclasses.dataclass
class ExportConfig:
    name: str = "model"
    out_dir: str = "saved_models"
    formats: list = dataclasses.field(default_factory=lambda: ["saved_model", "tflite"])
    quantize: typing.Optional[str] = None   # null | fp16 | int8


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    source: typing.Optional[str] = None     # the YAML file it came from (not a YAML key)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


_CHOICES = {
    ("data", "format"): ("shapes", "coco", "voc", "yolo", "tfrecord", "label_image"),
    ("data", "resize"): ("stretch", "letterbox"),
    ("train", "optimizer"): ("adam", "sgd", "adamw"),
    ("train", "mixed_precision"): ("float32", "mixed_float16", "mixed_bfloat16"),
    ("train", "strategy"): ("none", "mirrored", "multi_worker"),
    ("train", "eval_metric"): ("coco", "voc"),
}


def _build(cls, values, where):
    """Make dataclass `cls` from a dict, rejecting unknown keys and wrong types (with the dotted key in the message)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key '{_join(where, unknown[0])}'; valid keys"
                          f"{' of ' + where if where else ''}: {', '.join(fields)}")
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        key = _join(where, name)
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key)
            continue
        kwargs[name] = _check_type(value, hint, key)
    obj = cls(**kwargs)
    for (section, name), choices in _CHOICES.items():
        if where == section and getattr(obj, name) not in choices:
            raise ConfigError(f"{section}.{name} = {getattr(obj, name)!r}; choose one of {', '.join(choices)}")
    return obj


def _join(where, name):
    return f"{where}.{name}" if where else name


def _check_type(value, hint, key):
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' may not be null")
    base = typing.get_args(hint)[0] if optional else hint
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-3" as a string
        except ValueError:
            pass
    if base is int and isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if not isinstance(value, base):
        raise ConfigError(f"config key '{key}' must be {base.__name__}, got {type(value).__name__} {value!r}")
    return value


def load_config(path_or_dict, overrides=()) -> Config:
    """A YAML path (or a dict) plus `key=value` overrides -> a validated `Config`."""
    source = None
    if isinstance(path_or_dict, Config):
        raw = path_or_dict.to_dict()
        source = path_or_dict.source
    elif isinstance(path_or_dict, dict):
        raw = path_or_dict
    else:
        source = str(path_or_dict)
        path = Path(path_or_dict)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    raw = _deep_copy(raw)
    for item in overrides:
        _apply_override(raw, item)
    config = _build(Config, raw, "")
    config.source = source
    return config


def _deep_copy(value):
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _apply_override(raw, item):
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
    node[parts[-1]] = value
