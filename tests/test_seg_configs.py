"""The segmentation configs on real data: a VOC folder without split lists (split null), the nuclei label image as
a `label_image` dataset (training tiles vs the held-out tile), and configs/fcn8s_voc3.yaml / unet_nuclei.yaml."""
import re
from pathlib import Path

import numpy as np
import pytest

from kdet.api import build_model, load_split
from kdet.config import load_config
from kdet.data.images import read_segmentation
from kdet.data.io import load_dataset, write_dataset
from kdet.data.label_image import read_intensity_image, read_label_image
from kdet.errors import ConfigError, DataError
from kdet.models.base import DataNeeds

REPO = Path(__file__).resolve().parents[1]
HOLDOUT = (320, 0, 512, 192)  # y0, x0, y1, x1: the configs' held-out bottom-left 192 x 192


@pytest.fixture(scope="module")
def voc3(shared_data):
    return shared_data / "labelme_voc3" / "voc"


@pytest.fixture(scope="module")
def nuclei(shared_data):
    return shared_data / "stardist_nuclei"


@pytest.fixture(scope="module")
def nuclei_splits(nuclei):
    options = dict(tile_size=128, stride=64, holdout=list(HOLDOUT))
    return (load_dataset("label_image", nuclei, split="train", **options),
            load_dataset("label_image", nuclei, split="test", **options))


def _configs(shared_data, name):
    """A repo config with its data.path under `shared_data` (the configs name ../../shared/data relative to configs/,
    which load_config resolves to REPO.parent / "shared/data"; KDET_SHARED_DATA may put it elsewhere)."""
    config = load_config(REPO / "configs" / name)
    config.data.path = str(shared_data / Path(config.data.path).relative_to(REPO.parent / "shared" / "data"))
    return config


# ---------------------------------------------------------------- VOC without ImageSets lists
def test_voc_split_null_reads_every_annotated_image(voc3):
    dataset = load_dataset("voc", voc3, split=None, with_segmentation=True, verbose=False)
    stems = sorted(p.stem for p in (voc3 / "Annotations").glob("*.xml"))
    assert len(stems) == 3 and sorted(Path(r.path).stem for r in dataset.records) == stems
    assert len(dataset.class_names) == 20 and dataset.report.skipped_images == 0 and not dataset.report.problems
    ignored = 0
    for record in dataset.records:
        assert record.segmentation_path is not None and record.masks is not None and len(record.masks) > 0
        mask = read_segmentation(record.segmentation_path)
        assert mask.shape == (record.height, record.width)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(21)) | {255}  # VOC ids, 255 kept as ignore (not wrapped, not a class)
        ignored += int((mask == 255).sum())
    assert ignored > 0  # two of the three PNGs draw 255 borders


def test_voc_named_split_without_its_list_is_a_data_error_naming_the_file(voc3):
    with pytest.raises(DataError, match=re.escape(str(Path("ImageSets") / "Main" / "train.txt"))):
        load_dataset("voc", voc3, split="train", verbose=False)


def test_split_null_is_refused_where_the_format_has_no_whole_set(nuclei):
    for format, path in (("shapes", None), ("label_image", nuclei)):
        with pytest.raises(ConfigError, match="split null"):
            load_dataset(format, path, split=None)


# ---------------------------------------------------------------- label_image (nuclei tiles)
def test_label_image_train_tiles_and_held_out_tile(nuclei, nuclei_splits):
    train, test = nuclei_splits
    image, labels = read_intensity_image(nuclei / "img2d.tif"), read_label_image(nuclei / "mask2d.tif")
    y0, x0, y1, x1 = HOLDOUT
    # Reference grid: 0, 64, ..., 384 on both axes (384 + 128 = 512 ends at the border), minus tiles touching the box.
    grid = [(ty, tx) for ty in range(0, 385, 64) for tx in range(0, 385, 64)
            if not (ty < y1 and ty + 128 > y0 and tx < x1 and tx + 128 > x0)]
    assert len(train) == len(grid) == 40 and len(test) == 1
    assert train.class_names == test.class_names == ["nucleus"]
    covered = np.zeros(labels.shape, bool)
    for record in train.records:
        ty, tx = (int(v) for v in re.search(r"\[(\d+):(\d+)\]$", record.source).groups())
        assert (ty, tx) in grid
        np.testing.assert_array_equal(record.image, image[ty:ty + 128, tx:tx + 128])
        covered[ty:ty + 128, tx:tx + 128] = True
    assert not covered[y0:y1, x0:x1].any()  # no training pixel inside the held-out box
    held = test.records[0]
    np.testing.assert_array_equal(held.image, image[y0:y1, x0:x1])
    ids = np.unique(labels[y0:y1, x0:x1])
    assert len(held.labels) == len(ids[ids > 0]) == 27
    assert held.segmentation.shape == (192, 192) and set(np.unique(held.segmentation)) == {0, 1}


def test_label_image_unknown_option_or_split_is_a_config_error(nuclei):
    with pytest.raises(ConfigError, match="tile_sise"):
        load_dataset("label_image", nuclei, split="train", tile_sise=128)
    with pytest.raises(ConfigError, match="unknown split 'holdout'"):
        load_dataset("label_image", nuclei, split="holdout")
    with pytest.raises(DataError, match="missing.tif"):
        load_dataset("label_image", nuclei, split="test", labels="missing.tif")


def test_label_image_is_not_a_writable_format(nuclei_splits, tmp_path):
    with pytest.raises(ConfigError, match="read-only"):
        write_dataset(nuclei_splits[1], "label_image", tmp_path)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- configs
def test_split_keys_take_null_and_reject_other_types():
    config = load_config({"data": {"format": "voc", "path": "x"}}, ["data.train_split=null", "data.val_split="])
    assert config.data.train_split is None and config.data.val_split is None  # "--set key=" is YAML null too
    config = load_config({"data": {"val_split": ""}})
    assert config.data.val_split == "" and config.data.test_split == "test"
    with pytest.raises(ConfigError, match="data.test_split"):
        load_config({"data": {"test_split": 3}})


def test_fcn8s_voc3_config_loads_its_data_and_builds(shared_data):
    config = _configs(shared_data, "fcn8s_voc3.yaml")
    assert config.data.train_split is None and config.data.test_split is None and config.data.val_split == ""
    assert config.train.output_dir.startswith("runs/")
    train = load_split(config, "train")  # also checks model.num_classes against the data's 20 classes
    assert len(train) == 3 and all(r.segmentation_path for r in train.records)
    with pytest.raises(ConfigError, match="data.val_split is empty"):
        load_split(config, "val")
    model = build_model(config)
    assert model.task == "semantic" and model.num_mask_classes == 21 and model.variant == "8s"


def test_unet_nuclei_config_loads_its_data_and_builds(shared_data):
    config = _configs(shared_data, "unet_nuclei.yaml")
    assert config.data.format == "label_image" and config.train.output_dir.startswith("runs/")
    assert len(load_split(config, "train")) == 40
    val = load_split(config, "val")
    assert len(val) == 1 and (val.records[0].height, val.records[0].width) == (192, 192)
    model = build_model(config)
    assert model.task == "semantic" and model.num_mask_classes == 2
    assert model.class_weights == "median"
    assert model.data_needs == DataNeeds(semantic=True, instance_masks=True, adapt=True)
