"""Configs: YAML (safe load only) into dataclasses, every value checked against its declared type.

A config file has four sections, each a dataclass below. An unknown key anywhere fails with a `ConfigError` naming
the key and the valid ones, so a typo never silently falls back to a default. Values are validated, never coerced:
a bool takes only YAML `true`/`false` (the string "false" is an error, not True), a number refuses strings, bools,
NaN and infinities, a list checks its length and elements, a choice lists the valid ones, and ranges are declared
beside each field (`epochs >= 1`, `learning_rate > 0`). Every error is one line naming the key, and the file (or the
`--set` override) it came from. `--set section.key=value` overrides are parsed as YAML scalars and validated the
same way (`--set train.epochs=3`, `--set data.options.num_images=64`, `--set data.val_split=` is null).

Paths: the input files a config file names (data.path, model.backbone_weights, train.proposals) are relative to that
file's folder, so a config works from any directory; paths given by `--set` are relative to the current directory,
and so are outputs (train.output_dir, export.out_dir).

YAML is read as YAML 1.2 reads numbers (`1e-3` is a float, not the string YAML 1.1 makes of it); an empty file, a
top level that is not a mapping and a key given twice in one mapping are refused.

    model:  {name: classloc, num_classes: 3, image_size: [128, 128], max_detections: 1, args: {...}}
    data:   {format: shapes, path: null, train_split: train, val_split: val, options: {...}, augment: {...}}
    train:  {epochs: 10, batch_size: 32, learning_rate: 1e-3, ...}
    export: {name: classloc_shapes, formats: [saved_model, tflite], quantize: null}
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Literal, Optional

import yaml

from kdet.errors import ConfigError


# ---------------------------------------------------------------- rules that annotate a declared type
def _number(bound):
    return str(int(bound)) if float(bound).is_integer() else str(bound)


@dataclasses.dataclass(frozen=True)
class Bound:
    """A range rule on a number: `value <op> bound`, op one of ">=", "<=", ">"."""
    op: str
    bound: float

    def holds(self, value):
        return {">=": value >= self.bound, "<=": value <= self.bound, ">": value > self.bound}[self.op]

    def __str__(self):
        return f"{self.op} {_number(self.bound)}"


def AtLeast(bound):  # noqa: N802  (reads like a type in annotations)
    return Bound(">=", bound)


def AtMost(bound):  # noqa: N802
    return Bound("<=", bound)


def Above(bound):  # noqa: N802
    return Bound(">", bound)


@dataclasses.dataclass(frozen=True)
class Length:
    """A list of exactly `exact` elements, or of at least `minimum`."""
    exact: Optional[int] = None
    minimum: int = 0

    def holds(self, value):
        return len(value) == self.exact if self.exact is not None else len(value) >= self.minimum

    def __str__(self):
        return f"of {self.exact}" if self.exact is not None else f"of at least {self.minimum}"


@dataclasses.dataclass(frozen=True)
class NonEmpty:
    def holds(self, value):
        return value != ""

    def __str__(self):
        return "non-empty"


@dataclasses.dataclass(frozen=True)
class Ascending:
    """A [min, max] pair with min <= max."""

    def holds(self, value):
        return all(a <= b for a, b in itertools.pairwise(value))

    def __str__(self):
        return "in order [min, max]"


PositiveInt = Annotated[int, AtLeast(1)]
NonNegativeInt = Annotated[int, AtLeast(0)]
PositiveFloat = Annotated[float, Above(0)]
NonNegativeFloat = Annotated[float, AtLeast(0)]
Text = Annotated[str, NonEmpty()]


# ---------------------------------------------------------------- the sections
@dataclasses.dataclass
class ModelConfig:
    name: Text = "classloc"            # a key of kdet.models.MODELS
    num_classes: PositiveInt = 3
    image_size: Annotated[list[PositiveInt], Length(2)] = dataclasses.field(  # [height, width]
        default_factory=lambda: [128, 128])
    max_detections: PositiveInt = 100
    args: dict = dataclasses.field(default_factory=dict)  # extra constructor arguments of the model class
    backbone_weights: typing.Optional[Text] = None  # initial backbone weights: a local .weights.h5 or torchvision .pth


@dataclasses.dataclass
class AugmentConfig:
    flip: bool = True                  # random horizontal flip (boxes, masks follow)
    scale_jitter: Annotated[list[PositiveFloat], Length(2), Ascending()] = dataclasses.field(  # [min, max] zoom,
        default_factory=lambda: [1.0, 1.0])                                                  # then crop/pad
    color_jitter: NonNegativeFloat = 0.0  # strength of brightness/contrast/saturation jitter (0 = off)
    ssd: bool = False                  # SSD's photometric distortion, expand, min-IoU crop and flip (boxes only)
    elastic: NonNegativeFloat = 0.0    # U-Net's elastic deformation: sigma in px on a 3x3 grid (paper: 10; 0 = off)


@dataclasses.dataclass
class DataConfig:
    format: Literal["shapes", "coco", "voc", "yolo", "tfrecord", "label_image"] = "shapes"
    path: Optional[str] = None         # dataset root / annotation file / dataset yaml (relative to the config file)
    # Split names. null = every image of the dataset (a VOC folder without ImageSets lists); "" = no such split
    # (val_split: "" trains without validation).
    train_split: Optional[str] = "train"
    val_split: Optional[str] = "val"
    test_split: Optional[str] = "test"
    options: dict = dataclasses.field(default_factory=dict)  # reader options, e.g. shapes: num_images, max_objects
    resize: Literal["stretch", "letterbox"] = "stretch"  # letterbox: top-left, keeps aspect ratio
    strict: bool = False               # raise on the first bad record instead of counting and skipping it
    max_eval_images: Optional[PositiveInt] = None  # evaluate on at most this many images of the val / test split
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)


@dataclasses.dataclass
class TrainConfig:
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 16
    learning_rate: PositiveFloat = 1e-3
    optimizer: Literal["adam", "sgd", "adamw"] = "adam"
    weight_decay: NonNegativeFloat = 0.0
    seed: Annotated[int, AtLeast(0), AtMost(2 ** 32 - 1)] = 0  # numpy's seed range
    mixed_precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    strategy: Literal["none", "mirrored", "multi_worker"] = "none"
    eval_every: NonNegativeInt = 0     # run COCO/VOC evaluation on the val split every N epochs (0 = off)
    eval_metric: Literal["coco", "voc"] = "coco"
    output_dir: Text = "runs/default"  # checkpoints, history, TensorBoard logs
    steps_per_epoch: Optional[PositiveInt] = None  # null = one pass over the data
    budget_seconds: Optional[PositiveFloat] = None  # stop training once this much time has been used (null = no limit)
    budget_clock: Literal["cpu", "wall"] = "cpu"  # what budget_seconds counts: process CPU time or wall time
    schedule: Literal["joint", "alternating", "fast_rcnn"] = "joint"  # two-stage detectors: one fit, the paper's
    #                                   4-step alternation, or the second stage alone on fixed proposals
    proposals: Optional[Text] = None   # fast_rcnn: JSON file of the proposal boxes
    log_every_steps: NonNegativeInt = 10  # TensorBoard: training loss and learning rate every N steps (0 = off)
    log_images: NonNegativeInt = 3     # TensorBoard: validation images drawn with the predictions each epoch (0 = off)


@dataclasses.dataclass
class ExportConfig:
    name: Text = "model"
    out_dir: Text = "saved_models"
    formats: Annotated[list[Literal["saved_model", "tflite", "onnx"]], Length(minimum=1)] = dataclasses.field(
        default_factory=lambda: ["saved_model", "tflite"])
    quantize: Optional[Literal["fp16", "int8"]] = None


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    source: Optional[str] = None       # the YAML file it came from (not a YAML key)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


# ---------------------------------------------------------------- validation
def _fail(key, message, name_key=True):
    error = ConfigError(f"{key}: {message}" if key and name_key else message)
    error.key = key  # which value was wrong: load_config names the file or the --set override it came from
    return error


def _describe(value):
    """How a wrong value is shown in a message: the YAML reader's view of it (the string 'false', null, ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}: {list(value)}"
    return repr(value)


def _expected(hint):
    """What a declared type accepts, in words: 'an integer >= 1', 'null or a string', 'one of a, b'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        base, rules = args[0], hint.__metadata__
        if typing.get_origin(base) is list:
            length = next((f" {r}" for r in rules if isinstance(r, Length)), "")
            extra = "".join(f", {r}" for r in rules if not isinstance(r, Length))
            return f"a list{length} values, each {_expected(typing.get_args(base)[0])}{extra}"
        if base is str and any(isinstance(r, NonEmpty) for r in rules):
            return "a non-empty string"
        return f"{_expected(base)} {' and '.join(str(r) for r in rules)}"
    if origin is typing.Union:
        return "null or " + _expected(next(a for a in args if a is not type(None)))
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is list:
        return f"a list ({_expected(args[0])})"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
            dict: "a mapping"}[hint]


def _check(value, hint, key):
    """`value` if it is what `hint` declares (ints widened to float, integral floats narrowed to int); else raise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    expected = _expected(hint)
    if origin in (typing.Union, Annotated):  # Optional[X] / X with rules: the message names the whole type
        try:
            if origin is typing.Union:
                return None if value is None else _check(value, next(a for a in args if a is not type(None)), key)
            checked = _check(value, args[0], key)
        except ConfigError as error:
            if getattr(error, "key", None) != key:  # an element of a list: its own message
                raise
            raise _fail(key, f"expected {expected}, got {_describe(value)}") from None
        if not all(rule.holds(checked) for rule in hint.__metadata__):
            raise _fail(key, f"expected {expected}, got {_describe(value)}")
        return checked
    if origin is Literal:
        if not isinstance(value, str) or value not in args:
            raise _fail(key, f"expected {expected}, got {_describe(value)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _fail(key, f"expected {expected}, got {_describe(value)}")
        return [_check(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, numbers.Real) and not isinstance(value, bool):
        if isinstance(value, numbers.Integral):
            return int(value)
        if math.isfinite(value) and float(value).is_integer():
            return int(value)
    if hint is float and isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if hint is dict and isinstance(value, dict):
        return value
    if hint is dict and value is None:  # an `args:` line with nothing under it
        return {}
    raise _fail(key, f"expected {expected}, got {_describe(value)}")


def _build(cls, values, where):
    """Make dataclass `cls` from a dict, rejecting unknown keys and wrong values (the message names the dotted key)."""
    if values is None:  # a section written as `train:` with nothing under it
        values = {}
    if not isinstance(values, dict):
        raise _fail(where, f"expected a mapping, got {_describe(values)}")
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    unknown = sorted(map(str, set(values) - set(fields)))
    if unknown:
        raise _fail(_join(where, unknown[0]), f"unknown config key '{_join(where, unknown[0])}'; valid keys"
                                              f"{' of ' + where if where else ''}: {', '.join(fields)}", name_key=False)
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, _join(where, name))
        else:
            kwargs[name] = _check(value, hint, _join(where, name))
    return cls(**kwargs)


def _join(where, name):
    return f"{where}.{name}" if where else name


# ---------------------------------------------------------------- reading YAML
class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: `1e-3` and `1E5` are numbers (YAML 1.1 makes strings of them)."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."))


def _duplicate_keys(node, where=""):
    """Yield (dotted key, line, first line) for every key given twice in one mapping of a composed YAML node."""
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if name is not None and name in seen:
                yield _join(where, name), line, seen[name]
            elif name is not None:
                seen[name] = line
            yield from _duplicate_keys(value_node, _join(where, str(name)))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{where}[{i}]")


def parse_yaml(text, name):
    """YAML text -> Python values (YAML 1.2 numbers); a key given twice in one mapping is an error naming it and
    its line. `name` (the file, or the --set item) starts every message."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        for key, line, first in _duplicate_keys(node):
            raise ConfigError(f"{name}: duplicate key '{key}' at line {line} (first given at line {first})")
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as error:
        raise ConfigError(f"{name}: not valid YAML ({str(error).splitlines()[0]})") from None
    finally:
        loader.dispose()


def read_config_file(path):
    """A config YAML file -> its mapping of sections. Refuses a missing, empty or non-mapping file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = parse_yaml(path.read_text(), path)
    if raw is None:
        raise ConfigError(f"{path}: config is empty (expected the sections model, data, train, export)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, train, export), "
                          f"got {_describe(raw)}")
    return raw


def load_config(path_or_dict, overrides=()) -> Config:
    """A YAML path (or a dict, or a Config) plus `key=value` overrides -> a validated `Config`."""
    source = None
    if isinstance(path_or_dict, Config):
        raw = path_or_dict.to_dict()
        source = path_or_dict.source
    elif isinstance(path_or_dict, dict):
        raw = path_or_dict
    else:
        source = str(path_or_dict)
        raw = read_config_file(path_or_dict)
    raw = _deep_copy(raw)
    overridden = {}
    for item in overrides:
        overridden[_apply_override(raw, item)] = item
    try:
        config = _build(Config, raw, "")
    except ConfigError as error:
        key = getattr(error, "key", None) or ""
        item = next((item for k, item in overridden.items() if _within(key, k) or _within(k, key)), None)
        if item is not None:
            raise ConfigError(f"{error} (from --set {item})") from None
        raise ConfigError(f"{source}: {error}" if source else str(error)) from None
    config.source = source
    if source is not None and not isinstance(path_or_dict, Config):
        _resolve_paths(config, Path(source).parent, overridden)
    return config


# Input files a config names: relative to the config file's folder when written in the file (so a config works from
# any directory), relative to the current directory when given by --set (typed where the command runs). Outputs
# (train.output_dir, export.out_dir) stay relative to the current directory, like any tool's output.
CONFIG_RELATIVE_PATHS = ("data.path", "model.backbone_weights", "train.proposals")


def _resolve_paths(config, folder: Path, overridden):
    for key in CONFIG_RELATIVE_PATHS:
        if any(_within(key, k) for k in overridden):
            continue
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is not None and not Path(value).is_absolute():
            setattr(getattr(config, section), name, os.path.normpath(folder / value))


def _within(key, section):
    """Is dotted `key` the key `section` or a part of it ('train.epochs' is within 'train', 'a.b[0]' within 'a.b')?"""
    return key == section or key.startswith((section + ".", section + "["))


def _deep_copy(value):
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _apply_override(raw, item):
    """Set `section.key=value` (value parsed as YAML) in the raw dict; returns the dotted key."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    try:
        value = parse_yaml(text, f"--set {item}")
    except ConfigError as error:
        if "duplicate key" in str(error):
            raise
        value = text  # not YAML (e.g. a path with ': '): the text itself
    node = raw
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
    node[parts[-1]] = value
    return key
