"""COCO json: read instances (boxes, labels, optional masks) into a DetectionDataset, and write one back.

Conventions chosen here (each one is what a reader of the code would otherwise have to guess):
- bbox [x, y, w, h] (absolute pixels, top-left origin) becomes yxyx [y, x, y + h, x + w].
- Category ids (sparse in COCO: 1..90 for 80 classes) map to contiguous 0-based labels in increasing id order.
  The dataset keeps the COCO id of each label in `dataset.category_ids` (label i <-> category_ids[i]), so
  detections can be written back with their COCO ids for pycocotools. A category named `_background_` or
  `__background__` (labelme2coco and torchvision write one) is not a class: kdet labels never include background.
- iscrowd=1 annotations (one box around a crowd) are kept with `difficult=True`: that is what COCOeval does with
  them (ignore regions: neither a miss nor a false positive), the same meaning as VOC's difficult flag. Training
  code that wants torchvision's behaviour (crowds dropped) drops difficult boxes.
- With `with_masks`, polygons and RLE (compressed or not) become uint8 [N, H, W] instance masks via pycocotools.
  These are held in memory, which suits the small sets kdet trains on, not all of COCO train.
- A file without an "annotations" list (COCO's image-info files) is read as images without objects.
- Refused, naming the file and the key: a non-integer category id (the whole file), an image whose `height` /
  `width` is not a positive integer or whose `file_name` is absolute or contains ".." (it would be read from outside
  the dataset), an annotation that is not an object (each skipped and counted, or raised with `strict`).
"""
from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from kdet.data.check import sanitize_with_masks
from kdet.data.images import check_record_image, encode_png, outside_reason, progress
from kdet.data.records import DetectionDataset, ReadReport, Record
from kdet.errors import DataError

BACKGROUND_NAMES = ("_background_", "__background__")


def _load_json(json_path: Path) -> dict:
    if not json_path.is_file():
        raise DataError(json_path, "COCO annotation file not found")
    text = json_path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise DataError(json_path, "COCO annotation file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(json_path, f"not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise DataError(json_path, "a COCO annotation file must hold a JSON object")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(json_path, f"missing the '{key}' list of a COCO annotation file")
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image_problem(entry) -> str | None:
    """What is wrong with one entry of "images" (its 'file_name', 'height', 'width'), or None."""
    reason = outside_reason(entry["file_name"])
    if reason is not None:
        return f"'file_name' {entry['file_name']!r} {reason}; file names must be relative to the image folder"
    for key in ("height", "width"):
        if key in entry and not (_is_int(entry[key]) and entry[key] > 0):
            return f"'{key}' must be a positive integer, got {'null' if entry[key] is None else repr(entry[key])}"
    return None


def _categories(data: dict, json_path: Path):
    """(class_names, category_ids) in increasing id order, without the background category."""
    categories = []
    for index, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise DataError(json_path, f"categories[{index}] needs an 'id' and a 'name'")
        if not _is_int(category["id"]):
            raise DataError(json_path, f"categories[{index}] 'id' must be an integer, got {category['id']!r}")
        if category["name"] not in BACKGROUND_NAMES:
            categories.append((category["id"], str(category["name"])))
    categories.sort()
    ids = [category_id for category_id, _ in categories]
    if len(set(ids)) != len(ids):
        raise DataError(json_path, f"duplicate category ids in {ids}")
    return [name for _, name in categories], ids


def _annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, or RLE compressed / uncompressed) as uint8 [H, W]."""
    if isinstance(segmentation, list):
        polygons = [list(map(float, polygon)) for polygon in segmentation if len(polygon) >= 6]
        if not polygons:
            raise ValueError("no polygon with at least 3 points")
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError("is neither polygons nor RLE")
    mask = mask_utils.decode(rle)
    if mask.shape != (height, width):
        raise ValueError(f"RLE size {list(mask.shape)} is not the image's {[height, width]}")
    return mask.astype(np.uint8)


def _read_annotations(annotations, label_of, height, width, with_masks, where, report, strict):
    """The annotations of one image -> (boxes [N, 4] yxyx, labels [N], difficult [N], masks [N, H, W] or None)."""
    boxes, labels, difficult, masks = [], [], [], []
    for annotation in annotations:
        name = f"annotation {annotation.get('id', '?')}"
        bbox = annotation.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                and all(isinstance(v, (int, float)) for v in bbox)):
            report.add(where, f"{name}: bbox {bbox!r} is not 4 numbers [x, y, w, h]: dropped", "box", strict)
            continue
        if annotation.get("category_id") not in label_of:
            report.add(where, f"{name}: category_id {annotation.get('category_id')!r} is not in the "
                              f"categories: dropped", "box", strict)
            continue
        if with_masks:
            try:
                masks.append(_annotation_mask(annotation.get("segmentation"), height, width))
            except (ValueError, TypeError, KeyError) as error:
                report.add(where, f"{name}: segmentation {error}: dropped", "box", strict)
                continue
        x, y, w, h = (float(v) for v in bbox)
        boxes.append([y, x, y + h, x + w])
        labels.append(label_of[annotation["category_id"]])
        difficult.append(bool(annotation.get("iscrowd", 0)))
    stacked_masks = np.zeros((len(masks), height, width), np.uint8) if not masks else np.stack(masks)
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32),
            np.asarray(difficult, bool), stacked_masks if with_masks else None)


def read_coco(json_path, image_dir=None, strict=False, with_masks=False, verbose=True) -> DetectionDataset:
    """Read a COCO instances json into a DetectionDataset (see the module docstring for the conventions).

    image_dir: where `file_name` is relative to (default: the json's directory). Every image is decoded once to
    catch corrupt files; a bad image, a size that disagrees with the json, or a bad annotation is counted in
    `dataset.report` with the file named, and skipped (or raises DataError with `strict`).
    Returns the dataset with `dataset.category_ids` set (COCO id of each label).
    """
    json_path = Path(json_path)
    data = _load_json(json_path)
    image_dir = json_path.parent if image_dir is None else Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(image_dir, "COCO image directory not found")
    class_names, category_ids = _categories(data, json_path)
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}
    background_ids = {c.get("id") for c in data["categories"] if c.get("name") in BACKGROUND_NAMES}
    annotations = data.get("annotations") or []
    if not isinstance(annotations, list):
        raise DataError(json_path, "'annotations' must be a list")
    by_image = defaultdict(list)
    report = ReadReport()
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            report.add(json_path, f"annotations[{index}] is not an object (got {json.dumps(annotation)[:40]}): "
                                  f"dropped", "box", strict)
            continue
        if annotation.get("category_id") in background_ids:
            report.add(json_path, f"annotation {annotation.get('id', '?')} is labelled background: dropped",
                       "box", strict)
            continue
        by_image[annotation.get("image_id")].append(annotation)

    records, seen_ids = [], set()
    for index, entry in enumerate(progress(data["images"], verbose, f"checking {json_path.name}")):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or "file_name" not in entry:
            report.add(json_path, f"images[{index}] needs an integer 'id' and a 'file_name': skipped", "image", strict)
            continue
        if entry["id"] in seen_ids:
            report.add(json_path, f"images[{index}] repeats image id {entry['id']}: skipped", "image", strict)
            continue
        seen_ids.add(entry["id"])
        problem = _image_problem(entry)
        if problem is not None:
            report.add(json_path, f"images[{index}] (id {entry['id']}): {problem}: skipped", "image", strict)
            continue
        path = image_dir / entry["file_name"]
        annotated = (entry["height"], entry["width"]) if "height" in entry and "width" in entry else None
        size = check_record_image(path, annotated, report, strict)
        if size is None:
            continue
        height, width = size
        boxes, labels, difficult, masks = _read_annotations(by_image.pop(entry["id"], []), label_of, height, width,
                                                             with_masks, f"{json_path} ({entry['file_name']})",
                                                             report, strict)
        boxes, labels, difficult, masks = sanitize_with_masks(boxes, labels, difficult, masks, height, width,
                                                              len(class_names), str(path), report, strict)
        records.append(Record(image_id=entry["id"], height=height, width=width, boxes=boxes, labels=labels,
                              difficult=difficult, masks=masks, path=str(path)))
    for image_id, orphans in by_image.items():
        for annotation in orphans:
            report.add(json_path, f"annotation {annotation.get('id', '?')} refers to image_id {image_id!r}, "
                                  f"which is not a readable image: dropped", "box", strict)
    dataset = DetectionDataset(records=records, class_names=class_names, report=report)
    dataset.category_ids = category_ids
    return dataset


def _encode_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_coco(dataset: DetectionDataset, json_path) -> None:
    """Write `dataset` as a COCO instances json at `json_path`.

    Records in memory have their image written as `<json dir>/images/<json stem>_<image_id>.png`; records read
    from files under the json's directory keep pointing at them (file_name relative to it, as `read_coco` resolves
    it), other files are copied to `<json dir>/images/<json stem>_<image_id><suffix>` (a file name that leaves the
    json's directory is refused by `read_coco`, and the output still resolves when moved).
    Boxes are written as float xywh, difficult as iscrowd, masks as compressed RLE. Category ids are
    `dataset.category_ids` when the dataset has them, else 1..C (COCO's 1-based convention).
    """
    json_path = Path(json_path)
    out_dir = json_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    category_ids = list(getattr(dataset, "category_ids", None) or range(1, len(dataset.class_names) + 1))
    images, annotations = [], []
    for record in dataset.records:
        inside = record.path is not None and outside_reason(os.path.relpath(record.path, out_dir)) is None
        if inside:
            file_name = Path(os.path.relpath(record.path, out_dir)).as_posix()
        elif record.path is not None:  # copied in: read_coco refuses a file name that leaves the json's folder
            (out_dir / "images").mkdir(exist_ok=True)
            file_name = f"images/{json_path.stem}_{record.image_id:06d}{Path(record.path).suffix.lower()}"
            shutil.copyfile(record.path, out_dir / file_name)
        else:
            (out_dir / "images").mkdir(exist_ok=True)
            file_name = f"images/{json_path.stem}_{record.image_id:06d}.png"
            (out_dir / file_name).write_bytes(encode_png(record.image))
        images.append({"id": int(record.image_id), "file_name": file_name, "height": int(record.height),
                       "width": int(record.width)})
        for index, (box, label) in enumerate(zip(record.boxes.tolist(), record.labels.tolist())):
            y0, x0, y1, x1 = box
            annotation = {"id": len(annotations) + 1, "image_id": int(record.image_id),
                          "category_id": int(category_ids[label]), "bbox": [x0, y0, x1 - x0, y1 - y0],
                          "area": (x1 - x0) * (y1 - y0), "iscrowd": int(record.difficult[index])}
            if record.masks is not None:
                annotation["segmentation"] = _encode_rle(record.masks[index])
                annotation["area"] = int(record.masks[index].sum())
            annotations.append(annotation)
    categories = [{"id": int(category_id), "name": name, "supercategory": ""}
                  for category_id, name in zip(category_ids, dataset.class_names)]
    document = {"info": {"description": "written by kdet"}, "licenses": [], "images": images,
                "annotations": annotations, "categories": categories}
    json_path.write_text(json.dumps(document), encoding="utf-8")
