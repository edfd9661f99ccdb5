import pytest

from kdet.config import load_config
from kdet.errors import ConfigError


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
    ({"train": {"strategy": "horovod"}}, "train.strategy = 'horovod'; choose one of none, mirrored, multi_worker"),
    ({"train": {"epochs": "ten"}}, "config key 'train.epochs' must be int"),
    ({"train": {"epochs": True}}, "config key 'train.epochs' must be an integer"),
    ({"model": {"num_classes": None}}, "config key 'model.num_classes' may not be null"),
    ({"train": []}, "train: expected a mapping"),
])
def test_invalid_configs_name_the_key(raw, message):
    with pytest.raises(ConfigError) as error:
        load_config(raw)
    assert message in str(error.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config({}, ["train.epochs"])


def test_every_shipped_config_validates():
    from pathlib import Path
    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)


def test_unknown_model_argument_lists_the_valid_ones():
    from kdet.api import build_model
    with pytest.raises(ConfigError, match="valid arguments: .*widths"):
        build_model({"model": {"name": "classloc", "args": {"widht": 3}}})
    with pytest.raises(ConfigError, match="model.name = 'yolo9000'; choose one of"):
        build_model({"model": {"name": "yolo9000"}})
