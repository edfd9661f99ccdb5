"""Anchor-to-ground-truth matching with torchvision's Matcher semantics (models/detection/_utils.py).

For every anchor (or proposal) the best ground-truth box by IoU is its match if IoU >= high_threshold;
IoU < low_threshold gives BELOW_LOW_THRESHOLD (-1, a negative) and anything in between BETWEEN_THRESHOLDS
(-2, ignored). With `allow_low_quality_matches`, each ground-truth box also keeps the anchors that overlap it
best (ties included), as in the Faster R-CNN paper, so no object is left without a positive anchor.

The IoU matrix here is anchors x ground truth ([N, M]), the transpose of torchvision's [M, N].
"""
import tensorflow as tf

from kdet.errors import ConfigError
from kdet.ops.box_ops import box_iou

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(iou, high_threshold, low_threshold, allow_low_quality_matches=False, gt_valid=None):
    """Per-anchor matched ground-truth index.

    Args:
        iou: [N, M] or [B, N, M] float, anchors x ground truth (M may be 0).
        high_threshold: IoU >= this is a match.
        low_threshold: IoU < this is BELOW_LOW_THRESHOLD (-1); [low, high) is BETWEEN_THRESHOLDS (-2).
        allow_low_quality_matches: also match each ground-truth box's best anchors (ties included) to their own
            best ground truth, even below high_threshold.
        gt_valid: optional [M] or [B, M] bool; False columns (padding) are never matched.
    Returns:
        [N] or [B, N] int32: ground-truth index >= 0, or -1 / -2. With no (valid) ground truth every anchor is -1
        (torchvision raises instead; its RPN and RoI heads then label everything background, as this does).
    """
    if low_threshold > high_threshold:
        raise ConfigError(f"matcher: low_threshold {low_threshold} must be <= high_threshold {high_threshold}")
    iou = tf.convert_to_tensor(iou, tf.float32)
    if gt_valid is None:
        gt_valid = tf.ones(tf.concat([tf.shape(iou)[:-2], tf.shape(iou)[-1:]], axis=0), tf.bool)
    gt_valid = tf.cast(gt_valid, tf.bool)
    # Padding columns get IoU -1 so they never win; one extra -1 column keeps argmax defined when M == 0.
    masked = tf.where(gt_valid[..., None, :], iou, -1.0)
    extra = tf.fill(tf.concat([tf.shape(masked)[:-1], [1]], axis=0), -1.0)
    padded = tf.concat([masked, extra], axis=-1)
    matched_vals = tf.reduce_max(padded, axis=-1)
    all_matches = tf.argmax(padded, axis=-1, output_type=tf.int32)  # ties: first (lowest) index, as torch.max

    matches = tf.where(matched_vals < low_threshold, BELOW_LOW_THRESHOLD,
                       tf.where(matched_vals < high_threshold, BETWEEN_THRESHOLDS, all_matches))
    if allow_low_quality_matches:
        highest_per_gt = tf.reduce_max(masked, axis=-2)  # [..., M]
        is_best = tf.equal(masked, highest_per_gt[..., None, :]) & gt_valid[..., None, :]
        is_best_for_some_gt = tf.reduce_any(is_best, axis=-1)
        matches = tf.where(is_best_for_some_gt, all_matches, matches)
    return matches


def match_padded(anchors, gt_boxes, gt_labels, high_threshold, low_threshold, allow_low_quality_matches=False):
    """`match` on padded ground truth: rows with label -1 are ignored.

    Args:
        anchors: [N, 4] or [B, N, 4] yxyx pixels.
        gt_boxes: [M, 4] or [B, M, 4] yxyx pixels (padded).
        gt_labels: [M] or [B, M] int, -1 for padding.
    Returns:
        [N] or [B, N] int32 indices into the padded gt rows, or -1 / -2 (see `match`). Gather the matched boxes
        and labels with `tf.gather(gt, tf.maximum(matches, 0), batch_dims=...)` and mask with `matches >= 0`.
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    if anchors.shape.rank == 2 and gt_boxes.shape.rank == 3:
        anchors = tf.broadcast_to(anchors[None], tf.concat([tf.shape(gt_boxes)[:1], tf.shape(anchors)], axis=0))
    iou = box_iou(anchors, gt_boxes)
    return match(iou, high_threshold, low_threshold, allow_low_quality_matches, gt_valid=gt_labels >= 0)
