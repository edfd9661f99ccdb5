"""Pure tensor functions for detection: boxes, anchors, matching, sampling, NMS, RoI pooling, YOLO grids, unpooling,
deformable convolution.

Names follow torchvision.ops; boxes are yxyx absolute pixels, float32. Ops with a TFLite-builtins twin
(roi_align, combined_nms, max_pool_with_argmax / max_unpool, deform_conv2d, upsample_nearest) choose it while
`builtins_only()` is active.
"""
from kdet.ops.anchors import anchors, base_anchors, multilevel_anchors, num_anchors_per_location
from kdet.ops.box_ops import box_area, box_iou, clip_boxes, convert_format, decode_boxes, encode_boxes
from kdet.ops.deform_conv import deform_conv2d
from kdet.ops.matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match, match_padded
from kdet.ops.mode import builtins_only, builtins_only_enabled
from kdet.ops.nms import batched_nms, combined_nms, nms
from kdet.ops.resize import subsample_2x, upsample_nearest, upsample_nearest_2x
from kdet.ops.roi_align import multiscale_roi_align, roi_align
from kdet.ops.roi_pool import roi_pool
from kdet.ops.sampling import sample_balanced
from kdet.ops.unpool import max_pool_with_argmax, max_unpool
from kdet.ops.yolo_grid import best_prior, yolo_v1_decode, yolo_v1_encode, yolo_v2_decode, yolo_v2_encode

__all__ = [
    "anchors", "base_anchors", "multilevel_anchors", "num_anchors_per_location",
    "box_area", "box_iou", "clip_boxes", "convert_format", "decode_boxes", "encode_boxes",
    "deform_conv2d",
    "BELOW_LOW_THRESHOLD", "BETWEEN_THRESHOLDS", "match", "match_padded",
    "builtins_only", "builtins_only_enabled",
    "batched_nms", "combined_nms", "nms",
    "subsample_2x", "upsample_nearest", "upsample_nearest_2x",
    "multiscale_roi_align", "roi_align", "roi_pool",
    "sample_balanced",
    "max_pool_with_argmax", "max_unpool",
    "best_prior", "yolo_v1_decode", "yolo_v1_encode", "yolo_v2_decode", "yolo_v2_encode",
]
