"""Box IoU on numpy arrays, for evaluation after `model.predict` (outside the graph).

Boxes are kdet's convention: yxyx, absolute pixels, continuous coordinates, so a box's area is
`(ymax - ymin) * (xmax - xmin)` with no "+1": VOC's 1-based inclusive pixel boxes are converted to continuous
coordinates by the reader, and the same IoU serves VOC and COCO evaluation. A zero-area pair has IoU 0, not NaN.
"""
from __future__ import annotations

import numpy as np

from kdet.errors import DataError


def _as_boxes(boxes, name):
    boxes = np.asarray(boxes, np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(name, f"boxes must have shape [N, 4] (yxyx), got {boxes.shape}")
    return boxes


def box_area(boxes):
    """boxes: [N, 4] yxyx -> [N] areas (0 for inverted boxes)."""
    boxes = _as_boxes(boxes, "boxes")
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def box_iou(boxes1, boxes2):
    """Pairwise IoU.

    boxes1: [N, 4] yxyx, boxes2: [M, 4] yxyx -> [N, M] float64 IoU.
    """
    boxes1 = _as_boxes(boxes1, "boxes1")
    boxes2 = _as_boxes(boxes2, "boxes2")
    top_left = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    hw = np.clip(bottom_right - top_left, 0, None)
    intersection = hw[..., 0] * hw[..., 1]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - intersection
    # Two degenerate boxes have union 0: they overlap nowhere, so IoU 0 rather than 0/0.
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def paired_box_iou(pred, gt):
    """Element-wise IoU of matched pairs.

    pred: [N, 4] yxyx, gt: [N, 4] yxyx -> [N] float64, IoU of pred[i] with gt[i].
    """
    pred = _as_boxes(pred, "pred")
    gt = _as_boxes(gt, "gt")
    if pred.shape != gt.shape:
        raise DataError("pred", f"pred and gt must pair up one to one, got {pred.shape} and {gt.shape}")
    top_left = np.maximum(pred[:, :2], gt[:, :2])
    bottom_right = np.minimum(pred[:, 2:], gt[:, 2:])
    hw = np.clip(bottom_right - top_left, 0, None)
    intersection = hw[:, 0] * hw[:, 1]
    union = box_area(pred) + box_area(gt) - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def mean_box_iou(pred, gt):
    """Mean IoU of paired boxes: the localization score of single-object classification + localization.

    pred: [N, 4] yxyx, gt: [N, 4] yxyx (pred[i] is the prediction for gt[i]) -> float; NaN when N == 0.
    """
    ious = paired_box_iou(pred, gt)
    return float(ious.mean()) if ious.size else float("nan")
