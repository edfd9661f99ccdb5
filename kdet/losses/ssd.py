"""SSD's MultiBox loss (Liu et al. 2016) with hard negative mining, as torchvision's SSD.compute_loss.

Softmax cross-entropy over C + 1 columns (0 = background) for every positive default box and for the
`neg_pos_ratio` x (positives of the image) background boxes with the highest loss ("hard negatives"; 3:1 in the
paper), plus smooth-L1 (beta 1, kdet.losses.box) on the box deltas of the positives. Both sums are divided by the number
of positives in the whole batch. An image without objects therefore contributes nothing, as in torchvision.
"""
import keras
import tensorflow as tf

from kdet.losses.box import box_loss


def hard_negative_mask(losses, positive, neg_pos_ratio=3.0):
    """The negatives kept for the classification loss.

    Args:
        losses: [B, N] per-box classification loss.
        positive: [B, N] bool.
        neg_pos_ratio: negatives per positive, per image.
    Returns:
        [B, N] bool: for each image with P positives, the non-positive boxes whose rank by descending loss is
        below ratio * P (torchvision's rule: ceil(ratio * P) boxes, or all negatives when there are fewer).
        Equal losses are ranked by index (stable sort).
    """
    losses = tf.convert_to_tensor(losses, tf.float32)
    num_negative = neg_pos_ratio * tf.reduce_sum(tf.cast(positive, tf.float32), axis=1, keepdims=True)
    ranked = tf.where(positive, float("-inf"), losses)
    order = tf.argsort(ranked, axis=1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=1, stable=True)
    return (tf.cast(rank, tf.float32) < num_negative) & tf.logical_not(positive)


def multibox_loss(labels, box_targets, cls_logits, box_regression, neg_pos_ratio=3.0):
    """Args:
        labels: [B, N] int: matched class >= 0 (0-based, without background), or -1 (background).
        box_targets: [B, N, 4] encoded deltas of the positives.
        cls_logits: [B, N, C + 1], column 0 background; box_regression: [B, N, 4].
    Returns:
        (classification, box_regression) scalars.
    """
    positive = labels >= 0
    target_column = tf.where(positive, labels + 1, 0)
    per_box = keras.losses.sparse_categorical_crossentropy(target_column, tf.cast(cls_logits, tf.float32),
                                                           from_logits=True)
    negatives = hard_negative_mask(tf.stop_gradient(per_box), positive, neg_pos_ratio)
    num_positive = tf.maximum(tf.reduce_sum(tf.cast(positive, tf.float32)), 1.0)
    classification = tf.reduce_sum(tf.where(positive | negatives, per_box, 0.0)) / num_positive
    smooth_l1 = box_loss(tf.cast(box_regression, tf.float32) - box_targets, "smooth_l1", beta=1.0)  # [B, N]
    box = tf.reduce_sum(tf.where(positive, smooth_l1, 0.0)) / num_positive
    return classification, box
