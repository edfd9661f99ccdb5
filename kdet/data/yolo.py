"""YOLO (Ultralytics) layout: a dataset yaml, images/<split>/*, labels/<split>/*.txt with normalised coordinates.

Conventions chosen here:
- The yaml's `path` is the dataset root; empty or missing means the yaml's own directory (what Ultralytics does),
  and a relative `path` is taken relative to the yaml's directory. A split entry (`train`, `val`, `test`) is a
  directory of images, a .txt list of image paths (relative to the list's directory), or a list of either.
- The label file of `.../images/<rest>/x.jpg` is `.../labels/<rest>/x.txt` (the last `images` part swapped).
  A missing or empty label file means an image without objects: valid, not a problem.
- A line `class cx cy w h` (normalised to 0..1) is a box. A line `class x1 y1 x2 y2 x3 y3 ...` (Ultralytics'
  segment format, coco8-seg) is a polygon: its box is the polygon's extent and, with `with_masks`, its mask is the
  polygon rasterised by pycocotools (the rule COCO masks use). With `with_masks`, a box line's mask is its filled box.
- A class id outside `names`, a box of zero width or height, a line that is not numbers, or a wrong count of
  values is reported with the label file and line number, and that object dropped (or DataError with `strict`).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import yaml
from pycocotools import mask as mask_utils

from kdet.data.check import sanitize_with_masks
from kdet.data.images import check_record_image, encode_png, list_images, progress, read_image
from kdet.data.records import DetectionDataset, ReadReport, Record
from kdet.errors import DataError

# Normalised coordinates are stored with 6-8 decimals, so a box that touches the image edge reads back a hair outside
# it (cx - w / 2 = -2e-7). Within this normalised distance of [0, 1] that is rounding, snapped to the edge without a
# report; anything further is an annotation outside the image, clipped and reported.
EDGE_ROUNDING = 1e-5


def _load_yaml(yaml_path: Path) -> dict:
    if not yaml_path.is_file():
        raise DataError(yaml_path, "YOLO dataset yaml not found")
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise DataError(yaml_path, f"not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise DataError(yaml_path, "a YOLO dataset yaml must be a mapping with 'names' and split keys")
    return data


def _class_names(data: dict, yaml_path: Path) -> list:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            by_id = {int(key): str(value) for key, value in names.items()}
        except (TypeError, ValueError):
            raise DataError(yaml_path, "'names' keys must be class ids 0, 1, ...") from None
        missing = [i for i in range(max(by_id, default=-1) + 1) if i not in by_id]
        if missing or min(by_id, default=0) < 0:
            raise DataError(yaml_path, f"'names' must number the classes 0..n-1 without gaps; missing {missing}")
        names = [by_id[i] for i in range(len(by_id))]
    if not isinstance(names, list) or not names:
        raise DataError(yaml_path, "'names' must be a non-empty list or a {id: name} mapping")
    if "nc" in data and data["nc"] != len(names):
        raise DataError(yaml_path, f"'nc' is {data['nc']} but 'names' lists {len(names)} classes")
    return [str(name) for name in names]


def _split_images(data: dict, yaml_path: Path, split: str) -> list:
    root = data.get("path")
    root = yaml_path.parent if not root else (yaml_path.parent / str(root))
    entries = data.get(split)
    if not entries:
        splits = [key for key in ("train", "val", "test") if data.get(key)]
        raise DataError(yaml_path, f"no '{split}' split in the yaml (it has {splits})")
    images = []
    for entry in entries if isinstance(entries, list) else [entries]:
        location = root / str(entry)
        if location.is_dir():
            images.extend(list_images(location))
        elif location.is_file() and location.suffix == ".txt":
            lines = [line.strip() for line in location.read_text(encoding="utf-8").splitlines() if line.strip()]
            images.extend(str((location.parent / line).resolve()) for line in lines)
        else:
            raise DataError(location, f"image directory or list of split '{split}' not found")
    return images


def label_path_for(image_path) -> Path:
    """The label file of an image: the last `images` directory in its path becomes `labels`, suffix `.txt`."""
    parts = list(Path(image_path).parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _snap(normalised) -> np.ndarray:
    """Normalised coordinates within EDGE_ROUNDING outside [0, 1] moved onto the edge."""
    values = np.asarray(normalised, np.float64)
    values = np.where((values < 0) & (values > -EDGE_ROUNDING), 0.0, values)
    return np.where((values > 1) & (values < 1 + EDGE_ROUNDING), 1.0, values)


def _polygon_mask(xy_pixels: list, height: int, width: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([xy_pixels], height, width))).astype(np.uint8)


def _read_labels(label_path: Path, height, width, num_classes, with_masks, report, strict):
    """One label file -> (boxes [N, 4] yxyx px, labels [N], masks [N, H, W] uint8 or None)."""
    boxes, labels, masks = [], [], []
    if not label_path.is_file():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int32), (np.zeros((0, height, width), np.uint8)
                                                                     if with_masks else None)
    for number, line in enumerate(label_path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            values = [float(part) for part in parts]
        except ValueError:
            report.add(label_path, f"line {number} {line.strip()!r} is not numbers: dropped", "box", strict)
            continue
        is_box = len(values) == 5
        if not (is_box or (len(values) >= 7 and len(values) % 2 == 1)):
            report.add(label_path, f"line {number} has {len(values)} values; expected 5 (class cx cy w h) or an "
                                   f"odd number >= 7 (class x1 y1 x2 y2 x3 y3 ...): dropped", "box", strict)
            continue
        if not all(math.isfinite(v) for v in values):
            report.add(label_path, f"line {number} has a non-finite value: dropped", "box", strict)
            continue
        label = values[0]
        if not label.is_integer() or not 0 <= label < num_classes:
            report.add(label_path, f"line {number}: class {parts[0]} is not one of the {num_classes} classes in "
                                   f"names: dropped", "box", strict)
            continue
        if is_box:
            centre_x, centre_y, box_w, box_h = values[1:]
            if box_w <= 0 or box_h <= 0:
                report.add(label_path, f"line {number}: box has zero or negative width or height "
                                       f"(w={parts[3]}, h={parts[4]}): dropped", "box", strict)
                continue
            y0, x0, y1, x1 = _snap([centre_y - box_h / 2, centre_x - box_w / 2,
                                    centre_y + box_h / 2, centre_x + box_w / 2])
            box = [y0 * height, x0 * width, y1 * height, x1 * width]
            polygon = [box[1], box[0], box[3], box[0], box[3], box[2], box[1], box[2]]
        else:
            xs = _snap(values[1::2]) * width
            ys = _snap(values[2::2]) * height
            box = [ys.min(), xs.min(), ys.max(), xs.max()]
            if box[2] <= box[0] or box[3] <= box[1]:
                report.add(label_path, f"line {number}: polygon has zero width or height: dropped", "box", strict)
                continue
            polygon = np.stack([xs, ys], axis=1).reshape(-1).tolist()
        boxes.append(box)
        labels.append(int(label))
        if with_masks:
            masks.append(_polygon_mask(polygon, height, width))
    stacked = (np.stack(masks) if masks else np.zeros((0, height, width), np.uint8)) if with_masks else None
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32), stacked


def read_yolo(yaml_path, split="train", strict=False, with_masks=False, verbose=True) -> DetectionDataset:
    """Read one split of a YOLO dataset described by `yaml_path` (see the module docstring for the conventions).

    Every image is decoded once to catch corrupt files; problems are counted in `dataset.report` with the file and
    line named (or raise DataError with `strict`). image_id is the image's index in the sorted split.
    """
    yaml_path = Path(yaml_path)
    data = _load_yaml(yaml_path)
    class_names = _class_names(data, yaml_path)
    image_paths = _split_images(data, yaml_path, split)
    report = ReadReport()
    records = []
    for index, image_path in enumerate(progress(image_paths, verbose, f"checking {yaml_path.stem}/{split}")):
        size = check_record_image(image_path, None, report, strict)
        if size is None:
            continue
        height, width = size
        label_path = label_path_for(image_path)
        boxes, labels, masks = _read_labels(label_path, height, width, len(class_names), with_masks, report, strict)
        boxes, labels, _, masks = sanitize_with_masks(boxes, labels, None, masks, height, width, len(class_names),
                                                      str(label_path), report, strict)
        records.append(Record(image_id=index, height=height, width=width, boxes=boxes, labels=labels, masks=masks,
                              path=str(image_path)))
    return DetectionDataset(records=records, class_names=class_names, report=report)


def write_yolo(dataset: DetectionDataset, out_dir, split="train") -> None:
    """Write `dataset` as split `split` of a YOLO dataset under `out_dir` (images/<split>, labels/<split>).

    Image files are copied (records in memory are written as PNG named by image_id). data.yaml gets this split
    and the class names, keeping splits written before (write train, then val, into the same directory); it has
    no `path`, so the yaml's directory is the root for kdet and Ultralytics alike. Boxes are written as
    `class cx cy w h` with 8 decimals; instance masks are not written (YOLO keeps them as polygons, and tracing
    a mask's outline needs OpenCV, which kdet does not depend on).
    """
    out_dir = Path(out_dir)
    image_dir, label_dir = out_dir / "images" / split, out_dir / "labels" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    used = set()
    for record in dataset.records:
        stem = Path(record.path).stem if record.path is not None else None
        if stem is not None and stem not in used:
            name = stem
            shutil.copyfile(record.path, image_dir / f"{stem}{Path(record.path).suffix}")
        else:
            name = f"{record.image_id:06d}"
            image = record.image if record.image is not None else read_image(record.path)
            (image_dir / f"{name}.png").write_bytes(encode_png(image))
        used.add(name)
        lines = []
        for (y0, x0, y1, x1), label in zip(record.boxes.tolist(), record.labels.tolist()):
            lines.append(f"{label} {(x0 + x1) / 2 / record.width:.8f} {(y0 + y1) / 2 / record.height:.8f} "
                         f"{(x1 - x0) / record.width:.8f} {(y1 - y0) / record.height:.8f}\n")
        (label_dir / f"{name}.txt").write_text("".join(lines), encoding="utf-8")
    yaml_file = out_dir / "data.yaml"
    data = _load_yaml(yaml_file) if yaml_file.is_file() else {}
    data.pop("path", None)
    data[split] = f"images/{split}"
    data["names"] = {index: name for index, name in enumerate(dataset.class_names)}
    yaml_file.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
