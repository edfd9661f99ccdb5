"""Balanced positive / negative sampling of matched anchors (torchvision BalancedPositiveNegativeSampler).

Input is the output of `kdet.ops.match`: >= 0 positive, -1 (below the low threshold) negative, -2 ignored.
(torchvision's sampler takes labels 1 / 0 / -1 for the same three cases.) Up to
int(num_samples * positive_fraction) positives are drawn uniformly without replacement; the rest of the
num_samples budget is filled with negatives, so an image with few positives gets more negatives.

Graph-safe: a uniform random key per element and a rank among the candidates replace torch.randperm, so the
shapes stay static and it runs inside tf.data, tf.function and distribution strategies.
"""
import tensorflow as tf


def _select_random(candidates, count, keys):
    """candidates: [..., N] bool; count: [...] int32; keys: [..., N] float in [0, 1) -> [..., N] bool,
    `count` of the candidates chosen uniformly (the ones with the largest keys)."""
    ranked_keys = tf.where(candidates, keys, -1.0)
    order = tf.argsort(ranked_keys, axis=-1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=-1, stable=True)  # position of each element in the descending order
    return candidates & (rank < count[..., None])


def sample_balanced(matches, num_samples, positive_fraction, seed=None):
    """Pick a balanced minibatch of anchors.

    Args:
        matches: [N] or [B, N] int: matched gt index (>= 0), -1 negative, -2 ignored.
        num_samples: anchors per image (torchvision batch_size_per_image, e.g. 256 for the RPN, 512 for RoI heads).
        positive_fraction: at most this fraction of num_samples are positives (0.5 RPN, 0.25 RoI heads).
        seed: None for the global TF random state, or an int / shape-[2] int tensor for a reproducible
            (stateless) draw.
    Returns:
        (positive_mask, negative_mask): two [N] or [B, N] bool tensors, disjoint; per image
        positives = min(#positive, int(num_samples * positive_fraction)) and
        negatives = min(#negative, num_samples - positives).
    """
    matches = tf.convert_to_tensor(matches)
    positive = matches >= 0
    negative = tf.equal(matches, -1)
    max_positive = int(num_samples * positive_fraction)
    num_positive = tf.minimum(tf.reduce_sum(tf.cast(positive, tf.int32), axis=-1), max_positive)
    num_negative = tf.minimum(tf.reduce_sum(tf.cast(negative, tf.int32), axis=-1), num_samples - num_positive)

    shape = tf.shape(matches)
    if seed is None:
        keys = tf.random.uniform(shape)
    else:
        seed = tf.convert_to_tensor(seed, tf.int32)
        if seed.shape.rank == 0:
            seed = tf.stack([seed, tf.constant(0, tf.int32)])
        keys = tf.random.stateless_uniform(shape, seed=seed)
    # One set of keys serves both draws: positives and negatives are disjoint sets.
    return _select_random(positive, num_positive, keys), _select_random(negative, num_negative, keys)
