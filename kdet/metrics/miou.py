"""Semantic segmentation metrics (mean IoU, per-class IoU, pixel accuracy) from a confusion matrix, in numpy.

Inputs are class-id maps, not probabilities: pred int [H, W] or [B, H, W] (the argmax, i.e. the `"masks"` output
of a semantic model) and target int of the same shape, or with a trailing 1 ([H, W, 1] / [B, H, W, 1], the
`segmentation_masks` of the data contract). Target pixels equal to `ignore_index` (255 by default: VOC's object
borders and "void") count nowhere, whatever the prediction there.

The confusion matrix has rows = target class, columns = predicted class. IoU of class c is
`cm[c, c] / (row_c + column_c - cm[c, c])`. A class absent from both target and prediction has no IoU: it is
NaN in `per_class_iou` and left out of the mean (a class predicted but absent from the target has IoU 0 and
does count). This is what `keras.metrics.MeanIoU` and the usual VOC / Cityscapes scripts do.

To evaluate a dataset, accumulate: `SegmentationEvaluator.update(pred, target)` per batch, then `result()`.
"""
from __future__ import annotations

import numpy as np

from kdet.errors import DataError


def _labels(values, name):
    values = np.asarray(values)
    if values.dtype.kind not in "iub":
        if values.dtype.kind == "f" and np.all(np.mod(values, 1) == 0):
            values = values.astype(np.int64)
        else:
            raise DataError(name, f"expected integer class ids, got dtype {values.dtype}")
    return values.astype(np.int64)


def _matched(pred, target):
    pred = _labels(pred, "pred")
    target = _labels(target, "target")
    # The data contract stores semantic targets as [H, W, 1]; accept it against a [H, W] prediction.
    if target.shape != pred.shape and target.shape[-1:] == (1,) and target.shape[:-1] == pred.shape:
        target = target[..., 0]
    if pred.shape != target.shape:
        raise DataError("pred", f"shape {pred.shape} does not match target shape {target.shape}")
    return pred, target


def confusion_matrix(pred, target, num_classes, ignore_index=255):
    """Pixel confusion matrix.

    pred: int [..., H, W] predicted class ids; target: int, same shape (or with a trailing 1).
    Returns int64 [num_classes, num_classes], rows = target class, columns = predicted class.
    """
    pred, target = _matched(pred, target)
    valid = target != ignore_index
    pred = pred[valid]
    target = target[valid]
    if target.size and (target.min() < 0 or target.max() >= num_classes):
        bad = target[(target < 0) | (target >= num_classes)][0]
        raise DataError("target", f"class id {bad} is neither in the {num_classes} classes nor ignore={ignore_index}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        bad = pred[(pred < 0) | (pred >= num_classes)][0]
        raise DataError("pred", f"class id {bad} is not in the {num_classes} classes")
    # One bincount over target * C + pred fills the whole matrix in a single pass.
    counts = np.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def metrics_from_confusion(matrix):
    """matrix: [C, C] (rows target, columns pred) -> {"mIoU", "per_class_iou" [C], "pixel_accuracy"}."""
    matrix = np.asarray(matrix, np.float64)
    true_positive = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(union > 0, true_positive / union, np.nan)
    total = matrix.sum()
    present = ~np.isnan(per_class)
    return {
        "mIoU": float(per_class[present].mean()) if present.any() else float("nan"),
        "per_class_iou": per_class,
        "pixel_accuracy": float(true_positive.sum() / total) if total > 0 else float("nan"),
    }


def segmentation_metrics(pred, target, num_classes, ignore_index=255):
    """mIoU, per-class IoU [C] (NaN for classes absent from both) and pixel accuracy over the given maps.

    pred: int [..., H, W]; target: int [..., H, W] (or [..., H, W, 1]), `ignore_index` pixels excluded.
    """
    return metrics_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))


class SegmentationEvaluator:
    """Accumulates a confusion matrix over batches, so dataset-level IoU weighs every pixel once
    (averaging per-batch mIoU would not).

    evaluator = SegmentationEvaluator(num_classes=21)
    for images, targets in dataset: evaluator.update(model.predict(images)["masks"], targets)
    evaluator.result()  # {"mIoU", "per_class_iou", "pixel_accuracy"}
    """

    def __init__(self, num_classes, ignore_index=255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self):
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred, target):
        """pred, target: class-id maps of one image or a batch (see `confusion_matrix`)."""
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def result(self):
        return metrics_from_confusion(self.matrix)
