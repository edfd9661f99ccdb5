"""COCO-style detection and instance-segmentation metrics through pycocotools' `COCOeval`.

Inputs (full format in `kdet.metrics.inputs`): one ground-truth dict per image
`{"boxes": [N, 4] yxyx px, "labels": [N] 0-based, "masks": [N, H, W] uint8 (segm), "iscrowd": [N] (optional),
"area": [N] (optional), "image_id": int, "height": int, "width": int}` and one detection dict per image, same
order, `{"boxes": [K, 4] yxyx px, "scores": [K], "classes": [K], "masks": [K, H, W] (segm)}` with K the valid count.

The COCO ground-truth and result objects are built in memory (no json file): boxes become COCO's
`[x, y, width, height]`, masks become compressed RLE with `pycocotools.mask.encode`, category ids are label + 1.
Results are built the way `COCO.loadRes` builds them (box area for "bbox", mask area and mask bounding box for
"segm"), but directly, because `loadRes` crashes on an empty result list. So images without detections, images
without ground truth and a run with no detection at all evaluate normally (AP 0, not an exception).

Returned figures follow `COCOeval.summarize`: AP (IoU .50:.95), AP50, AP75, APs/APm/APl, AR1/AR10/AR100 and
ARs/ARm/ARl, plus per-class AP (IoU .50:.95, all areas, 100 detections). pycocotools reports -1 where a figure
is undefined (no ground truth in that area range or class); kdet reports NaN there, so it cannot be averaged
in by mistake.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kdet.errors import ConfigError, DataError
from kdet.metrics.inputs import check_classes, paired_arrays
from kdet.metrics.iou import box_area

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def yxyx_to_xywh(boxes):
    """boxes: [N, 4] yxyx -> [N, 4] COCO xywh (x, y of the top-left corner, width, height)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=1)


def encode_masks(masks):
    """masks: [N, H, W] binary -> list of N compressed RLE dicts (pycocotools' format)."""
    if len(masks) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(np.transpose(masks.astype(np.uint8), (1, 2, 0))))


def _image_size(gt, index, iou_type):
    height, width = gt["height"], gt["width"]
    if (height is None or width is None) and gt["masks"] is not None:
        height, width = gt["masks"].shape[1:]
    if iou_type == "segm" and (height is None or width is None):
        raise DataError(f"ground_truths[{index}]", "segm evaluation needs 'height' and 'width' (or 'masks')")
    return (0 if height is None else int(height)), (0 if width is None else int(width))


def _checked_masks(masks, where, height, width, count):
    if masks is None:
        if count == 0:
            return np.zeros((0, height, width), np.uint8)
        raise DataError(where, "segm evaluation needs 'masks'")
    if masks.shape[1:] != (height, width):
        raise DataError(f"{where}['masks']", f"are {masks.shape[1:]} but the image is {(height, width)}; "
                                             "paste them into the image frame first")
    return masks


def _build_coco(gts, dets, num_classes, iou_type):
    """(gt COCO, result COCO) built in memory from the normalised per-image arrays."""
    images, gt_anns, dt_anns = [], [], []
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    for index, (gt, det) in enumerate(zip(gts, dets)):
        height, width = _image_size(gt, index, iou_type)
        image_id = gt["image_id"]
        images.append({"id": image_id, "height": height, "width": width})

        gt_xywh = yxyx_to_xywh(gt["boxes"])
        if gt["area"] is not None:
            gt_area = gt["area"]
        elif gt["masks"] is not None:
            gt_area = gt["masks"].sum(axis=(1, 2), dtype=np.float64)
        else:
            gt_area = box_area(gt["boxes"])
        gt_rles = None
        if iou_type == "segm":
            gt_rles = encode_masks(_checked_masks(gt["masks"], f"ground_truths[{index}]", height, width,
                                                  len(gt["boxes"])))
        for i in range(len(gt["boxes"])):
            ann = {"id": len(gt_anns) + 1, "image_id": image_id, "category_id": int(gt["labels"][i]) + 1,
                   "bbox": gt_xywh[i].tolist(), "area": float(gt_area[i]), "iscrowd": int(gt["iscrowd"][i])}
            if gt_rles is not None:
                ann["segmentation"] = gt_rles[i]
            gt_anns.append(ann)

        if iou_type == "bbox":
            dt_xywh = yxyx_to_xywh(det["boxes"])
            for i in range(len(det["boxes"])):
                dt_anns.append({"image_id": image_id, "category_id": int(det["classes"][i]) + 1,
                                "bbox": dt_xywh[i].tolist(), "score": float(det["scores"][i]),
                                "area": float(dt_xywh[i, 2] * dt_xywh[i, 3])})
        else:
            masks = _checked_masks(det["masks"], f"detections[{index}]", height, width, len(det["boxes"]))
            rles = encode_masks(masks)
            areas = mask_utils.area(rles) if rles else []
            boxes = mask_utils.toBbox(rles) if rles else []
            for i, rle in enumerate(rles):
                dt_anns.append({"image_id": image_id, "category_id": int(det["classes"][i]) + 1,
                                "segmentation": rle, "score": float(det["scores"][i]),
                                "area": float(areas[i]), "bbox": np.asarray(boxes[i]).tolist()})
    for i, ann in enumerate(dt_anns):
        ann["id"] = i + 1
        ann["iscrowd"] = 0

    coco_gt, coco_dt = COCO(), COCO()
    coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
    coco_dt.dataset = {"images": list(images), "annotations": dt_anns, "categories": categories}
    coco_gt.createIndex()
    coco_dt.createIndex()
    return coco_gt, coco_dt


def _undefined_to_nan(value):
    return float("nan") if value < 0 else float(value)


def evaluate_coco(ground_truths, detections, class_names, iou_type="bbox", verbose=False):
    """COCO AP / AR over a dataset.

    ground_truths, detections: lists of per-image dicts, same order (see module docstring).
    class_names: [C] names; labels / classes are indices into it.
    iou_type: "bbox" (box IoU) or "segm" (mask IoU; needs masks in both ground truths and detections).
    verbose: let pycocotools print its progress and summary table.
    Returns {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl": float,
    "per_class": {name: AP}}, NaN where undefined.
    """
    if iou_type not in ("bbox", "segm"):
        raise ConfigError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    class_names = list(class_names)
    num_classes = len(class_names)
    gts, dets = paired_arrays(ground_truths, detections)
    for i, (gt, det) in enumerate(zip(gts, dets)):
        check_classes(gt["labels"], num_classes, f"ground_truths[{i}]['labels']")
        check_classes(det["classes"], num_classes, f"detections[{i}]['classes']")

    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt, coco_dt = _build_coco(gts, dets, num_classes, iou_type)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    result = {name: _undefined_to_nan(value) for name, value in zip(STAT_NAMES, evaluator.stats)}
    # precision: [T iou thresholds, R recall points, K classes, A area ranges, M max-dets]; area "all" is 0 and
    # 100 detections is the last max-dets setting, as in summarize().
    precision = evaluator.eval["precision"]
    result["per_class"] = {}
    for k, name in enumerate(class_names):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        result["per_class"][name] = float(values.mean()) if values.size else float("nan")
    return result
