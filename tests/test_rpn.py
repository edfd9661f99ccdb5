"""RPN targets, sampling, loss and proposals against slow, obviously-correct numpy references (torchvision's rules)."""
import functools

import numpy as np
import pytest
import tensorflow as tf

from kdet.heads.rpn import IGNORE, SMOOTH_L1_BETA, RPNHead, rpn_loss, rpn_targets
from kdet.layers.proposals import ProposalGenerator
from kdet.losses.box import smooth_l1
from kdet.ops import multilevel_anchors


# -- numpy references -----------------------------------------------------------------------------------------------
def np_iou(a, b):
    """[N, 4] x [M, 4] yxyx -> [N, M]."""
    out = np.zeros((len(a), len(b)), np.float64)
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            ih = max(min(p[2], q[2]) - max(p[0], q[0]), 0.0)
            iw = max(min(p[3], q[3]) - max(p[1], q[1]), 0.0)
            inter = ih * iw
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def np_assign(anchors, boxes, high=0.7, low=0.3):
    """torchvision Matcher(0.7, 0.3, allow_low_quality_matches=True) -> (labels 1/0/-1, matched gt index)."""
    if len(boxes) == 0:
        return np.zeros(len(anchors), int), np.zeros(len(anchors), int)
    iou = np_iou(anchors, boxes)
    best = iou.argmax(axis=1)
    best_iou = iou.max(axis=1)
    labels = np.where(best_iou >= high, 1, np.where(best_iou < low, 0, -1))
    for j in range(len(boxes)):  # each box's best anchors (ties included) are positive, matched to their own best
        labels[iou[:, j] == iou[:, j].max()] = 1
    return labels, best


def np_encode(box, anchor, weights=(1.0, 1.0, 1.0, 1.0)):
    wy, wx, wh, ww = weights
    ah, aw = anchor[2] - anchor[0], anchor[3] - anchor[1]
    bh, bw = box[2] - box[0], box[3] - box[1]
    return np.array([wy * ((box[0] + box[2]) / 2 - (anchor[0] + anchor[2]) / 2) / ah,
                     wx * ((box[1] + box[3]) / 2 - (anchor[1] + anchor[3]) / 2) / aw,
                     wh * np.log(bh / ah), ww * np.log(bw / aw)])


def np_nms(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(np_iou(boxes[i:i + 1], boxes[k:k + 1])[0, 0] <= threshold for k in keep):
            keep.append(i)
    return keep


def np_decode(delta, anchor):
    ah, aw = anchor[2] - anchor[0], anchor[3] - anchor[1]
    cy, cx = anchor[0] + 0.5 * ah + delta[0] * ah, anchor[1] + 0.5 * aw + delta[1] * aw
    h = np.exp(min(delta[2], np.log(1000 / 16))) * ah
    w = np.exp(min(delta[3], np.log(1000 / 16))) * aw
    return np.array([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])


def np_filter_proposals(objectness, deltas, anchors, per_level, size, pre_nms, post_nms, nms, min_size):
    """torchvision RegionProposalNetwork.filter_proposals for one image -> (boxes [P, 4], scores [P])."""
    boxes, scores, levels, start = [], [], [], 0
    for level, count in enumerate(per_level):
        logits = objectness[start:start + count]
        top = sorted(range(count), key=lambda i: (-logits[i], i))[:pre_nms]
        for i in top:
            box = np_decode(deltas[start + i], anchors[start + i])
            box = np.clip(box, 0, [size[0], size[1], size[0], size[1]])
            if box[2] - box[0] >= min_size and box[3] - box[1] >= min_size:
                boxes.append(box)
                scores.append(1 / (1 + np.exp(-logits[i])))
                levels.append(level)
        start += count
    boxes, scores, levels = np.array(boxes), np.array(scores), np.array(levels)
    keep = []
    for level in range(len(per_level)):
        members = np.flatnonzero(levels == level)
        keep += [members[k] for k in np_nms(boxes[members], scores[members], nms)]
    keep = sorted(keep, key=lambda i: -scores[i])[:post_nms]
    return boxes[keep], scores[keep]


# -- fixtures -------------------------------------------------------------------------------------------------------
IMAGE = (96, 128)
ANCHORS = multilevel_anchors(IMAGE, (16,), ((16, 32, 64),), (0.5, 1.0, 2.0)).numpy()  # 6 x 8 x 9 = 432 anchors
# The second box sits on a 32 px anchor centred at (48, 64) (IoU > 0.7); the others only have low-quality matches.
GT = np.array([[10, 12, 40, 50], [33, 47, 63, 81], [30, 30, 36, 34]], np.float32)


def targets(boxes, labels, **kwargs):
    out = rpn_targets(ANCHORS, tf.constant(boxes, tf.float32), tf.constant(labels, tf.int32), **kwargs)
    return out["rpn_labels"].numpy(), out["rpn_box_targets"].numpy()


def test_assignment_matches_numpy_reference():
    # Sampling everything (batch = all anchors, positives unlimited) exposes the raw assignment.
    n = len(ANCHORS)
    labels, box_targets = targets(GT[None], [[0, 1, 2]], batch_size_per_image=n, positive_fraction=1.0)
    expected, matched = np_assign(ANCHORS.astype(np.float64), GT.astype(np.float64))
    np.testing.assert_array_equal(labels[0], expected)
    assert (labels[0] == 1).sum() >= 3 and (labels[0] == -1).sum() > 0  # positives, negatives, ignored all occur
    assert np.max(np_iou(ANCHORS, GT)) >= 0.7
    for i in np.flatnonzero(expected == 1):
        np.testing.assert_allclose(box_targets[0, i], np_encode(GT[matched[i]], ANCHORS[i]), atol=1e-5)
    assert not np.any(box_targets[0, expected != 1])


def test_sampling_counts_and_subsets():
    n = len(ANCHORS)
    raw, _ = np_assign(ANCHORS.astype(np.float64), GT.astype(np.float64))
    num_positive, num_negative = (raw == 1).sum(), (raw == 0).sum()
    for size, fraction in ((256, 0.5), (16, 0.25), (n, 0.5)):
        labels, _ = targets(GT[None], [[0, 1, 2]], batch_size_per_image=size, positive_fraction=fraction, seed=3)
        positives = min(num_positive, int(size * fraction))
        assert (labels[0] == 1).sum() == positives
        assert (labels[0] == 0).sum() == min(num_negative, size - positives)  # topped up with negatives
        assert np.all(raw[labels[0] == 1] == 1) and np.all(raw[labels[0] == 0] == 0)  # ignored never sampled


def test_sampling_is_uniform_over_candidates():
    # 400 images with the same boxes draw independently: each negative should be picked about equally often.
    batch = 400
    labels, _ = targets(np.repeat(GT[None], batch, 0), np.repeat([[0, 1, 2]], batch, 0), batch_size_per_image=32)
    raw, _ = np_assign(ANCHORS.astype(np.float64), GT.astype(np.float64))
    negatives = raw == 0
    expected = batch * (32 - min((raw == 1).sum(), 16)) / negatives.sum()
    counts = (labels == 0).sum(axis=0)[negatives]
    assert np.isclose(counts.mean(), expected)  # each image samples exactly 32 - positives negatives
    # Binomial spread: every count within 6 standard deviations of its expectation.
    p = expected / batch
    assert np.all(np.abs(counts - expected) <= 6 * np.sqrt(batch * p * (1 - p)))


def test_seeded_sampling_is_reproducible():
    a, _ = targets(GT[None], [[0, 1, 2]], seed=7)
    b, _ = targets(GT[None], [[0, 1, 2]], seed=7)
    c, _ = targets(GT[None], [[0, 1, 2]], seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_image_without_boxes_is_all_negative():
    labels, box_targets = targets(np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), np.int32))
    assert np.all((labels == 0).sum(axis=1) == 256) and not np.any(labels == 1)
    assert not np.any(box_targets)
    # Padding rows (label -1) are ignored the same way.
    padded, _ = targets(np.array([[GT[0], [0, 0, 0, 0]]]), [[-1, -1]])
    assert (padded == 0).sum() == 256 and not np.any(padded == 1)
    objectness = tf.random.normal(labels.shape)
    losses = rpn_loss(objectness, tf.zeros(labels.shape + (4,)), labels, box_targets)
    assert all(np.isfinite(v.numpy()) for v in losses) and losses[1].numpy() == 0.0


def test_image_smaller_than_the_anchors():
    # 32 x 32 image, anchors of 128-512 px: every IoU is small, but each box still claims its best anchor.
    anchors = multilevel_anchors((32, 32), (16,), ((128, 256, 512),), (0.5, 1.0, 2.0)).numpy()
    out = rpn_targets(anchors, tf.constant([[[4.0, 4.0, 20.0, 24.0]]]), tf.constant([[0]]))
    labels, box_targets = out["rpn_labels"].numpy(), out["rpn_box_targets"].numpy()
    assert (labels == 1).sum() >= 1 and np.all(np.isfinite(box_targets))
    expected, _ = np_assign(anchors.astype(np.float64), np.array([[4.0, 4.0, 20.0, 24.0]]))
    assert np.all(expected[labels[0] == 1] == 1)


def test_rpn_loss_matches_numpy():
    rng = np.random.default_rng(0)
    labels = rng.choice([-1, 0, 1], size=(2, 50)).astype(np.int32)
    objectness = rng.normal(size=(2, 50)).astype(np.float32)
    deltas = rng.normal(size=(2, 50, 4)).astype(np.float32)
    box_targets = np.where((labels == 1)[..., None], rng.normal(size=(2, 50, 4)), 0).astype(np.float32)
    cls, box = rpn_loss(objectness, deltas, labels, box_targets)
    sampled = labels >= 0
    p = 1 / (1 + np.exp(-objectness[sampled].astype(np.float64)))
    y = (labels[sampled] == 1).astype(np.float64)
    np.testing.assert_allclose(cls.numpy(), np.mean(-y * np.log(p) - (1 - y) * np.log(1 - p)), rtol=1e-5)
    error = np.abs(deltas - box_targets)[labels == 1].astype(np.float64)
    beta = 1 / 9
    smooth = np.where(error < beta, 0.5 * error ** 2 / beta, error - 0.5 * beta)
    np.testing.assert_allclose(box.numpy(), smooth.sum() / sampled.sum(), rtol=1e-5)
    np.testing.assert_allclose(smooth_l1(tf.constant([0.05, -0.5]), SMOOTH_L1_BETA).numpy(),
                               [0.5 * 0.05 ** 2 * 9, 0.5 - 0.5 / 9], rtol=1e-6)


def test_head_output_order_matches_anchors():
    head = RPNHead(num_anchors=3, channels=4)
    features = [tf.random.normal([2, 6, 8, 4]), tf.random.normal([2, 3, 4, 4])]
    objectness, deltas = head(features)
    assert objectness.shape == (2, 6 * 8 * 3 + 3 * 4 * 3) and deltas.shape == (2, 6 * 8 * 3 + 3 * 4 * 3, 4)
    # Element (i * W + j) * A + a of level 0 is channel a at (i, j).
    direct = head.cls_logits(head.convs[0](features[0])).numpy()
    np.testing.assert_allclose(objectness.numpy()[1, (2 * 8 + 5) * 3 + 1], direct[1, 2, 5, 1], rtol=1e-6)


@pytest.mark.parametrize("builtins", [False, True])
def test_proposals_match_numpy_filter_proposals(builtins):
    from kdet.ops import builtins_only
    size = (64, 96)
    strides, sizes = (8, 16), ((16,), (32,))
    anchors = multilevel_anchors(size, strides, sizes, (0.5, 1.0, 2.0)).numpy()
    per_level = [8 * 12 * 3, 4 * 6 * 3]
    rng = np.random.default_rng(1)
    objectness = rng.normal(size=(2, len(anchors))).astype(np.float32)
    deltas = (0.3 * rng.normal(size=(2, len(anchors), 4))).astype(np.float32)
    deltas[0, :5, 2] = -12.0  # top-scoring boxes that shrink below min_size and are dropped
    objectness[0, :5] = 5.0
    layer = ProposalGenerator(pre_nms_top_n=(50, 40), post_nms_top_n=(60, 30), nms_threshold=0.6, min_size=1.0)
    run = functools.partial(layer, objectness, deltas, anchors, anchors_per_level=per_level, image_size=size)
    if builtins:
        with builtins_only():
            out = run(training=False)
    else:
        out = run(training=False)
    for b in range(2):
        boxes, scores = np_filter_proposals(objectness[b].astype(np.float64), deltas[b].astype(np.float64),
                                            anchors.astype(np.float64), per_level, size, 40, 30, 0.6, 1.0)
        valid = out["proposal_valid"][b].numpy()
        assert valid.sum() == len(boxes)
        np.testing.assert_allclose(out["proposals"][b].numpy()[valid], boxes, atol=1e-4)
        np.testing.assert_allclose(out["proposal_scores"][b].numpy()[valid], scores, atol=1e-6)
        assert not np.any(out["proposals"][b].numpy()[~valid])
    # Training mode uses the training counts.
    assert run(training=True)["proposals"].shape == (2, 60, 4)
    # Sizes known only at run time (a trace relaxed to any input size) give the same proposals.
    relaxed = tf.function(lambda o, d, a, n0, n1, h, w: layer(o, d, a, anchors_per_level=[n0, n1], image_size=(h, w)),
                          input_signature=[tf.TensorSpec([None, None]), tf.TensorSpec([None, None, 4]),
                                           tf.TensorSpec([None, 4])] + [tf.TensorSpec([], tf.int32)] * 4)
    again = relaxed(objectness, deltas, anchors, *per_level, *size)
    for key in ("proposals", "proposal_scores", "proposal_valid"):
        np.testing.assert_array_equal(again[key].numpy(), out[key].numpy())
    assert IGNORE == -1
