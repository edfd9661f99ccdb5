"""Anchor targets (kdet.ops.anchor_targets): RetinaNet's ignored band and SSD's forced best anchor against loop
references, degenerate boxes, images and batches without objects."""
import numpy as np
import pytest
import tensorflow as tf

from kdet.ops.anchor_targets import IGNORE, NEGATIVE, anchor_targets, match_anchors


def iou_reference(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            ih = max(min(p[2], q[2]) - max(p[0], q[0]), 0)
            iw = max(min(p[3], q[3]) - max(p[1], q[1]), 0)
            inter = ih * iw
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def usable(boxes, labels):
    return [j for j in range(len(labels)) if labels[j] >= 0 and boxes[j][2] > boxes[j][0] and boxes[j][3] > boxes[j][1]]


def match_reference(anchors, boxes, labels, matcher, fg, bg):
    """One image, loops: torchvision Matcher (+ low-quality) or SSDMatcher semantics, on the usable rows only."""
    rows = usable(boxes, labels)
    iou = iou_reference(anchors, boxes[rows]) if rows else np.zeros((len(anchors), 0))
    rows = [r for r, best in zip(rows, iou.max(axis=0) if rows else []) if best > 0]
    iou = iou_reference(anchors, boxes[rows]) if rows else np.zeros((len(anchors), 0))
    result = []
    for n in range(len(anchors)):
        if not rows:
            result.append(NEGATIVE)
            continue
        best = int(np.argmax(iou[n]))
        value = iou[n, best]
        low = bg if matcher == "retinanet" else fg
        result.append(rows[best] if value >= fg else (NEGATIVE if value < low else IGNORE))
    for j, row in enumerate(rows):
        if matcher == "retinanet":  # every anchor tied at the object's best IoU goes to its own best object
            for n in np.flatnonzero(iou[:, j] == iou[:, j].max()):
                result[n] = rows[int(np.argmax(iou[n]))]
        else:  # the object's first best anchor is forced to it; later objects win
            result[int(np.argmax(iou[:, j]))] = row
    return np.array(result)


def encode_reference(box, anchor, weights):
    ay, ax = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
    ah, aw = anchor[2] - anchor[0], anchor[3] - anchor[1]
    by, bx = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    bh, bw = box[2] - box[0], box[3] - box[1]
    return [weights[0] * (by - ay) / ah, weights[1] * (bx - ax) / aw, weights[2] * np.log(bh / ah),
            weights[3] * np.log(bw / aw)]


def random_case(rng, num_anchors=300, num_boxes=6, size=100.0):
    centres = rng.uniform(0, size, (num_anchors, 2))
    half = rng.uniform(4, 30, (num_anchors, 2))
    anchors = np.concatenate([centres - half, centres + half], axis=1).astype(np.float32)
    b_centres = rng.uniform(10, size - 10, (2, num_boxes, 2))
    b_half = rng.uniform(5, 25, (2, num_boxes, 2))
    boxes = np.concatenate([b_centres - b_half, b_centres + b_half], axis=-1).astype(np.float32)
    labels = rng.integers(0, 4, (2, num_boxes)).astype(np.int32)
    labels[0, -2:] = -1                        # padding rows
    boxes[1, 1] = [40, 40, 40, 70]             # zero height: dropped
    boxes[1, 2] = [60, 50, 55, 80]             # inverted: dropped
    boxes[0, 0] = boxes[0, 1] + 0.5            # near-duplicate objects: ties and competition
    return anchors, boxes, labels


@pytest.mark.parametrize("matcher,fg,bg", [("retinanet", 0.5, 0.4), ("retinanet", 0.6, 0.3), ("ssd", 0.5, 0.5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matching_against_loop_reference(matcher, fg, bg, seed):
    anchors, boxes, labels = random_case(np.random.default_rng(seed))
    result = match_anchors(anchors, boxes, labels, matcher, fg, bg).numpy()
    for b in range(2):
        np.testing.assert_array_equal(result[b], match_reference(anchors, boxes[b], labels[b], matcher, fg, bg))
    if matcher == "retinanet":
        assert (result == IGNORE).any() and (result >= 0).any() and (result == NEGATIVE).any()
    assert not np.isin(result[1], [1, 2]).any(), "degenerate boxes must never be matched"


@pytest.mark.parametrize("matcher,weights", [("retinanet", (1.0, 1.0, 1.0, 1.0)), ("ssd", (10.0, 10.0, 5.0, 5.0))])
def test_targets_labels_and_deltas(matcher, weights):
    anchors, boxes, labels = random_case(np.random.default_rng(3))
    targets = anchor_targets(anchors, boxes, labels, matcher, 0.5, 0.4, weights)
    matches = match_anchors(anchors, boxes, labels, matcher, 0.5, 0.4).numpy()
    out_labels, deltas = targets["labels"].numpy(), targets["box_targets"].numpy()
    for b in range(2):
        for n in range(len(anchors)):
            m = matches[b, n]
            if m >= 0:
                assert out_labels[b, n] == labels[b, m]
                np.testing.assert_allclose(deltas[b, n], encode_reference(boxes[b, m], anchors[n], weights),
                                           rtol=1e-5, atol=1e-5)
            else:
                assert out_labels[b, n] == m and not deltas[b, n].any()
    assert np.isfinite(deltas).all()


def test_images_and_batches_without_objects():
    anchors, boxes, labels = random_case(np.random.default_rng(4))
    labels[1] = -1  # second image has no objects
    targets = anchor_targets(anchors, boxes, labels)
    assert (targets["labels"].numpy()[1] == NEGATIVE).all()
    assert (targets["labels"].numpy()[0] >= 0).any()
    for matcher in ("retinanet", "ssd"):  # M = 0: nothing at all in the batch
        empty = anchor_targets(anchors, np.zeros((3, 0, 4), np.float32), np.zeros((3, 0), np.int32), matcher)
        assert empty["labels"].shape == (3, len(anchors)) and (empty["labels"].numpy() == NEGATIVE).all()
        assert not empty["box_targets"].numpy().any()


def test_box_outside_every_anchor_is_dropped():
    anchors = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], np.float32)
    boxes = np.array([[[100, 100, 120, 130], [0, 0, 10, 9]]], np.float32)
    labels = np.array([[2, 1]], np.int32)
    for matcher in ("retinanet", "ssd"):
        result = anchor_targets(anchors, boxes, labels, matcher)["labels"].numpy()
        assert 2 not in result  # no anchor claimed by the unreachable box
        assert result[0, 0] == 1


def test_works_inside_tf_data():
    anchors, boxes, labels = random_case(np.random.default_rng(5))
    ds = tf.data.Dataset.from_tensors({"boxes": boxes, "labels": labels}).map(
        lambda b: anchor_targets(anchors, b["boxes"], b["labels"]))
    eager = anchor_targets(anchors, boxes, labels)
    graph = next(iter(ds))
    np.testing.assert_array_equal(graph["labels"].numpy(), eager["labels"].numpy())
