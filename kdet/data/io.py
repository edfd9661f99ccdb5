"""One entry point per direction: `load_dataset(format, path, split)` and `write_dataset(dataset, format, out)`.

What `kdet data check|convert` and the training configs call, so any reader can feed any writer
(e.g. shapes or BCCD to COCO json, YOLO or TFRecord). A directory written by `write_dataset(..., split=s)` is read
back by `load_dataset(format, out, split=s)`:

| format   | path given to load_dataset                                  | write_dataset(out=dir, split=s) writes    |
|----------|-------------------------------------------------------------|-------------------------------------------|
| shapes   | none (generated; split picks a disjoint seed)               | (not writable)                            |
| coco     | the json, or a dir holding s.json,                          | dir/s.json + dir/images/                  |
|          | annotations/instances_s.json or annotations.json            |                                           |
| voc      | the VOC root (Annotations/, JPEGImages/, ImageSets/Main/)   | the same layout, ImageSets/Main/s.txt     |
|          | (other folder names: options images_dir, annotations_dir)   |                                           |
| yolo     | the dataset yaml, or a dir holding data.yaml                | dir/images/s, dir/labels/s, dir/data.yaml |
| tfrecord | a file, a glob, or a dir holding s.tfrecord*                | dir/s.tfrecord + dir/label_map.pbtxt      |
| label_image | a dir holding an image and its instance label image      | (not writable)                            |

label_image (the stardist nuclei crop: img2d.tif + mask2d.tif by default) is cut by `load_label_image_dataset`:
split train = the tiles that avoid the held-out box, val / test = the held-out box as one image.

split=None means every image of the dataset: every xml in Annotations/ (voc, e.g. a folder without ImageSets lists),
annotations.json (coco dir), every *.tfrecord* (tfrecord dir). shapes, yolo and label_image need a named split.
`kdet.data.detect.detect_format(path)` tells the format of a path; `kdet.data.split.split_dataset` writes split lists.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from kdet.data.coco import read_coco, write_coco
from kdet.data.label_image import load_label_image_dataset
from kdet.data.records import DetectionDataset
from kdet.data.shapes import make_shapes
from kdet.data.tfrecord import tfrecord_to_dataset, write_tfrecord
from kdet.data.voc import read_voc, write_voc
from kdet.data.yolo import read_yolo, write_yolo
from kdet.errors import ConfigError, DataError

FORMATS = ("shapes", "coco", "voc", "yolo", "tfrecord", "label_image")
# make_shapes seeds split s with seed * 3 + offset, so train / val / test never share an image for any seed.
SHAPES_SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}
SHAPES_DEFAULT_IMAGES = 1000


def _check_format(format: str):
    if format not in FORMATS:
        raise ConfigError(f"unknown dataset format {format!r}; expected one of {', '.join(FORMATS)}")


def _check_options(function, options: dict, fixed: tuple, format: str):
    allowed = [name for name in inspect.signature(function).parameters if name not in fixed]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for dataset format {format!r}; allowed: {allowed}")


def _first_existing(directory: Path, names, what: str) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise DataError(directory, f"no {what} found (looked for {', '.join(names)})")


def _yolo_yaml(path: Path) -> Path:
    if path.is_file():
        return path
    if (path / "data.yaml").is_file():
        return path / "data.yaml"
    candidates = sorted(path.glob("*.yaml"))
    if len(candidates) != 1:
        raise DataError(path, f"expected data.yaml or exactly one *.yaml, found {[c.name for c in candidates]}")
    return candidates[0]


def _shapes(split, options) -> DetectionDataset:
    if split not in SHAPES_SPLIT_OFFSETS:
        raise ConfigError(f"unknown split {split!r} for the shapes dataset; expected one of "
                          f"{list(SHAPES_SPLIT_OFFSETS)}")
    _check_options(make_shapes, options, (), "shapes")
    options = dict(options)
    options["seed"] = int(options.get("seed", 0)) * len(SHAPES_SPLIT_OFFSETS) + SHAPES_SPLIT_OFFSETS[split]
    options.setdefault("num_images", SHAPES_DEFAULT_IMAGES)
    return make_shapes(**options)


def load_dataset(format: str, path=None, split="train", strict=False, **options) -> DetectionDataset:
    """Read split `split` of the dataset at `path` in `format` (one of FORMATS) as a DetectionDataset.

    split: a split name, or None for every image (see the module docstring for the formats that allow it).
    options go to the reader (e.g. with_masks, class_names, verbose, image_dir; for shapes the arguments of
    `make_shapes`, num_images defaulting to 1000; for label_image image, labels, tile_size, stride, holdout,
    class_name). An unknown format or option is a ConfigError; a path that does not exist is a DataError naming it.
    """
    _check_format(format)
    if split is None and format in ("shapes", "yolo", "label_image"):
        raise ConfigError(f"dataset format {format!r} has no 'every image' split (split null); name the split")
    if format == "shapes":
        return _shapes(split, options)
    if path is None:
        raise ConfigError(f"dataset format {format!r} needs a path")
    path = Path(path)
    if format == "tfrecord":
        _check_options(tfrecord_to_dataset, options, ("path",), format)
        pattern = str(path / f"{split if split is not None else '*'}.tfrecord*") if path.is_dir() else str(path)
        return tfrecord_to_dataset(pattern, **options)
    if not path.exists():
        raise DataError(path, f"{format} dataset not found")
    if format == "coco":
        _check_options(read_coco, options, ("json_path", "strict"), format)
        if path.is_dir():
            names = [f"{split}.json", f"annotations/instances_{split}.json"] if split is not None else []
            path = _first_existing(path, names + ["annotations.json"], "COCO annotation json")
        return read_coco(path, strict=strict, **options)
    if format == "voc":
        _check_options(read_voc, options, ("root", "split", "strict"), format)
        return read_voc(path, split=split, strict=strict, **options)
    if format == "label_image":
        # Tiles of one in-memory image: nothing to skip, so `strict` has no effect.
        _check_options(load_label_image_dataset, options, ("root", "split"), format)
        return load_label_image_dataset(path, split=split, **options)
    _check_options(read_yolo, options, ("yaml_path", "split", "strict"), format)
    return read_yolo(_yolo_yaml(path), split=split, strict=strict, **options)


def write_dataset(dataset: DetectionDataset, format: str, out, split="train") -> Path:
    """Write `dataset` as split `split` in `format` under the directory `out`; returns the main file or directory.

    For coco and tfrecord, `out` may also be the file itself (ending in .json / .tfrecord).
    """
    _check_format(format)
    out = Path(out)
    if format in ("shapes", "label_image"):
        raise ConfigError(f"the {format} format is read-only (generated / cut from one image), a dataset cannot be "
                          "written as it; choose coco, voc, yolo or tfrecord")
    if format == "coco":
        target = out if out.suffix == ".json" else out / f"{split}.json"
        write_coco(dataset, target)
        return target
    if format == "tfrecord":
        target = out if out.suffix == ".tfrecord" else out / f"{split}.tfrecord"
        write_tfrecord(dataset, target)
        return target
    if format == "voc":
        write_voc(dataset, out, split=split)
        return out
    write_yolo(dataset, out, split=split)
    return out / "data.yaml"
