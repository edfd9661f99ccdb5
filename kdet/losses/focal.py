"""Sigmoid focal loss (Lin et al. 2017) and the anchor-level classification losses of RetinaNet.

FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), per anchor and class, with p = sigmoid(logit), p_t = p for a positive
target and 1 - p otherwise, alpha_t = alpha for positives and 1 - alpha for negatives.

This is `keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, from_logits=True)`, which kdet uses
as is. Two facts checked in tests/test_retinanet_losses.py: Keras averages over the last (class) axis, so the
per-anchor sum of the paper (and of torchvision's sigmoid_focal_loss) is that mean times C; and on the TF backend
Keras computes the cross-entropy from the logits behind its sigmoid, so it stays exact (loss and gradient) at
logits of +-30 where a probability-space log would saturate.
"""
import keras
import tensorflow as tf

CLASSIFICATION_LOSSES = ("focal", "cross_entropy")


class AnchorClassificationLoss:
    """Per-anchor sigmoid classification loss summed over classes.

    Args:
        kind: "focal" (alpha-balanced focal loss) or "cross_entropy" (plain sigmoid cross-entropy: the RetinaNet
            paper's baseline in its ablation, Table 1).
        alpha: weight of positives in the focal loss (0.25 in the paper); None = no class balancing.
        gamma: focusing parameter (2 in the paper); gamma 0 with alpha 0.5 is half the cross-entropy.

    __call__(targets [..., C] 0/1, logits [..., C]) -> [...] float32 loss per anchor.
    """

    def __init__(self, kind="focal", alpha=0.25, gamma=2.0):
        if kind not in CLASSIFICATION_LOSSES:
            raise ValueError(f"classification loss must be one of {CLASSIFICATION_LOSSES}, got {kind!r}")
        self.kind = kind
        self.alpha = None if alpha is None else float(alpha)
        self.gamma = float(gamma)
        if kind == "focal":
            self._loss = keras.losses.BinaryFocalCrossentropy(
                apply_class_balancing=self.alpha is not None, alpha=0.25 if self.alpha is None else self.alpha,
                gamma=self.gamma, from_logits=True, reduction=None)
        else:
            self._loss = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)

    def __call__(self, targets, logits):
        logits = tf.cast(logits, tf.float32)
        targets = tf.cast(targets, tf.float32)
        num_classes = tf.cast(tf.shape(logits)[-1], tf.float32)
        return self._loss(targets, logits) * num_classes  # Keras means over classes; the paper sums


def sigmoid_focal_loss(targets, logits, alpha=0.25, gamma=2.0):
    """Element-wise focal loss, [...] -> [...] (torchvision.ops.sigmoid_focal_loss with reduction="none").

    Kept for callers that need the per-class values; it is the Keras loss on a trailing axis of size 1.
    """
    loss = AnchorClassificationLoss("focal", alpha, gamma)
    return loss(tf.convert_to_tensor(targets)[..., None], tf.convert_to_tensor(logits)[..., None])
