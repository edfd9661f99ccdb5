"""Which dataset format a path holds, for `kdet data check PATH` and `kdet data split`.

    found = detect_format("my_dataset")   # Detected(format="voc", path=..., options={...}, reason="...")

Rules, first match wins:
- a file: `*.json` is COCO, `*.yaml` / `*.yml` a YOLO dataset yaml, a name containing `.tfrecord` TFRecord;
- a folder with `Annotations/` is VOC; with `data.yaml` (or exactly one `*.yaml`) YOLO; with `annotations.json`,
  `annotations/instances_*.json` or exactly one `*.json` COCO; with `*.tfrecord*` files TFRecord;
- a folder whose xml files sit in one sub-folder (labelImg's `images/` + `labels/` or `annotations/`), or beside
  the images, is VOC with `annotations_dir` / `images_dir` set to those folders (`.` = the folder itself).
Anything else is a DataError naming the path and what was looked for.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from kdet.data.images import IMAGE_SUFFIXES
from kdet.errors import DataError


@dataclasses.dataclass
class Detected:
    format: str
    path: Path
    options: dict      # reader options the layout needs (VOC: images_dir / annotations_dir)
    reason: str        # what gave the format away, printed by `kdet data check`


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())


def _voc_folders(root: Path):
    """(annotations_dir, images_dir) of a VOC folder that does not use Annotations/ + JPEGImages/, or None."""
    if any(root.glob("*.xml")) and _has_images(root):
        return ".", "."
    with_xml = sorted(d for d in root.iterdir() if d.is_dir() and any(d.glob("*.xml")))
    if len(with_xml) != 1:
        return None
    annotations = with_xml[0]
    if _has_images(annotations):
        return annotations.name, annotations.name
    with_images = sorted(d for d in root.iterdir() if d.is_dir() and d != annotations and _has_images(d))
    if (root / "JPEGImages").is_dir():
        with_images = [root / "JPEGImages"]
    if len(with_images) == 1:
        return annotations.name, with_images[0].name
    if _has_images(root):
        return annotations.name, "."
    return None


def detect_format(path) -> Detected:
    """The format (and reader options) of the dataset at `path`; see the module docstring for the rules."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "dataset not found")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return Detected("coco", path, {}, "a .json file: COCO annotations")
        if path.suffix.lower() in (".yaml", ".yml"):
            return Detected("yolo", path, {}, "a .yaml file: a YOLO dataset yaml")
        if ".tfrecord" in path.name:
            return Detected("tfrecord", path, {}, "a .tfrecord file")
        raise DataError(path, "not a dataset file kdet knows (a COCO .json, a YOLO .yaml or a .tfrecord)")
    if (path / "Annotations").is_dir():
        images = "JPEGImages" if (path / "JPEGImages").is_dir() else None
        if images is None:
            folders = _voc_folders(path)
            images = folders[1] if folders else "JPEGImages"
        options = {} if images == "JPEGImages" else {"images_dir": images}
        return Detected("voc", path, options, f"a folder with Annotations/ (VOC xml), images in {images}/")
    yamls = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
    if (path / "data.yaml").is_file() or len(yamls) == 1:
        name = "data.yaml" if (path / "data.yaml").is_file() else yamls[0].name
        return Detected("yolo", path, {}, f"a folder with {name}: a YOLO dataset")
    if (path / "annotations.json").is_file() or any((path / "annotations").glob("instances_*.json")):
        return Detected("coco", path, {}, "a folder with COCO annotation json(s)")
    jsons = sorted(path.glob("*.json"))
    if len(jsons) == 1:
        return Detected("coco", jsons[0], {}, f"a folder with one .json ({jsons[0].name}): COCO annotations")
    if any(path.glob("*.tfrecord*")):
        return Detected("tfrecord", path, {}, "a folder with .tfrecord files")
    folders = _voc_folders(path)
    if folders is not None:
        annotations, images = folders
        return Detected("voc", path, {"annotations_dir": annotations, "images_dir": images},
                        f"a folder of VOC xml files in {annotations}/ with images in {images}/")
    raise DataError(path, "no dataset format recognised: looked for Annotations/ or xml files beside images (VOC), "
                          "data.yaml (YOLO), annotations.json or one *.json (COCO), *.tfrecord (TFRecord)")
