"""Box regression losses, one home: smooth-L1 (torch's, with beta) and L1, per element.

Keras' `Huber(delta=1)` is smooth-L1 at beta 1 reduced over a batch; detection losses need the per-element value to
mask positives and normalise by their count, so the element-wise form lives here.
"""
import tensorflow as tf


def smooth_l1(error, beta=1.0):
    """torch.nn.functional.smooth_l1_loss per element: 0.5 x^2 / beta if |x| < beta else |x| - 0.5 beta.

    error: any shape (prediction - target) -> same shape. beta 1/9 is torchvision's RPN / box head default.
    """
    absolute = tf.abs(error)
    if beta == 0:
        return absolute
    return tf.where(absolute < beta, 0.5 * tf.square(error) / beta, absolute - 0.5 * beta)


def box_loss(error, kind="smooth_l1", beta=1.0):
    """Per-box loss summed over the 4 coordinates: error [..., 4] -> [...]; kind "smooth_l1", "l1" or "l2"."""
    if kind == "smooth_l1":
        per_coordinate = smooth_l1(error, beta)
    elif kind == "l1":
        per_coordinate = tf.abs(error)
    elif kind == "l2":
        per_coordinate = tf.square(error)
    else:
        raise ValueError(f"box loss must be 'smooth_l1', 'l1' or 'l2', got {kind!r}")
    return tf.reduce_sum(per_coordinate, axis=-1)
