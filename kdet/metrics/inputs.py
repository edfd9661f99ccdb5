"""Checks and normalises the per-image dicts that every detection metric takes.

Ground truth, one dict per image:
    boxes:      float [N, 4] yxyx absolute pixels
    labels:     int [N] 0-based (negative labels are batch padding and are dropped)
    difficult:  bool [N], optional (VOC: matched detections are neither TP nor FP)
    iscrowd:    bool [N], optional (COCO crowd regions; `evaluate_voc` ignores this key)
    masks:      uint8 [N, H, W], optional (instance masks in the image frame)
    area:       float [N], optional (COCO json's object area; COCO evaluation uses it for the small / medium /
                large split, defaulting to the mask area, or the box area without masks)
    image_id:   int, optional (defaults to the position in the list)
    height, width: int (needed by COCO evaluation and by masks)

Detections, one dict per image, in the same order as the ground truths:
    boxes: float [K, 4] yxyx px, scores: float [K], classes: int [K] 0-based, masks: [K, H, W] optional
    (uint8/bool binary, or float probabilities thresholded at 0.5), image_id: int optional (checked if given).
    K is the valid count: the caller slices the model's fixed-size output with `num_detections`. Negative classes
    (padding) are dropped all the same.

Errors name the offending entry, e.g. `detections[3]['scores']`, through `kdet.errors.DataError`.
"""
from __future__ import annotations

import numpy as np

from kdet.errors import DataError


def _array(entry, key, where, dtype, default=None):
    if key not in entry or entry[key] is None:
        if default is None:
            raise DataError(where, f"missing key '{key}'")
        return default
    return np.asarray(entry[key], dtype)


def _boxes(entry, where):
    boxes = _array(entry, "boxes", where, np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(f"{where}['boxes']", f"expected shape [N, 4] yxyx, got {boxes.shape}")
    return boxes


def _per_box(entry, key, where, dtype, count, default=None):
    values = _array(entry, key, where, dtype, default).reshape(-1)
    if len(values) != count:
        raise DataError(f"{where}['{key}']", f"has {len(values)} entries for {count} boxes")
    return values


def _masks(entry, where, count):
    if entry.get("masks") is None:
        return None
    masks = np.asarray(entry["masks"])
    if masks.ndim != 3 or masks.shape[0] != count:
        raise DataError(f"{where}['masks']", f"expected shape [{count}, H, W], got {masks.shape}")
    if masks.dtype.kind == "f":
        masks = masks >= 0.5
    return masks.astype(np.uint8)


def ground_truth_arrays(entry, index):
    """One ground-truth dict -> dict of numpy arrays with padding (label < 0) removed."""
    where = f"ground_truths[{index}]"
    if not isinstance(entry, dict):
        raise DataError(where, f"expected a dict, got {type(entry).__name__}")
    boxes = _boxes(entry, where)
    count = len(boxes)
    labels = _per_box(entry, "labels", where, np.int64, count)
    difficult = _per_box(entry, "difficult", where, bool, count, np.zeros(count, bool))
    iscrowd = _per_box(entry, "iscrowd", where, bool, count, np.zeros(count, bool))
    masks = _masks(entry, where, count)
    area = None if entry.get("area") is None else _per_box(entry, "area", where, np.float64, count)
    keep = labels >= 0
    return {
        "boxes": boxes[keep], "labels": labels[keep], "difficult": difficult[keep], "iscrowd": iscrowd[keep],
        "masks": None if masks is None else masks[keep], "area": None if area is None else area[keep],
        "image_id": int(entry.get("image_id", index)),
        "height": entry.get("height"), "width": entry.get("width"),
    }


def detection_arrays(entry, index, image_id):
    """One detection dict -> dict of numpy arrays with padding (class < 0) removed."""
    where = f"detections[{index}]"
    if not isinstance(entry, dict):
        raise DataError(where, f"expected a dict, got {type(entry).__name__}")
    if "image_id" in entry and int(entry["image_id"]) != image_id:
        raise DataError(f"{where}['image_id']",
                        f"is {int(entry['image_id'])} but ground_truths[{index}] is image {image_id}")
    boxes = _boxes(entry, where)
    count = len(boxes)
    scores = _per_box(entry, "scores", where, np.float64, count)
    classes = _per_box(entry, "classes", where, np.int64, count)
    masks = _masks(entry, where, count)
    keep = classes >= 0
    return {"boxes": boxes[keep], "scores": scores[keep], "classes": classes[keep],
            "masks": None if masks is None else masks[keep]}


def paired_arrays(ground_truths, detections):
    """Both lists -> (list of gt dicts, list of detection dicts), checked one to one."""
    ground_truths = list(ground_truths)
    detections = list(detections)
    if len(ground_truths) != len(detections):
        raise DataError("detections", f"has {len(detections)} images but ground_truths has {len(ground_truths)}")
    gts = [ground_truth_arrays(entry, i) for i, entry in enumerate(ground_truths)]
    dets = [detection_arrays(entry, i, gt["image_id"]) for i, (entry, gt) in enumerate(zip(detections, gts))]
    ids = [gt["image_id"] for gt in gts]
    if len(set(ids)) != len(ids):
        raise DataError("ground_truths", "image_id values are not unique")
    return gts, dets


def check_classes(values, num_classes, where):
    """Raise if a label/class id is >= num_classes (negatives were already dropped as padding)."""
    if values.size and values.max() >= num_classes:
        raise DataError(where, f"class id {int(values.max())} is not in the {num_classes} classes")
