import dataclasses
import typing
from pathlib import Path

import pytest

from kdet.config import Config, load_config
from kdet.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def _error(raw, overrides=()):
    with pytest.raises(ConfigError) as error:
        load_config(raw, overrides)
    return str(error.value)


def test_defaults_and_overrides_parse_as_yaml():
    config = load_config({"model": {"name": "classloc"}},
                         ["train.epochs=3", "train.learning_rate=1e-3", "data.options.num_images=64",
                          "model.image_size=[64, 80]"])
    assert config.train.epochs == 3
    assert config.train.learning_rate == pytest.approx(1e-3)
    assert config.data.options == {"num_images": 64}
    assert config.model.image_size == [64, 80]


@pytest.mark.parametrize("raw, message", [
    ({"modle": {}}, "unknown config key 'modle'; valid keys: model, data, train, export"),
    ({"train": {"epoch": 1}}, "unknown config key 'train.epoch'"),
    ({"data": {"augment": {"flop": True}}}, "unknown config key 'data.augment.flop'; valid keys of data.augment: flip"),
    # the four below keep their inputs; their messages now read "<key>: expected <what>, got <value>"
    ({"train": {"strategy": "horovod"}},
     "train.strategy: expected one of none, mirrored, multi_worker, got the string 'horovod'"),
    ({"train": {"epochs": "ten"}}, "train.epochs: expected an integer >= 1, got the string 'ten'"),
    ({"train": {"epochs": True}}, "train.epochs: expected an integer >= 1, got the boolean true"),
    ({"model": {"num_classes": None}}, "model.num_classes: expected an integer >= 1, got null"),
    ({"train": []}, "train: expected a mapping"),
])
def test_invalid_configs_name_the_key(raw, message):
    assert message in _error(raw)


@pytest.mark.parametrize("key, value, message", [
    # bools take only YAML booleans: bool("false") was True
    ("data.strict", "false", "data.strict: expected true or false, got the string 'false'"),
    ("data.augment.flip", 0, "data.augment.flip: expected true or false, got 0"),
    ("data.augment.ssd", None, "data.augment.ssd: expected true or false, got null"),
    # ints refuse strings, bools and non-integral floats
    ("train.batch_size", "8", "train.batch_size: expected an integer >= 1, got the string '8'"),
    ("train.batch_size", False, "train.batch_size: expected an integer >= 1, got the boolean false"),
    ("train.batch_size", 2.5, "train.batch_size: expected an integer >= 1, got 2.5"),
    ("train.batch_size", float("inf"), "train.batch_size: expected an integer >= 1, got inf"),
    # floats refuse strings, bools, NaN and infinities: float("1e-3") was accepted from a string
    ("train.learning_rate", "0.001", "train.learning_rate: expected a finite number > 0, got the string '0.001'"),
    ("train.learning_rate", True, "train.learning_rate: expected a finite number > 0, got the boolean true"),
    ("train.learning_rate", float("nan"), "train.learning_rate: expected a finite number > 0, got nan"),
    ("train.weight_decay", float("-inf"), "train.weight_decay: expected a finite number >= 0, got -inf"),
    # ranges
    ("train.epochs", 0, "train.epochs: expected an integer >= 1, got 0"),
    ("train.epochs", -1, "train.epochs: expected an integer >= 1, got -1"),
    ("train.batch_size", 0, "train.batch_size: expected an integer >= 1, got 0"),
    ("train.steps_per_epoch", 0, "train.steps_per_epoch: expected null or an integer >= 1, got 0"),
    ("train.learning_rate", 0, "train.learning_rate: expected a finite number > 0, got 0"),
    ("train.learning_rate", -0.01, "train.learning_rate: expected a finite number > 0, got -0.01"),
    ("train.weight_decay", -1e-4, "train.weight_decay: expected a finite number >= 0, got -0.0001"),
    ("train.eval_every", -1, "train.eval_every: expected an integer >= 0, got -1"),
    ("train.seed", -1, "train.seed: expected an integer >= 0 and <= 4294967295, got -1"),
    ("model.num_classes", 0, "model.num_classes: expected an integer >= 1, got 0"),
    ("model.max_detections", 0, "model.max_detections: expected an integer >= 1, got 0"),
    ("data.max_eval_images", 0, "data.max_eval_images: expected null or an integer >= 1, got 0"),
    ("data.augment.color_jitter", -0.1, "data.augment.color_jitter: expected a finite number >= 0, got -0.1"),
    ("train.output_dir", "", "train.output_dir: expected a non-empty string, got the string ''"),
    # lists check their length and elements
    ("model.image_size", [0, 0], "model.image_size[0]: expected an integer >= 1, got 0"),
    ("model.image_size", [128, "128"], "model.image_size[1]: expected an integer >= 1, got the string '128'"),
    ("model.image_size", [128], ("model.image_size: expected a list of 2 values, each an integer >= 1, got a list "
                                 "of 1: [128]")),
    ("model.image_size", 128, "model.image_size: expected a list of 2 values, each an integer >= 1, got 128"),
    ("data.augment.scale_jitter", [1.2, 0.8], ("data.augment.scale_jitter: expected a list of 2 values, each a "
                                               "finite number > 0, in order [min, max], got a list of 2: [1.2, 0.8]")),
    ("export.formats", ["saved_model", "pb"], ("export.formats[1]: expected one of saved_model, tflite, onnx, "
                                               "got the string 'pb'")),
    ("export.formats", [], "export.formats: expected a list of at least 1 values"),
    # enums list the choices
    ("train.optimizer", "adm", "train.optimizer: expected one of adam, sgd, adamw, got the string 'adm'"),
    ("train.mixed_precision", True, ("train.mixed_precision: expected one of float32, mixed_float16, mixed_bfloat16, "
                                     "got the boolean true")),
    ("data.resize", "crop", "data.resize: expected one of stretch, letterbox, got the string 'crop'"),
    ("data.format", "kitti", "data.format: expected one of shapes, coco, voc, yolo, tfrecord, label_image"),
    ("train.eval_metric", "map", "train.eval_metric: expected one of coco, voc, got the string 'map'"),
    ("export.quantize", "int4", "export.quantize: expected null or one of fp16, int8, got the string 'int4'"),
    # strings refuse numbers
    ("data.test_split", 3, "data.test_split: expected null or a string, got 3"),
    ("model.args", [1], "model.args: expected a mapping, got a list of 1: [1]"),
    # the keys of the training recipe
    ("train.budget_seconds", 0, "train.budget_seconds: expected null or a finite number > 0, got 0"),
    ("train.budget_seconds", "1h", "train.budget_seconds: expected null or a finite number > 0, got the string '1h'"),
    ("train.budget_clock", "gpu", "train.budget_clock: expected one of cpu, wall, got the string 'gpu'"),
    ("train.schedule", "4step", ("train.schedule: expected one of joint, alternating, fast_rcnn, got the string "
                                 "'4step'")),
    ("train.proposals", 7, "train.proposals: expected null or a non-empty string, got 7"),
])
def test_each_value_is_checked_against_its_declared_type(key, value, message):
    section, *path = key.split(".")
    raw = node = {section: {}}
    node = node[section]
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    assert message in _error(raw)


def test_accepted_values_keep_their_types():
    config = load_config({"train": {"epochs": 3.0, "learning_rate": 1, "budget_seconds": 90, "budget_clock": "wall",
                                    "schedule": "fast_rcnn", "proposals": "runs/p.json", "steps_per_epoch": None},
                          "model": {"image_size": (64, 80), "args": None},
                          "data": {"augment": {"scale_jitter": [1, 2], "flip": False}}})
    t = config.train
    assert (t.epochs, type(t.epochs)) == (3, int)  # an integral float is the integer
    assert (t.learning_rate, type(t.learning_rate)) == (1.0, float) and type(t.budget_seconds) is float
    assert (t.budget_clock, t.schedule, t.proposals, t.steps_per_epoch) == ("wall", "fast_rcnn", "runs/p.json", None)
    assert config.model.image_size == [64, 80] and config.model.args == {}
    assert config.data.augment.scale_jitter == [1.0, 2.0] and config.data.augment.flip is False
    defaults = load_config({}).train
    assert (defaults.budget_seconds, defaults.budget_clock, defaults.schedule, defaults.proposals) == \
        (None, "cpu", "joint", None)


def _leaf_keys(cls, where=""):
    for field in dataclasses.fields(cls):
        if field.name == "source":
            continue
        hint = typing.get_type_hints(cls)[field.name]
        key = f"{where}.{field.name}" if where else field.name
        yield from _leaf_keys(hint, key) if dataclasses.is_dataclass(hint) else [key]


@pytest.mark.parametrize("key", list(_leaf_keys(Config)))
def test_no_key_goes_unchecked(key):
    """Every declared key refuses a value of a foreign type (a set here: no YAML reader makes one)."""
    section, *path = key.split(".")
    raw = {section: {}}
    node = raw[section]
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = {1, 2}
    assert _error(raw).startswith(f"{key}: expected ")


def test_overrides_are_yaml_scalars_validated_like_the_file():
    config = load_config({}, ["train.learning_rate=2e-4", "train.mixed_precision=mixed_float16", "data.strict=true",
                              "data.val_split=", "train.budget_seconds=1.5e3"])
    assert config.train.learning_rate == pytest.approx(2e-4) and config.data.strict is True
    assert config.data.val_split is None and config.train.budget_seconds == 1500.0
    assert _error({}, ["train.epochs=-1"]) == ("train.epochs: expected an integer >= 1, got -1 "
                                               "(from --set train.epochs=-1)")
    assert _error({}, ["train.learning_rate=.nan"]).startswith("train.learning_rate: expected a finite number > 0, "
                                                               "got nan (from --set")
    assert _error({}, ["data.strict='false'"]) == ("data.strict: expected true or false, got the string 'false' "
                                                    "(from --set data.strict='false')")
    assert _error({}, ["model.image_size=[0, 0]"]).startswith("model.image_size[0]: expected an integer >= 1")
    assert "(from --set trian.epochs=1)" in _error({}, ["trian.epochs=1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config({}, ["train..epochs=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config({}, ["train.epochs"])


@pytest.mark.parametrize("text, message", [
    ("", "config is empty"),
    ("# nothing but a comment\n\n", "config is empty"),
    ("- model\n- train\n", "the top level must be a mapping of sections (model, data, train, export), got a list"),
    ("classloc\n", "the top level must be a mapping of sections (model, data, train, export), got the string"),
    ("train:\n  epochs: 3\n  batch_size: 2\n  epochs: 30\n", ("duplicate key 'train.epochs' at line 4 (first given "
                                                             "at line 2)")),
    ("train: {epochs: 3}\nmodel: {}\ntrain: {epochs: 30}\n", "duplicate key 'train' at line 3 (first given at line 1)"),
    ("model:\n  args:\n    widths: [8, 16]\n    widths: [8]\n", "duplicate key 'model.args.widths' at line 4"),
    ("a: 1\n---\nb: 2\n", "not valid YAML"),
    ("train:\n  mixed_precision: 'false'\n", ("train.mixed_precision: expected one of float32, mixed_float16, "
                                              "mixed_bfloat16, got the string 'false'")),
    ("train:\n  learning_rate: '1e-3'\n", "train.learning_rate: expected a finite number > 0, got the string '1e-3'"),
    ("train:\n  epochs: -1\n", "train.epochs: expected an integer >= 1, got -1"),
])
def test_bad_files_are_refused_naming_the_file(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    error = _error(path)
    assert error.startswith(f"{path}: ") and message in error, error


def test_yaml_numbers_read_as_yaml_1_2(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  learning_rate: 1e-3\n  weight_decay: 5E-4\n  budget_seconds: 1.2e+3\n"
                    "  epochs: 12\ndata:\n  path: 1e-3x\n")
    config = load_config(path)
    assert config.train.learning_rate == 0.001 and config.train.weight_decay == 0.0005  # strings in YAML 1.1
    assert config.train.budget_seconds == 1200.0 and config.train.epochs == 12 \
        and config.data.path == str(tmp_path / "1e-3x")  # a path in a file: relative to its folder
    assert config.source == str(path)


def test_an_empty_section_takes_its_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name: classloc\ntrain:\n")
    assert load_config(path).train == load_config({}).train


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    config = load_config(path)
    assert load_config(config) == config  # a loaded config is valid again as it stands (round trip)


def test_configs_are_shipped():
    assert len(CONFIGS) >= 20


def test_unknown_model_argument_lists_the_valid_ones():
    from kdet.api import build_model
    with pytest.raises(ConfigError, match="valid arguments: .*widths"):
        build_model({"model": {"name": "classloc", "args": {"widht": 3}}})
    with pytest.raises(ConfigError, match="model.name = 'yolo9000'; choose one of"):
        build_model({"model": {"name": "yolo9000"}})


def test_the_cli_prints_a_bad_value_as_one_line(tmp_path, capsys):
    from kdet.cli import main
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert main(["train", "--config", str(path)]) == 2
    assert capsys.readouterr().err == f"kdet: error: {path}: config is empty (expected the sections model, data, " \
                                      "train, export)\n"
    config = Path(__file__).parents[1] / "configs" / "classloc_shapes.yaml"
    assert main(["train", "--config", str(config), "--set", "train.batch_size=0"]) == 2
    assert capsys.readouterr().err == "kdet: error: train.batch_size: expected an integer >= 1, got 0 " \
                                      "(from --set train.batch_size=0)\n"
