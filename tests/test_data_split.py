"""Own-data layouts (issue 17 item 7): VOC folder names, format detection, `kdet data split`, config-relative paths,
`--set data.train_split=null`, and converted datasets that still read after being moved."""
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from kdet.cli import main
from kdet.config import load_config
from kdet.data.detect import detect_format
from kdet.data.io import load_dataset, write_dataset
from kdet.data.shapes import make_shapes
from kdet.data.split import assign_splits, split_dataset
from kdet.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def labelimg_folder(root, num_images=12, seed=0):
    """A labelImg-style VOC folder: root/images/*.png + root/annotations/*.xml, no ImageSets, no class_names.txt."""
    write_dataset(make_shapes(num_images=num_images, seed=seed, image_size=(48, 48)), "voc", root / "tmp", split="all")
    shutil.move(root / "tmp" / "JPEGImages", root / "images")
    shutil.move(root / "tmp" / "Annotations", root / "annotations")
    shutil.rmtree(root / "tmp")
    return root


@pytest.fixture(scope="module")
def shapes12():
    return make_shapes(num_images=12, seed=0, image_size=(48, 48))


# ---------------------------------------------------------------- stratification
def test_assign_splits_by_rarest_class():
    # class 2 is in 2 images, class 1 in 4, class 0 in 8; an image's stratum is its rarest class
    labels = [[0]] * 4 + [[0, 1]] * 2 + [[1]] * 2 + [[0, 2], [2]] + [[0], [0]] + [[]] * 2
    assigned = assign_splits(labels, (0.5, 0.5), seed=3)
    stratum = [2 if 2 in x else 1 if 1 in x else 0 if x else -1 for x in labels]
    for s in (-1, 0, 1, 2):  # every stratum of even size is halved exactly
        members = [a for a, t in zip(assigned, stratum) if t == s]
        assert Counter(members) == Counter({0: len(members) // 2, 1: len(members) // 2}), s
    assert np.array_equal(assigned, assign_splits(labels, (0.5, 0.5), seed=3))  # seeded
    assert not all(np.array_equal(assigned, assign_splits(labels, (0.5, 0.5), seed=s)) for s in range(4, 9))


def test_assign_splits_leftovers_do_not_pile_up_in_train():
    # 10 strata of 1 image at 0.8 / 0.1 / 0.1: floor gives every split 0, the leftovers follow the shares
    assigned = assign_splits([[c] for c in range(10)], (0.8, 0.1, 0.1), seed=0)
    assert np.bincount(assigned, minlength=3).tolist() == [8, 1, 1]
    with pytest.raises(ConfigError, match="sum to 1"):
        assign_splits([[0]], (0.8, 0.1))


# ---------------------------------------------------------------- VOC folder names and detection
def test_voc_images_dir_and_annotations_dir(tmp_path, shapes12):
    root = labelimg_folder(tmp_path / "mine")
    dataset = load_dataset("voc", root, split=None, images_dir="images", annotations_dir="annotations")
    assert len(dataset) == 12 and dataset.class_names == ["circle", "square", "triangle"]
    for record, original in zip(dataset.records, shapes12.records):
        np.testing.assert_allclose(record.boxes, original.boxes, atol=1e-6)
        assert Path(record.path).parent == root / "images"
    with pytest.raises(ConfigError, match="images_dir = '../x' contains '..'"):
        load_dataset("voc", root, split=None, images_dir="../x", annotations_dir="annotations")


@pytest.mark.parametrize("layout, expected", [
    ("labelimg", ("voc", {"annotations_dir": "annotations", "images_dir": "images"})),
    ("flat", ("voc", {"annotations_dir": ".", "images_dir": "."})),
    ("voc", ("voc", {})), ("coco", ("coco", {})), ("coco_file", ("coco", {})), ("yolo", ("yolo", {})),
    ("tfrecord", ("tfrecord", {}))])
def test_detect_format(tmp_path, shapes12, layout, expected):
    small = type(shapes12)(records=shapes12.records[:3], class_names=shapes12.class_names)
    if layout == "labelimg":
        path = labelimg_folder(tmp_path / "d", num_images=3)
    elif layout == "flat":
        path = labelimg_folder(tmp_path / "d", num_images=3)
        for f in [*(path / "images").iterdir(), *(path / "annotations").iterdir()]:
            shutil.move(f, path / f.name)
    elif layout == "coco_file":
        path = write_dataset(small, "coco", tmp_path / "d" / "labels.json")
    else:
        path = tmp_path / "d"
        write_dataset(small, layout, path)
    found = detect_format(path)
    assert (found.format, found.options) == expected
    assert len(load_dataset(found.format, found.path, split=None if layout != "yolo" else "train",
                            **found.options)) == 3


def test_data_check_names_the_detected_format(tmp_path, capsys):
    root = labelimg_folder(tmp_path / "mine")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "detected voc: a folder of VOC xml files in annotations/ with images in images/" in out
    assert "images: 12 (0 without boxes)" in out
    assert main(["data", "check", str(tmp_path / "nothing")]) == 2
    assert "dataset not found" in capsys.readouterr().err


# ---------------------------------------------------------------- kdet data split, read back by the readers
def _split_counts(out):
    return {line.split()[0]: [int(v) for v in line.split()[1:]] for line in out.splitlines()
            if line.split() and line.split()[0] in ("images", "circle", "square", "triangle")}


def test_split_voc_reads_back_through_a_config(tmp_path, capsys):
    root = labelimg_folder(tmp_path / "mine")
    assert main(["data", "split", str(root), "--fractions", "0.5", "0.25", "0.25", "--seed", "1"]) == 0
    counts = _split_counts(capsys.readouterr().out)
    config = tmp_path / "run.yaml"
    config.write_text("model: {num_classes: 3}\ndata:\n  format: voc\n  path: mine\n"
                      "  options: {images_dir: images, annotations_dir: annotations}\n")
    seen = []
    for column, split in enumerate(["train", "val", "test"]):
        dataset = load_dataset("voc", root, split=split, images_dir="images", annotations_dir="annotations")
        assert len(dataset) == counts["images"][column]
        for label, name in enumerate(dataset.class_names):
            assert sum(int((r.labels == label).sum()) for r in dataset.records) == counts[name][column]
        seen += [r.path for r in dataset.records]
    assert sorted(seen) == sorted(str(p) for p in (root / "images").iterdir())  # each image in one split
    assert counts["images"] == [6, 3, 3]
    # data.path in a file is relative to the file's folder: the same lists from any current directory
    from kdet.build import load_split
    assert len(load_split(load_config(config), "val")) == 3
    assert len(load_split(load_config(config, ["data.train_split=null"]), "train")) == 12
    capsys.readouterr()
    assert main(["data", "check", "--config", str(config), "--set", "data.train_split=null"]) == 0  # from the CLI
    assert "images: 12 (0 without boxes)" in capsys.readouterr().out


def test_split_coco_and_yolo(tmp_path, shapes12):
    coco_json = write_dataset(shapes12, "coco", tmp_path / "coco" / "all.json")
    result = split_dataset("coco", coco_json, fractions=(0.5, 0.5, 0.0), seed=0)
    sizes = [len(load_dataset("coco", tmp_path / "coco", split=s)) for s in ("train", "val")]
    assert sizes == [result["splits"]["train"]["images"], result["splits"]["val"]["images"]] == [6, 6]
    assert json.loads((tmp_path / "coco" / "test.json").read_text())["images"] == []
    write_dataset(shapes12, "yolo", tmp_path / "yolo", split="train")
    result = split_dataset("yolo", tmp_path / "yolo", out=tmp_path / "lists", fractions=(0.75, 0.25), seed=0,
                           names=("train", "val"))
    assert yaml.safe_load((tmp_path / "lists" / "data.yaml").read_text())["val"] == "val.txt"
    val = load_dataset("yolo", tmp_path / "lists", split="val")
    assert len(val) == result["splits"]["val"]["images"] == 3
    assert sum(len(r.labels) for r in val.records) == sum(result["splits"]["val"]["boxes_per_class"].values())


# ---------------------------------------------------------------- paths: configs, --set, moved outputs
def test_config_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    config = tmp_path / "cfg" / "run.yaml"
    config.write_text("data: {format: voc, path: ../data/voc}\nmodel: {backbone_weights: w.pth}\n"
                      "train: {output_dir: runs/x}\n")
    monkeypatch.chdir(tmp_path / "cfg")
    loaded = load_config("run.yaml")
    assert loaded.data.path == "../data/voc" and loaded.model.backbone_weights == "w.pth"
    monkeypatch.chdir(tmp_path)
    loaded = load_config("cfg/run.yaml", ["model.backbone_weights=here.pth"])
    assert loaded.data.path == "data/voc" and loaded.model.backbone_weights == "here.pth"  # --set: the cwd
    assert loaded.train.output_dir == "runs/x"  # outputs: the cwd
    assert load_config(str(config)).data.path == str(tmp_path / "data" / "voc")
    assert load_config({"data": {"path": "rel"}}).data.path == "rel"  # a dict has no folder


def test_every_repo_config_finds_its_data(shared_data, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not the repo root: the paths follow the config file
    for config in sorted((REPO / "configs").glob("*.yaml")):
        path = load_config(config).data.path
        if path is not None:
            relative = Path(path).relative_to(REPO.parent / "shared" / "data")  # under ../shared/data of the repo
            if (shared_data / relative.parts[0]).exists():  # (full COCO is not on this machine)
                assert (shared_data / relative).exists(), f"{config.name}: data.path {path}"


@pytest.mark.parametrize("to", ["coco", "voc", "yolo", "tfrecord"])
def test_converted_dataset_reads_after_the_folder_moves(tmp_path, capsys, to):
    root = labelimg_folder(tmp_path / "mine", num_images=4)
    assert main(["data", "convert", str(root), "--to", to, "--out", str(tmp_path / "out")]) == 0
    assert "detected voc" in capsys.readouterr().out
    dataset = load_dataset("voc", root, split=None, images_dir="images", annotations_dir="annotations")
    shutil.move(tmp_path / "out", tmp_path / "moved")
    shutil.rmtree(root)  # nothing may point back at the source
    moved = load_dataset(to, tmp_path / "moved", split="all")
    assert len(moved) == 4
    for a, b in zip(moved.records, dataset.records):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
