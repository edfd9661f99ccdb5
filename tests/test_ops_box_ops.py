"""kdet.ops.box_ops against loop-by-loop numpy references (torchvision formulas, yxyx axes)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from kdet.errors import ConfigError
from kdet.ops import box_area, box_iou, clip_boxes, convert_format, decode_boxes, encode_boxes


def random_boxes(rng, count, size=100.0, max_extent=40.0):
    corner = rng.uniform(-10, size, (count, 2))
    extent = rng.uniform(0, max_extent, (count, 2))
    return np.concatenate([corner, corner + extent], axis=1).astype(np.float32)


def iou_reference(a, b):
    out = np.zeros((len(a), len(b)), np.float64)
    for i, (ay1, ax1, ay2, ax2) in enumerate(a.astype(np.float64)):
        for j, (by1, bx1, by2, bx2) in enumerate(b.astype(np.float64)):
            inter = max(0.0, min(ay2, by2) - max(ay1, by1)) * max(0.0, min(ax2, bx2) - max(ax1, bx1))
            union = (ay2 - ay1) * (ax2 - ax1) + (by2 - by1) * (bx2 - bx1) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def encode_reference(box, anchor, weights):
    wy, wx, wh, ww = weights
    by1, bx1, by2, bx2 = box.astype(np.float64)
    ay1, ax1, ay2, ax2 = anchor.astype(np.float64)
    h, w, ah, aw = by2 - by1, bx2 - bx1, ay2 - ay1, ax2 - ax1
    cy, cx, acy, acx = by1 + h / 2, bx1 + w / 2, ay1 + ah / 2, ax1 + aw / 2
    return [wy * (cy - acy) / ah, wx * (cx - acx) / aw, wh * math.log(h / ah), ww * math.log(w / aw)]


def decode_reference(delta, anchor, weights, clamp):
    wy, wx, wh, ww = weights
    ty, tx, th, tw = delta.astype(np.float64)
    ay1, ax1, ay2, ax2 = anchor.astype(np.float64)
    ah, aw = ay2 - ay1, ax2 - ax1
    cy, cx = ay1 + ah / 2 + ty / wy * ah, ax1 + aw / 2 + tx / wx * aw
    h, w = math.exp(min(th / wh, clamp)) * ah, math.exp(min(tw / ww, clamp)) * aw
    return [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]


def test_box_area_hand_values_and_inverted_boxes():
    boxes = [[0, 0, 10, 20], [5, 5, 5, 9], [10, 10, 0, 20], [1.5, 2.0, 2.0, 4.5]]
    np.testing.assert_allclose(box_area(boxes).numpy(), [200, 0, 0, 1.25])


@pytest.mark.parametrize("seed", range(5))
def test_box_iou_matches_reference(seed):
    rng = np.random.default_rng(seed)
    a, b = random_boxes(rng, 17), random_boxes(rng, 11)
    a[0] = a[0, [0, 1, 0, 1]]  # degenerate (zero area) rows
    b[0] = b[0, [0, 1, 0, 1]]
    np.testing.assert_allclose(box_iou(a, b).numpy(), iou_reference(a, b), atol=1e-5)


def test_box_iou_hand_values():
    base = [[0, 0, 10, 10]]
    others = [[0, 0, 10, 10], [0, 5, 10, 15], [5, 5, 15, 15], [2, 2, 4, 4], [20, 20, 30, 30], [10, 0, 20, 10]]
    np.testing.assert_allclose(box_iou(base, others).numpy()[0], [1, 1 / 3, 1 / 7, 0.04, 0, 0], atol=1e-6)


def test_box_iou_batched_and_empty():
    rng = np.random.default_rng(7)
    a = np.stack([random_boxes(rng, 6) for _ in range(3)])
    b = np.stack([random_boxes(rng, 4) for _ in range(3)])
    batched = box_iou(a, b).numpy()
    assert batched.shape == (3, 6, 4)
    for i in range(3):
        np.testing.assert_allclose(batched[i], iou_reference(a[i], b[i]), atol=1e-5)
    assert box_iou(np.zeros((0, 4), np.float32), b[0]).shape == (0, 4)
    assert box_iou(a[0], np.zeros((0, 4), np.float32)).shape == (6, 0)
    # two zero-area boxes at the same place: union 0 -> IoU 0, not nan
    assert box_iou([[3, 3, 3, 3]], [[3, 3, 3, 3]]).numpy()[0, 0] == 0.0


def test_clip_boxes_scalar_and_per_image_sizes():
    boxes = np.array([[-5, -3, 50, 80], [10, 20, 30, 40], [120, 130, 140, 150]], np.float32)
    np.testing.assert_array_equal(clip_boxes(boxes, 60, 70).numpy(),
                                  [[0, 0, 50, 70], [10, 20, 30, 40], [60, 70, 60, 70]])
    batched = clip_boxes(np.stack([boxes, boxes]), tf.constant([[60.0], [100.0]]), tf.constant([[70.0], [200.0]]))
    np.testing.assert_array_equal(batched.numpy()[1], [[0, 0, 50, 80], [10, 20, 30, 40], [100, 130, 100, 150]])


def test_convert_format_round_trips_and_rejects_unknown_names():
    boxes = np.array([[10, 20, 50, 80]], np.float32)
    np.testing.assert_allclose(convert_format(boxes, "yxyx", "xyxy"), [[20, 10, 80, 50]])
    np.testing.assert_allclose(convert_format(boxes, "yxyx", "center_xywh"), [[50, 30, 60, 40]])
    relative = convert_format(boxes, "yxyx", "rel_yxyx", height=100, width=200)
    np.testing.assert_allclose(relative, [[0.1, 0.1, 0.5, 0.4]], atol=1e-6)
    np.testing.assert_allclose(convert_format(relative, "rel_yxyx", "yxyx", height=100, width=200), boxes, atol=1e-4)
    with pytest.raises(ConfigError, match="cannot convert"):
        convert_format(boxes, "yxyx", "ltrb")


@pytest.mark.parametrize("seed", range(4))
def test_encode_decode_match_reference_and_round_trip(seed):
    rng = np.random.default_rng(seed)
    anchors = random_boxes(rng, 50) + np.array([0, 0, 1, 1], np.float32)  # positive sizes
    gt = random_boxes(rng, 50) + np.array([0, 0, 1, 1], np.float32)
    weights = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (10.0, 5.0, 2.0, 1.0)][seed % 3]
    deltas = encode_boxes(gt, anchors, weights).numpy()
    expected = np.array([encode_reference(g, a, weights) for g, a in zip(gt, anchors)])
    np.testing.assert_allclose(deltas, expected, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(decode_boxes(deltas, anchors, weights).numpy(), gt, atol=1e-3)
    codes = rng.normal(0, 2, (50, 4)).astype(np.float32)
    expected = np.array([decode_reference(c, a, weights, math.log(1000 / 16)) for c, a in zip(codes, anchors)])
    np.testing.assert_allclose(decode_boxes(codes, anchors, weights).numpy(), expected, atol=2e-3, rtol=1e-5)


def test_decode_clamps_large_size_deltas_and_broadcasts():
    anchors = np.array([[0, 0, 10, 20]], np.float32)
    decoded = decode_boxes([[[0, 0, 50, 50]], [[0, 0, 0, 0]]], anchors, clamp=math.log(4.0)).numpy()
    np.testing.assert_allclose(decoded[0, 0], [-15, -30, 25, 50], atol=1e-4)  # exp capped at 4
    np.testing.assert_allclose(decoded[1, 0], anchors[0], atol=1e-6)


def test_encoding_is_the_lectures_parametrisation():
    # anchor centre (20, 30), size (h, w) = (10, 20); box centre (25, 34), size (20, 10)
    deltas = encode_boxes([[15, 29, 35, 39]], [[15, 20, 25, 40]]).numpy()[0]
    np.testing.assert_allclose(deltas, [0.5, 0.2, math.log(2.0), math.log(0.5)], atol=1e-6)


def test_box_ops_trace_in_a_graph():
    @tf.function(input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None, 4])])
    def pipeline(boxes, anchors):
        return decode_boxes(encode_boxes(boxes, anchors), anchors), box_iou(boxes, anchors)

    boxes = np.array([[1, 2, 30, 40], [5, 5, 9, 9]], np.float32)
    decoded, iou = pipeline(boxes, boxes + 1)
    np.testing.assert_allclose(decoded.numpy(), boxes, atol=1e-4)
    assert iou.shape == (2, 2)
