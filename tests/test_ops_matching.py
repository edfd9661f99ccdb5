"""kdet.ops.match / match_padded against a numpy port of torchvision's Matcher."""
import numpy as np
import pytest
import tensorflow as tf

from kdet.errors import ConfigError
from kdet.ops import box_iou, match, match_padded


def matcher_reference(iou_anchors_by_gt, high, low, allow_low_quality):
    """torchvision Matcher.__call__ on quality = iou.T ([M gt, N anchors]); M == 0 gives all -1."""
    quality = iou_anchors_by_gt.T
    if quality.shape[0] == 0:
        return np.full(quality.shape[1], -1)
    matched_vals = quality.max(axis=0)
    matches = quality.argmax(axis=0)
    all_matches = matches.copy()
    matches[matched_vals < low] = -1
    matches[(matched_vals >= low) & (matched_vals < high)] = -2
    if allow_low_quality:
        highest = quality.max(axis=1)
        _, anchors = np.nonzero(quality == highest[:, None])
        matches[anchors] = all_matches[anchors]
    return matches


def random_boxes(rng, count, size=100.0):
    corner = rng.uniform(0, size, (count, 2))
    extent = rng.uniform(4, 40, (count, 2))
    return np.concatenate([corner, corner + extent], axis=1).astype(np.float32)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("allow_low_quality", [False, True])
def test_match_equals_reference(seed, allow_low_quality):
    rng = np.random.default_rng(seed)
    iou = box_iou(random_boxes(rng, 200), random_boxes(rng, rng.integers(1, 9))).numpy()
    if seed % 2:
        iou = np.round(iou * 10) / 10  # many exact ties, including ties for a gt's best anchor
    result = match(iou, 0.7, 0.3, allow_low_quality).numpy()
    np.testing.assert_array_equal(result, matcher_reference(iou, 0.7, 0.3, allow_low_quality))


def test_thresholds_are_inclusive_below_high_exclusive_below_low():
    iou = np.array([[0.7], [0.69], [0.3], [0.29], [0.0]], np.float32)
    np.testing.assert_array_equal(match(iou, 0.7, 0.3).numpy(), [0, -2, -2, -1, -1])
    np.testing.assert_array_equal(match(iou, 0.5, 0.5).numpy(), [0, 0, -1, -1, -1])


def test_low_quality_keeps_every_tied_best_anchor():
    iou = np.array([[0.4, 0.1], [0.4, 0.2], [0.1, 0.2], [0.0, 0.05]], np.float32)
    np.testing.assert_array_equal(match(iou, 0.7, 0.3).numpy(), [-2, -2, -1, -1])
    # gt 0's best (0.4) is tied on anchors 0 and 1; gt 1's best (0.2) on anchors 1 and 2
    np.testing.assert_array_equal(match(iou, 0.7, 0.3, True).numpy(), [0, 0, 1, -1])


def test_bad_thresholds_are_a_config_error():
    with pytest.raises(ConfigError, match="low_threshold"):
        match(np.zeros((2, 2), np.float32), 0.3, 0.7)


def test_no_ground_truth_gives_all_negative():
    empty = np.zeros((5, 0), np.float32)
    np.testing.assert_array_equal(match(empty, 0.7, 0.3, True).numpy(), [-1] * 5)
    assert match(np.zeros((0, 3), np.float32), 0.7, 0.3, True).shape == (0,)


def test_padded_ground_truth_rows_are_ignored_and_batch_matches_per_image():
    rng = np.random.default_rng(3)
    anchors = random_boxes(rng, 120)
    gt = np.stack([random_boxes(rng, 5), random_boxes(rng, 5)])
    labels = np.array([[2, 0, 1, -1, -1], [-1, -1, -1, -1, -1]])
    result = match_padded(anchors, gt, labels, 0.5, 0.4, True).numpy()
    assert result.shape == (2, 120)
    expected0 = matcher_reference(box_iou(anchors, gt[0, :3]).numpy(), 0.5, 0.4, True)
    np.testing.assert_array_equal(result[0], expected0)
    np.testing.assert_array_equal(result[1], np.full(120, -1))  # an image with padding only
    # padding rows that overlap anchors strongly must still never be matched
    gt_pad = np.concatenate([anchors[:2], anchors[:2]])[None]
    padded = match_padded(anchors, gt_pad, np.array([[0, 1, -1, -1]]), 0.5, 0.4, True).numpy()[0]
    assert set(np.unique(padded[padded >= 0])) == {0, 1}
    single = match_padded(anchors, gt[0], labels[0], 0.5, 0.4, True).numpy()
    np.testing.assert_array_equal(single, expected0)


def test_match_in_a_graph_with_unknown_gt_count():
    @tf.function(input_signature=[tf.TensorSpec([None, None])])
    def run(iou):
        return match(iou, 0.7, 0.3, True)

    iou = np.array([[0.9, 0.1], [0.2, 0.5]], np.float32)
    np.testing.assert_array_equal(run(iou).numpy(), [0, 1])
    np.testing.assert_array_equal(run(np.zeros((2, 0), np.float32)).numpy(), [-1, -1])
