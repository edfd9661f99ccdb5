import numpy as np
import pytest

from kdet.errors import DataError
from kdet.metrics.iou import box_area, box_iou, mean_box_iou, paired_box_iou


def _loop_iou(a, b):
    """Obviously-correct reference: one pair at a time, areas from the corner differences."""
    out = np.zeros((len(a), len(b)))
    for i, (ay1, ax1, ay2, ax2) in enumerate(a):
        for j, (by1, bx1, by2, bx2) in enumerate(b):
            ih = max(0.0, min(ay2, by2) - max(ay1, by1))
            iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
            inter = ih * iw
            union = (ay2 - ay1) * (ax2 - ax1) + (by2 - by1) * (bx2 - bx1) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def test_box_iou_hand_values():
    base = [[0, 0, 10, 10]]
    others = [[0, 0, 10, 10],      # identical
              [0, 5, 10, 15],      # half shifted in x: 50 / 150
              [5, 5, 15, 15],      # quarter overlap: 25 / 175
              [2, 2, 4, 4],        # contained: 4 / 100
              [20, 20, 30, 30],    # disjoint
              [10, 0, 20, 10]]     # touching edge only
    expected = [1.0, 1 / 3, 1 / 7, 0.04, 0.0, 0.0]
    np.testing.assert_allclose(box_iou(base, others)[0], expected, atol=1e-12)
    np.testing.assert_allclose(box_iou(others, base)[:, 0], expected, atol=1e-12)


def test_box_iou_matches_loop_reference_on_random_boxes():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 100, (2, 30, 2))
    sizes = rng.uniform(0, 40, (2, 30, 2))
    a = np.concatenate([corners[0], corners[0] + sizes[0]], 1)
    b = np.concatenate([corners[1], corners[1] + sizes[1]], 1)
    result = box_iou(a, b)
    assert result.shape == (30, 30)
    np.testing.assert_allclose(result, _loop_iou(a, b), atol=1e-5)
    np.testing.assert_allclose(paired_box_iou(a, b), np.diag(_loop_iou(a, b)), atol=1e-5)


def test_box_iou_edge_cases():
    assert box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    assert box_iou([[0, 0, 1, 1]], []).shape == (1, 0)
    # Zero-area boxes give 0, not NaN.
    assert box_iou([[3, 3, 3, 3]], [[3, 3, 3, 3]])[0, 0] == 0.0
    np.testing.assert_allclose(box_area([[0, 0, 2, 3], [5, 5, 4, 4]]), [6.0, 0.0])
    with pytest.raises(DataError, match="boxes1"):
        box_iou([[0, 0, 1]], [[0, 0, 1, 1]])


def test_mean_box_iou():
    pred = [[0, 0, 10, 10], [0, 5, 10, 15], [20, 20, 30, 30]]
    gt = [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]]
    assert mean_box_iou(pred, gt) == pytest.approx((1 + 1 / 3 + 0) / 3, abs=1e-12)
    assert np.isnan(mean_box_iou(np.zeros((0, 4)), np.zeros((0, 4))))
    with pytest.raises(DataError, match="pair up"):
        mean_box_iou(pred, gt[:2])
