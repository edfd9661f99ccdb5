"""kdet.ops.sample_balanced: counts as torchvision's BalancedPositiveNegativeSampler, uniform, graph-safe."""
import numpy as np
import pytest
import tensorflow as tf

from kdet.ops import sample_balanced


def expected_counts(matches, num_samples, positive_fraction):
    """torchvision: num_pos = min(#pos, int(n * f)), num_neg = min(#neg, n - num_pos)."""
    positives = int(np.sum(matches >= 0))
    negatives = int(np.sum(matches == -1))
    num_pos = min(positives, int(num_samples * positive_fraction))
    return num_pos, min(negatives, num_samples - num_pos)


@pytest.mark.parametrize("seed", range(6))
def test_counts_and_membership_match_torchvision_rule(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(50, 3000))
    matches = rng.choice([-2, -1, 0, 1, 2, 3], size=size, p=[0.2, 0.6, 0.05, 0.05, 0.05, 0.05])
    if seed == 0:
        matches[matches >= 0] = -1  # no positives: all budget goes to negatives
    if seed == 1:
        matches[:] = np.where(matches == -1, -2, matches)  # no negatives
    num_samples, fraction = [(256, 0.5), (512, 0.25), (64, 0.5)][seed % 3]
    positive, negative = (m.numpy() for m in sample_balanced(matches, num_samples, fraction, seed=seed))
    num_pos, num_neg = expected_counts(matches, num_samples, fraction)
    assert positive.sum() == num_pos and negative.sum() == num_neg
    assert np.all(matches[positive] >= 0) and np.all(matches[negative] == -1)
    assert not np.any(positive & negative)


def test_few_positives_are_topped_up_with_negatives():
    matches = np.array([0] * 10 + [-1] * 1000 + [-2] * 50)
    positive, negative = sample_balanced(matches, 256, 0.5, seed=1)
    assert int(tf.reduce_sum(tf.cast(positive, tf.int32))) == 10
    assert int(tf.reduce_sum(tf.cast(negative, tf.int32))) == 246


def test_seeded_draw_is_reproducible_and_seeds_differ():
    matches = np.array([0] * 100 + [-1] * 900)
    first = sample_balanced(matches, 64, 0.25, seed=5)[1].numpy()
    again = sample_balanced(matches, 64, 0.25, seed=5)[1].numpy()
    other = sample_balanced(matches, 64, 0.25, seed=6)[1].numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_draw_is_uniform_over_candidates():
    matches = np.array([0] * 20 + [-1] * 20)
    hits = sample_balanced(np.tile(matches, (400, 1)), 10, 0.5, seed=0)[0].numpy().sum(axis=0)  # 400 draws
    # each of the 20 positives is drawn with probability 5 / 20 = 0.25 -> 100 of 400 (std about 8.7)
    assert np.all(np.abs(hits[:20] - 100) < 40), hits[:20]
    assert hits[20:].sum() == 0


def test_batched_and_unseeded_in_graph():
    matches = np.stack([np.array([0] * 30 + [-1] * 70), np.array([-1] * 95 + [1] * 5)])

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def draw(m):
        return sample_balanced(m, 32, 0.5)

    positive, negative = (x.numpy() for x in draw(matches))
    assert positive.shape == (2, 100)
    np.testing.assert_array_equal(positive.sum(axis=1), [16, 5])
    np.testing.assert_array_equal(negative.sum(axis=1), [16, 27])
