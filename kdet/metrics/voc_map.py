"""PASCAL VOC mean average precision, following the official devkit as ported in py-faster-rcnn's `voc_eval.py`.

Inputs (see `kdet.metrics.inputs` for the full format): one ground-truth dict per image
`{"boxes": [N, 4] yxyx px, "labels": [N] 0-based, "difficult": [N] bool (optional), "image_id": int}` and one
detection dict per image, same order, `{"boxes": [K, 4] yxyx px, "scores": [K], "classes": [K]}` with K the valid
count (slice the model output with `num_detections`).

Per class, detections of all images are ranked by score and matched greedily to the ground truth box of highest
IoU in their image (IoU > threshold, strictly, as in the devkit):
- matched to a `difficult` box: ignored, neither true nor false positive, and difficult boxes do not count in
  the recall denominator;
- matched to a box an earlier (higher-scoring) detection already took: a duplicate, false positive;
- no box above the threshold: false positive.
AP is the area under the precision envelope (VOC2010+), or the 11-point interpolation (VOC2007) with
`use_07_metric=True`. Classes with no non-difficult ground truth have undefined AP: they are NaN in `per_class`
and left out of the mean, as the devkit does for classes absent from a split.

Two deliberate differences from the devkit, both because kdet boxes are continuous pixel coordinates:
IoU has no "+1" on widths (see `kdet.metrics.iou`), and ties in score are broken by input order (stable sort)
rather than by numpy's unstable quicksort, so results are reproducible.
"""
from __future__ import annotations

import numpy as np

from kdet.errors import ConfigError
from kdet.metrics.inputs import check_classes, paired_arrays
from kdet.metrics.iou import box_iou


def voc_ap(recall, precision, use_07_metric=False):
    """Average precision from a precision/recall curve, as the VOC devkit computes it.

    recall, precision: [D] cumulative values over detections ranked by score.
    use_07_metric: VOC2007 11-point interpolation (mean of the best precision at recall >= 0, 0.1, ..., 1);
    otherwise the exact area under the monotone precision envelope (VOC2010 and later).
    """
    recall = np.asarray(recall, np.float64).reshape(-1)
    precision = np.asarray(precision, np.float64).reshape(-1)
    if use_07_metric:
        ap = 0.0
        for threshold in np.arange(0.0, 1.1, 0.1):
            above = recall >= threshold
            ap += (precision[above].max() if above.any() else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    # Precision envelope: at each recall, the best precision reachable at that recall or beyond.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def _class_tp_fp(gts, dets, class_id, iou_threshold):
    """Rank one class's detections and mark each TP / FP / ignored. Returns (tp [D], fp [D], num_positives)."""
    gt_boxes, gt_difficult, taken = {}, {}, {}
    num_positives = 0
    for gt in gts:
        mine = gt["labels"] == class_id
        gt_boxes[gt["image_id"]] = gt["boxes"][mine]
        gt_difficult[gt["image_id"]] = gt["difficult"][mine]
        taken[gt["image_id"]] = np.zeros(int(mine.sum()), bool)
        num_positives += int((~gt["difficult"][mine]).sum())

    image_ids, scores, boxes = [], [], []
    for gt, det in zip(gts, dets):
        mine = det["classes"] == class_id
        image_ids.extend([gt["image_id"]] * int(mine.sum()))
        scores.append(det["scores"][mine])
        boxes.append(det["boxes"][mine])
    scores = np.concatenate(scores) if scores else np.zeros(0)
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    order = np.argsort(-scores, kind="stable")

    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for rank, index in enumerate(order):
        image_id = image_ids[index]
        candidates = gt_boxes[image_id]
        if len(candidates) == 0:
            fp[rank] = 1
            continue
        ious = box_iou(boxes[index:index + 1], candidates)[0]
        best = int(np.argmax(ious))
        if ious[best] > iou_threshold:
            if gt_difficult[image_id][best]:
                continue
            if taken[image_id][best]:
                fp[rank] = 1
            else:
                tp[rank] = 1
                taken[image_id][best] = True
        else:
            fp[rank] = 1
    return tp, fp, num_positives


def evaluate_voc(ground_truths, detections, num_classes, iou_threshold=0.5, use_07_metric=False,
                 class_names=None):
    """VOC mAP over a dataset.

    ground_truths: list of per-image gt dicts; detections: list of per-image detection dicts, same order.
    num_classes: number of object classes (labels 0 .. num_classes - 1).
    class_names: optional names for `per_class` keys (default: the class index as a string).
    Returns {"mAP": float, "per_class": {name: AP}}; NaN APs mark classes without ground truth, and mAP is NaN
    only if no class has any.
    """
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ConfigError(f"class_names has {len(class_names)} names for {num_classes} classes")
    gts, dets = paired_arrays(ground_truths, detections)
    for i, (gt, det) in enumerate(zip(gts, dets)):
        check_classes(gt["labels"], num_classes, f"ground_truths[{i}]['labels']")
        check_classes(det["classes"], num_classes, f"detections[{i}]['classes']")

    per_class = {}
    for class_id, name in enumerate(class_names):
        tp, fp, num_positives = _class_tp_fp(gts, dets, class_id, iou_threshold)
        if num_positives == 0:
            per_class[name] = float("nan")
            continue
        tp = np.cumsum(tp)
        fp = np.cumsum(fp)
        recall = tp / num_positives
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        per_class[name] = voc_ap(recall, precision, use_07_metric)

    defined = [ap for ap in per_class.values() if not np.isnan(ap)]
    return {"mAP": float(np.mean(defined)) if defined else float("nan"), "per_class": per_class}
