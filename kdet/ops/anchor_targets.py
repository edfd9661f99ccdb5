"""Anchor targets for single-shot detectors: match padded ground truth to a fixed anchor set, encode the boxes.

Runs in graph on padded batches: in the models' train step (kdet.models.base.Detector.compute_loss), on the anchors
of the batch's input size, or inside tf.data. Two matching rules:
  * "retinanet": torchvision's Matcher(fg, bg, allow_low_quality_matches=True): IoU >= fg positive, < bg
    negative, in between ignored, and every object also keeps the anchors that overlap it best;
  * "ssd": torchvision's SSDMatcher(t): IoU >= t positive, else negative, and each object's single best anchor is
    forced onto it (the last object wins when two share a best anchor, as torch's index assignment does).
Ground-truth rows that cannot be matched are dropped first: padding (label -1) and degenerate boxes (zero or
negative height or width) and boxes that overlap no anchor: their best IoU is 0, so "best anchor" matching would
claim every anchor tied at 0 with them (torchvision refuses degenerate boxes with an assertion).
"""
import tensorflow as tf

from kdet.ops import BETWEEN_THRESHOLDS, box_iou, encode_boxes, match

IGNORE = BETWEEN_THRESHOLDS  # -2: neither positive nor negative
NEGATIVE = -1
MATCHERS = ("retinanet", "ssd")


def valid_ground_truth(boxes, labels):
    """[B, M, 4], [B, M] -> [B, M] bool: real (label >= 0), finite boxes with positive height and width."""
    finite = tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    positive_size = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    return (labels >= 0) & finite & positive_size


def match_anchors(anchors, boxes, labels, matcher="retinanet", fg_iou_threshold=0.5, bg_iou_threshold=0.4):
    """Per-anchor matched ground-truth row.

    Args:
        anchors: [N, 4] yxyx pixels.
        boxes: [B, M, 4] yxyx pixels, padded; labels: [B, M] int, -1 = padding.
        matcher: "retinanet" or "ssd" (see the module docstring); bg_iou_threshold is unused by "ssd".
    Returns:
        [B, N] int32: row index >= 0, NEGATIVE (-1) or IGNORE (-2).
    """
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {MATCHERS}, got {matcher!r}")
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    labels = tf.convert_to_tensor(labels, tf.int32)
    valid = valid_ground_truth(boxes, labels)
    safe_boxes = tf.where(valid[..., None], boxes, 0.0)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    batch = tf.shape(boxes)[0]
    iou = box_iou(tf.broadcast_to(anchors[None], [batch, tf.shape(anchors)[0], 4]), safe_boxes)  # [B, N, M]
    # A box that overlaps no anchor at all (e.g. entirely outside the image) has best IoU 0: its "best anchors"
    # would be every anchor, so it is dropped too.
    valid = valid & (tf.reduce_max(iou, axis=1) > 0.0)
    if matcher == "retinanet":
        return match(iou, fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches=True, gt_valid=valid)
    matches = match(iou, fg_iou_threshold, fg_iou_threshold, allow_low_quality_matches=False, gt_valid=valid)
    best_anchor = tf.argmax(iou, axis=1, output_type=tf.int32)  # [B, M], first anchor on ties (as torch.max)
    num_anchors = tf.shape(anchors)[0]
    claims = tf.equal(best_anchor[:, None, :], tf.range(num_anchors)[None, :, None]) & valid[:, None, :]  # [B, N, M]
    rows = tf.range(tf.shape(boxes)[1], dtype=tf.int32)
    forced = tf.reduce_max(tf.where(claims, rows[None, None, :], -1), axis=-1)  # last claiming row, or -1
    return tf.where(forced >= 0, forced, matches)


def anchor_targets(anchors, boxes, labels, matcher="retinanet", fg_iou_threshold=0.5, bg_iou_threshold=0.4,
                   box_weights=(1.0, 1.0, 1.0, 1.0)):
    """Classification and regression targets of every anchor.

    Args:
        anchors: [N, 4] yxyx pixels; boxes: [B, M, 4] yxyx pixels (padded); labels: [B, M] int (-1 = padding).
        matcher, fg_iou_threshold, bg_iou_threshold: see `match_anchors`.
        box_weights: (wy, wx, wh, ww) of the delta coding (kdet.ops.encode_boxes).
    Returns:
        {"labels": [B, N] int32: the matched class (>= 0) for positives, NEGATIVE (-1) or IGNORE (-2),
         "box_targets": [B, N, 4] float32 deltas (ty, tx, th, tw), zero for non-positive anchors}.
    """
    labels = tf.convert_to_tensor(labels, tf.int32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    # One extra padding row: a batch whose images have no objects at all has M = 0, and the gathers below need a
    # row to point at (nothing ever matches it).
    labels = tf.pad(labels, [[0, 0], [0, 1]], constant_values=-1)
    boxes = tf.pad(boxes, [[0, 0], [0, 1], [0, 0]])
    matches = match_anchors(anchors, boxes, labels, matcher, fg_iou_threshold, bg_iou_threshold)
    positive = matches >= 0
    rows = tf.maximum(matches, 0)
    matched_labels = tf.gather(labels, rows, batch_dims=1)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    # Non-positive anchors encode against themselves (zero deltas) so no log(0) is ever computed.
    matched_boxes = tf.where(positive[..., None], tf.gather(boxes, rows, batch_dims=1), anchors[None])
    deltas = encode_boxes(matched_boxes, anchors[None], box_weights)
    return {"labels": tf.where(positive, matched_labels, matches),
            "box_targets": tf.where(positive[..., None], deltas, 0.0)}
