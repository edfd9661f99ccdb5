"""Evaluation metrics on numpy arrays, run after `model.predict` (outside the graph).

Detection metrics take two lists, one dict per image, in the same order:
- ground truth: {"boxes": [N, 4] yxyx px float, "labels": [N] int 0-based, "difficult": [N] bool (optional),
  "iscrowd": [N] bool (optional, COCO), "area": [N] (optional, COCO), "masks": [N, H, W] uint8 (optional),
  "image_id": int, "height": int, "width": int}
- detections: {"boxes": [K, 4] yxyx px, "scores": [K], "classes": [K] int, "masks": [K, H, W] (optional)}, with
  K the valid count (slice the model's fixed-size output with `num_detections`).
Negative labels / classes are batch padding and are dropped. Details: `kdet.metrics.inputs`.

- `iou`: box_iou, paired_box_iou, mean_box_iou
- `voc_map`: voc_ap, evaluate_voc (PASCAL VOC devkit AP, VOC07 11-point or area)
- `coco_eval`: evaluate_coco (pycocotools COCOeval, "bbox" or "segm")
- `miou`: confusion_matrix, segmentation_metrics, SegmentationEvaluator (semantic segmentation, ignore = 255)
- `speed`: measure_latency, round_robin_latency, format_latency, latency_records
"""
from kdet.metrics.coco_eval import evaluate_coco
from kdet.metrics.iou import box_iou, mean_box_iou, paired_box_iou
from kdet.metrics.miou import SegmentationEvaluator, confusion_matrix, segmentation_metrics
from kdet.metrics.speed import format_latency, latency_records, measure_latency, round_robin_latency
from kdet.metrics.voc_map import evaluate_voc, voc_ap

__all__ = [
    "box_iou", "paired_box_iou", "mean_box_iou", "voc_ap", "evaluate_voc", "evaluate_coco", "confusion_matrix",
    "segmentation_metrics", "SegmentationEvaluator", "measure_latency", "round_robin_latency", "format_latency",
    "latency_records",
]
