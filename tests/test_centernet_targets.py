"""CenterNet targets and losses against numpy transcriptions of the reference code (xingyizhou/CenterNet
src/lib/utils/image.py gaussian_radius / gaussian2D / draw_umich_gaussian, src/lib/datasets/sample/ctdet.py,
src/lib/models/losses.py _neg_loss / RegL1Loss) and hand-computed values."""
import math

import numpy as np
import pytest
import tensorflow as tf

from kdet.losses.centernet import center_l1_loss, penalty_reduced_focal_loss
from kdet.ops.heatmap import centernet_targets, gaussian_radius


# -- the reference, line by line (numpy, float64) ---------------------------------------------------------------------
def reference_radius(det_size, min_overlap=0.7):
    height, width = det_size
    a1, b1 = 1, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2 = 4, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + np.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def reference_gaussian2d(shape, sigma=1):
    m, n = [(ss - 1.) / 2. for ss in shape]
    y, x = np.ogrid[-m:m + 1, -n:n + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h


def reference_draw(heatmap, center, radius):
    diameter = 2 * radius + 1
    gaussian = reference_gaussian2d((diameter, diameter), sigma=diameter / 6)
    x, y = int(center[0]), int(center[1])
    height, width = heatmap.shape[0:2]
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    masked_heatmap = heatmap[y - top:y + bottom, x - left:x + right]
    masked_gaussian = gaussian[radius - top:radius + bottom, radius - left:radius + right]
    if min(masked_gaussian.shape) > 0 and min(masked_heatmap.shape) > 0:
        np.maximum(masked_heatmap, masked_gaussian, out=masked_heatmap)
    return heatmap


def reference_targets(boxes, labels, image_size, num_classes, stride=4):
    """ctdet.py's loop for one image, boxes yxyx pixels clipped to the image (kdet's continuous-pixel convention)."""
    out_h, out_w = math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)
    hm = np.zeros((num_classes, out_h, out_w), np.float64)
    ind, wh, reg, mask = [], [], [], []
    for box, label in zip(boxes, labels):
        y1, x1, y2, x2 = np.clip(np.asarray(box, np.float64), 0, [image_size[0], image_size[1]] * 2) / stride
        h, w = y2 - y1, x2 - x1
        if label < 0 or h <= 0 or w <= 0:
            ind.append(0), wh.append((0, 0)), reg.append((0, 0)), mask.append(0)
            continue
        radius = max(0, int(reference_radius((math.ceil(h), math.ceil(w)))))
        ct = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
        ct_int = np.minimum(np.floor(ct), [out_w - 1, out_h - 1]).astype(np.int32)
        reference_draw(hm[label], ct_int, radius)
        ind.append(ct_int[1] * out_w + ct_int[0]), wh.append((h, w)), mask.append(1)
        reg.append((ct[1] - ct_int[1], ct[0] - ct_int[0]))
    return hm.transpose(1, 2, 0), np.array(ind), np.array(wh), np.array(reg), np.array(mask)


# -- tests ------------------------------------------------------------------------------------------------------------
def test_radius_matches_reference_with_its_quirk():
    sizes = [(1, 1), (1, 30), (3, 4), (12, 7), (25, 25), (40, 90), (128, 16)]
    ours = gaussian_radius(tf.constant([s[0] for s in sizes], tf.float32),
                           tf.constant([s[1] for s in sizes], tf.float32)).numpy()
    expected = [reference_radius(s) for s in sizes]
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
    # The quirk: the third root divides by 2 where 4a x^2 + ... needs 2a = 5.6, so for a 25 x 25 box the radius is
    # 6.83 cells (r3 as written, the smallest of 47.7, 91.8, 6.83) where the root it solves for is 2.44; kdet keeps it.
    b3, disc = -2 * 0.7 * 50, math.sqrt((2 * 0.7 * 50) ** 2 + 4 * 4 * 0.7 * 0.3 * 625)
    assert gaussian_radius(25.0, 25.0).numpy() == pytest.approx((b3 + disc) / 2, rel=1e-6)
    assert (b3 + disc) / 2 == pytest.approx(6.8330, abs=1e-4)
    assert (b3 + disc) / (2 * 4 * 0.7) == pytest.approx(2.4404, abs=1e-4)


def test_heatmap_and_regression_targets_match_reference():
    image_size, num_classes = (90, 70), 3      # not multiples of 4: a 23 x 18 output grid
    boxes = [[10, 10, 40, 50],     # an ordinary box
             [14, 20, 44, 58],     # same class, overlapping: element-wise max
             [60, 0, 90, 30],      # touching the left and bottom border
             [-20, 50, 30, 95],    # outside the image: clipped first
             [33, 33, 35, 34],     # smaller than one output cell: radius 0, one cell of 1
             [5, 5, 5, 40],        # zero height: no target
             [0, 0, 0, 0]]         # padding
    labels = [0, 0, 2, 1, 1, 2, -1]
    y = centernet_targets(tf.constant([boxes], tf.float32), tf.constant([labels], tf.int32), image_size, num_classes)
    heatmap, ind, wh, reg, mask = reference_targets(boxes, labels, image_size, num_classes)
    assert y["heatmap"].shape == (1, 23, 18, 3)
    np.testing.assert_allclose(y["heatmap"].numpy()[0], heatmap, atol=1e-6)
    np.testing.assert_array_equal(y["mask"].numpy()[0], mask)
    np.testing.assert_array_equal(y["indices"].numpy()[0], ind)
    np.testing.assert_allclose(y["sizes"].numpy()[0], wh, atol=1e-6)
    np.testing.assert_allclose(y["offsets"].numpy()[0], reg, atol=1e-6)
    assert mask.tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert (heatmap == 1).sum() == 5                        # one exact peak per drawn object
    tiny = heatmap[..., 1]
    assert tiny[8, 8] == 1 and tiny[7:10, 7:10].sum() == 1  # the 2 x 1 px object: a single cell


def test_heatmap_in_a_trace_of_unknown_size_equals_static():
    boxes = tf.constant([[[10, 10, 40, 50], [60, 0, 90, 30]], [[0, 0, 0, 0], [0, 0, 0, 0]]], tf.float32)
    labels = tf.constant([[0, 2], [-1, -1]], tf.int32)
    static = centernet_targets(boxes, labels, (90, 70), 3)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3])])
    def relaxed(images):
        shape = tf.shape(images)
        return centernet_targets(boxes, labels, (shape[1], shape[2]), 3)

    dynamic = relaxed(tf.zeros([2, 90, 70, 3]))
    for key, value in static.items():
        np.testing.assert_allclose(dynamic[key].numpy(), value.numpy(), atol=1e-6, err_msg=key)
    assert not static["heatmap"].numpy()[1].any()           # the image with no object: an all-zero heatmap


def focal_reference(target, p, alpha=2, beta=4):
    """losses.py _neg_loss on probabilities, float64."""
    pos = target == 1
    pos_loss = (np.log(p) * (1 - p) ** alpha)[pos].sum()
    neg_loss = (np.log(1 - p) * p ** alpha * (1 - target) ** beta)[~pos].sum()
    num_pos = pos.sum()
    return -neg_loss if num_pos == 0 else -(pos_loss + neg_loss) / num_pos


def test_focal_loss_on_hand_computed_values():
    # p = 0.5 at a peak; p = 0.5 at Y = 0.5; p = 0.75 at Y = 0; N = 1
    target = tf.constant([1.0, 0.5, 0.0])
    logits = tf.constant([0.0, 0.0, math.log(3.0)])
    expected = -(0.5 ** 2 * math.log(0.5) + 0.5 ** 4 * 0.5 ** 2 * math.log(0.5) + 0.75 ** 2 * math.log(0.25))
    assert penalty_reduced_focal_loss(target, logits).numpy() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.963908, abs=1e-6)
    # two peaks: the sum halves
    two = penalty_reduced_focal_loss(tf.constant([1.0, 1.0]), tf.constant([0.0, 0.0])).numpy()
    assert two == pytest.approx(0.25 * math.log(2), rel=1e-6)


def test_focal_loss_matches_reference_and_survives_empty_and_extreme_inputs():
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 0.99, (2, 9, 11, 3))
    target[0, 3, 4, 1] = target[1, 0, 0, 2] = target[1, 8, 10, 0] = 1.0
    logits = rng.normal(-2, 1.5, target.shape)
    ours = penalty_reduced_focal_loss(tf.constant(target, tf.float32), tf.constant(logits, tf.float32)).numpy()
    assert ours == pytest.approx(focal_reference(target, 1 / (1 + np.exp(-logits))), rel=1e-5)
    empty = np.zeros_like(target)                           # no object in the batch: negatives only, / 1
    ours = penalty_reduced_focal_loss(tf.constant(empty, tf.float32), tf.constant(logits, tf.float32)).numpy()
    assert ours == pytest.approx(focal_reference(empty, 1 / (1 + np.exp(-logits))), rel=1e-5)
    extreme = tf.Variable(np.where(target == 1, -30.0, 30.0).astype(np.float32))  # every prediction maximally wrong
    with tf.GradientTape() as tape:
        loss = penalty_reduced_focal_loss(tf.constant(target, tf.float32), extreme)
    assert np.isfinite(loss.numpy()) and np.isfinite(tape.gradient(loss, extreme).numpy()).all()


def test_l1_at_centres_only():
    prediction = np.zeros((2, 3, 4, 2), np.float32)
    prediction[0, 1, 2] = [5.0, 7.0]                       # index 1 * 4 + 2 = 6
    prediction[1, 2, 3] = [1.0, 1.0]                       # index 11
    prediction[1, 0, 0] = [100.0, 100.0]                   # a cell with no object: never read
    indices = tf.constant([[6, 0], [11, 0]], tf.int32)
    target = tf.constant([[[4.0, 9.0], [0, 0]], [[1.5, 0.0], [0, 0]]], tf.float32)
    mask = tf.constant([[1.0, 0.0], [1.0, 0.0]])
    loss = center_l1_loss(tf.constant(prediction), indices, target, mask).numpy()
    assert loss == pytest.approx((1 + 2 + 0.5 + 1) / (4 + 1e-4), rel=1e-6)
    assert center_l1_loss(tf.constant(prediction), indices, target, tf.zeros([2, 2])).numpy() == 0.0
