"""YOLOv1 / YOLOv2 losses against loop-by-loop numpy implementations of the formulas, and the responsible-predictor
choice against hand-made cells."""
import math

import numpy as np
import pytest
import tensorflow as tf

from kdet.losses.yolo import responsible_predictor, yolo_v1_loss, yolo_v2_loss
from kdet.ops import yolo_v1_encode, yolo_v2_encode


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def iou_yxyx(a, b):
    ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def centre_box(cy, cx, h, w):
    return [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]


# -- YOLOv1 ---------------------------------------------------------------------------------------------------------

def v1_loss_reference(pred, target, nb, nc, l_coord=5.0, l_noobj=0.5):
    """The paper's eq. 3, one image, one cell, one predictor at a time."""
    batch, grid = pred.shape[0], pred.shape[1]
    terms = dict(coord=0.0, object=0.0, noobject=0.0, **{"class": 0.0})
    for b in range(batch):
        for i in range(grid):
            for j in range(grid):
                t = target[b, i, j]
                has_object = t[4] > 0
                responsible = -1
                if has_object:
                    truth = centre_box((t[0] + i) / grid, (t[1] + j) / grid, t[2], t[3])
                    ious, rmses = [], []
                    for k in range(nb):
                        y, x, sh, sw = pred[b, i, j, 5 * k:5 * k + 4]
                        ious.append(iou_yxyx(centre_box((y + i) / grid, (x + j) / grid, sh ** 2, sw ** 2), truth))
                        rmses.append(math.sqrt(((y - t[0]) / grid) ** 2 + ((x - t[1]) / grid) ** 2
                                               + (sh ** 2 - t[2]) ** 2 + (sw ** 2 - t[3]) ** 2))
                    responsible = int(np.argmax(ious)) if max(ious) > 0 else int(np.argmin(rmses))
                for k in range(nb):
                    y, x, sh, sw, conf = pred[b, i, j, 5 * k:5 * k + 5]
                    if k == responsible:
                        terms["coord"] += l_coord * ((y - t[0]) ** 2 + (x - t[1]) ** 2 + (sh - math.sqrt(t[2])) ** 2
                                                     + (sw - math.sqrt(t[3])) ** 2)
                        terms["object"] += (ious[k] - conf) ** 2
                    else:
                        terms["noobject"] += l_noobj * conf ** 2
                if has_object:
                    terms["class"] += float(np.sum((t[5:] - pred[b, i, j, 5 * nb:]) ** 2))
    return {k: v / batch for k, v in terms.items()}


@pytest.mark.parametrize("seed", range(3))
def test_v1_loss_equals_paper_formula(seed):
    rng = np.random.default_rng(seed)
    grid, nb, nc, size = 4, 2, 3, 256
    boxes = np.concatenate([rng.uniform(0, 150, (2, 6, 2)), np.zeros((2, 6, 2))], -1).astype(np.float32)
    boxes[..., 2:] = boxes[..., :2] + rng.uniform(8, 100, (2, 6, 2))
    labels = rng.integers(-1, nc, (2, 6)).astype(np.int32)
    target = yolo_v1_encode(boxes, labels, (size, size), grid, nc).numpy()
    pred = rng.normal(0.4, 0.3, (2, grid, grid, nb * 5 + nc)).astype(np.float32)
    got = {k: float(v) for k, v in yolo_v1_loss(pred, target, nb, nc).items()}
    want = v1_loss_reference(pred.astype(np.float64), target.astype(np.float64), nb, nc)
    assert target[..., 4].sum() >= 3  # several object cells, so every term is exercised
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_v1_loss_perfect_prediction_is_zero_and_gradient_flows():
    grid, nb, nc = 2, 2, 2
    target = np.zeros((1, grid, grid, 5 + nc), np.float32)
    target[0, 0, 1] = [0.5, 0.25, 0.36, 0.16, 1, 0, 1]
    pred = np.zeros((1, grid, grid, nb * 5 + nc), np.float32)
    pred[0, 0, 1, 5:10] = [0.5, 0.25, 0.6, 0.4, 1.0]  # predictor 1: exact box (sqrt sizes), confidence = IoU = 1
    pred[0, 0, 1, 10:] = [0, 1]
    terms = yolo_v1_loss(pred, target, nb, nc)
    assert all(abs(float(v)) < 1e-10 for v in terms.values()), terms
    variable = tf.Variable(pred + 0.1)
    with tf.GradientTape() as tape:
        total = tf.add_n(list(yolo_v1_loss(variable, target, nb, nc).values()))
    gradient = tape.gradient(total, variable).numpy()
    assert np.isfinite(gradient).all() and np.abs(gradient).sum() > 0


def test_responsible_predictor_hand_made_cells():
    """Cell (0,0) of a 2x2 grid, truth centred at (0.25, 0.25) relative, size 0.2 x 0.2."""
    grid, nb, nc = 2, 2, 1
    target = np.zeros((1, grid, grid, 5 + nc), np.float32)
    target[0, 0, 0] = [0.5, 0.5, 0.2, 0.2, 1, 1]
    target[0, 1, 1] = [0.5, 0.5, 0.2, 0.2, 1, 1]
    target[0, 1, 0] = [0.5, 0.5, 0.2, 0.2, 1, 1]
    pred = np.zeros((1, grid, grid, nb * 5 + nc), np.float32)
    # (0,0): predictor 0 a 0.1-wide box on the centre (IoU 0.25), predictor 1 the exact box (IoU 1): 1 wins.
    pred[0, 0, 0, 0:4] = [0.5, 0.5, math.sqrt(0.1), math.sqrt(0.1)]
    pred[0, 0, 0, 5:9] = [0.5, 0.5, math.sqrt(0.2), math.sqrt(0.2)]
    # (1,1): predictor 0 shifted by 0.05 (IoU 0.6), predictor 1 a box four times larger (IoU 0.25): 0 wins.
    pred[0, 1, 1, 0:4] = [0.6, 0.5, math.sqrt(0.2), math.sqrt(0.2)]
    pred[0, 1, 1, 5:9] = [0.5, 0.5, math.sqrt(0.4), math.sqrt(0.4)]
    # (1,0): neither overlaps the truth; predictor 1 is nearer (smaller RMSE), so it is responsible.
    pred[0, 1, 0, 0:4] = [-3.0, -3.0, 0.1, 0.1]
    pred[0, 1, 0, 5:9] = [-0.6, 0.5, 0.1, 0.1]
    index, iou = responsible_predictor(tf.constant(pred), tf.constant(target), nb, nc)
    index, iou = index.numpy(), iou.numpy()
    assert index[0, 0, 0] == 1 and index[0, 1, 1] == 0 and index[0, 1, 0] == 1
    np.testing.assert_allclose(iou[0, 0, 0], [0.25, 1.0], atol=1e-5)
    np.testing.assert_allclose(iou[0, 1, 1], [(0.15 * 0.2) / (0.08 - 0.15 * 0.2), 0.25], atol=1e-5)
    np.testing.assert_allclose(iou[0, 1, 0], [0.0, 0.0], atol=1e-6)


# -- YOLOv2 ---------------------------------------------------------------------------------------------------------

def v2_loss_reference(pred, target, gt_boxes, gt_labels, anchors, stride, nc, l_coord=1.0, l_obj=5.0, l_noobj=1.0,
                      l_class=1.0, thresh=0.6, prior_weight=0.01):
    """Darknet's region-layer terms (see kdet.losses.yolo), one prediction at a time."""
    batch, gh, gw = pred.shape[:3]
    na = len(anchors)
    raw = pred.reshape(batch, gh, gw, na, 5 + nc)
    image_h, image_w = gh * stride, gw * stride
    terms = dict(coord=0.0, object=0.0, noobject=0.0, prior=0.0, **{"class": 0.0})
    for b in range(batch):
        truths = [gt_boxes[b, n] for n in range(gt_boxes.shape[1]) if gt_labels[b, n] >= 0]
        for i in range(gh):
            for j in range(gw):
                for a in range(na):
                    t, r = target[b, i, j, a], raw[b, i, j, a]
                    sy, sx, obj = sigmoid(r[0]), sigmoid(r[1]), sigmoid(r[4])
                    box = centre_box((sy + i) * stride, (sx + j) * stride, anchors[a][0] * math.exp(r[2]),
                                     anchors[a][1] * math.exp(r[3]))
                    if t[4] > 0:
                        th, tw = anchors[a][0] * math.exp(t[2]), anchors[a][1] * math.exp(t[3])
                        scale = 2 - (th / image_h) * (tw / image_w)
                        terms["coord"] += l_coord * scale * ((sy - t[0]) ** 2 + (sx - t[1]) ** 2 + (r[2] - t[2]) ** 2
                                                             + (r[3] - t[3]) ** 2)
                        truth = centre_box((t[0] + i) * stride, (t[1] + j) * stride, th, tw)
                        terms["object"] += l_obj * (iou_yxyx(box, truth) - obj) ** 2
                        logits = r[5:] - r[5:].max()
                        log_probs = logits - math.log(np.exp(logits).sum())
                        terms["class"] += l_class * -float(np.sum(t[5:] * log_probs))
                    else:
                        best = max([iou_yxyx(box, g) for g in truths], default=0.0)
                        if best < thresh:
                            terms["noobject"] += l_noobj * obj ** 2
                        terms["prior"] += prior_weight * ((sy - 0.5) ** 2 + (sx - 0.5) ** 2 + r[2] ** 2 + r[3] ** 2)
    return {k: v / batch for k, v in terms.items()}


def random_v2_case(seed, grid=3, nc=3, stride=32, count=5):
    rng = np.random.default_rng(seed)
    anchors = np.array([[1.0, 1.5], [2.5, 2.0]], np.float32) * stride
    size = grid * stride
    corner = rng.uniform(0, size * 0.7, (2, count, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(10, size * 0.5, (2, count, 2))], -1).astype(np.float32)
    labels = rng.integers(-1, nc, (2, count)).astype(np.int32)
    target = yolo_v2_encode(boxes, labels, anchors, (size, size), nc, stride).numpy()
    pred = rng.normal(0, 0.8, (2, grid, grid, len(anchors) * (5 + nc))).astype(np.float32)
    # Make some predictions overlap their truth well, so the ignore-threshold branch is exercised both ways.
    pred_view = pred.reshape(2, grid, grid, len(anchors), 5 + nc)
    assigned = target[..., 4] > 0
    pred_view[..., 0:4][assigned] = np.concatenate([
        np.log(target[..., 0:2][assigned] / (1 - target[..., 0:2][assigned] + 1e-6) + 1e-6),
        target[..., 2:4][assigned]], -1) + rng.normal(0, 0.1, (assigned.sum(), 4))
    return pred_view.reshape(pred.shape), target, boxes, labels, anchors, stride, nc


@pytest.mark.parametrize("seed", range(3))
def test_v2_loss_equals_region_layer_formula(seed):
    pred, target, boxes, labels, anchors, stride, nc = random_v2_case(seed)
    got = {k: float(v) for k, v in yolo_v2_loss(pred, target, boxes, labels, anchors, stride, nc).items()}
    want = v2_loss_reference(pred.astype(np.float64), target.astype(np.float64), boxes, labels,
                             anchors.astype(np.float64), stride, nc)
    assert target[..., 4].sum() >= 3
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_v2_ignore_threshold_and_prior_switch():
    """An unassigned prediction that overlaps a truth by >= 0.6 pays no no-object penalty; below it, it does."""
    anchors = np.array([[32.0, 32.0], [64.0, 64.0]], np.float32)
    boxes = np.array([[[40.0, 40.0, 72.0, 72.0]]], np.float32)  # 32 x 32 in cell (1, 1): anchor 0 is assigned
    labels = np.array([[0]], np.int32)
    target = yolo_v2_encode(boxes, labels, anchors, (96, 96), 2).numpy()
    assert target[0, 1, 1, 0, 4] == 1 and target[0, 1, 1, 1, 4] == 0
    raw = np.zeros((1, 3, 3, 2, 7), np.float32)
    raw[..., 4] = -20.0  # no objectness anywhere ...
    raw[0, 1, 1, 1, 4] = 0.0  # ... except anchor 1 of the truth's cell: sigmoid 0.5, a penalty of 0.25 if counted
    raw[0, 1, 1, 1, 0:2] = math.log(3.0)  # sigmoid = 0.75: the truth's centre, 56 px = (1 + 0.75) * 32
    raw[0, 1, 1, 1, 2:4] = math.log(0.8 * 32 / 64)  # a 25.6-px box on the truth's centre: IoU 0.64 with it
    pred = raw.reshape(1, 3, 3, 14)

    def noobject(threshold):
        return float(yolo_v2_loss(pred, target, boxes, labels, anchors, 32, 2, ignore_threshold=threshold,
                                  prior_weight=0.0)["noobject"])

    assert noobject(0.6) < 1e-6          # IoU 0.64 >= 0.6: ignored
    assert abs(noobject(0.7) - 0.25) < 1e-5  # IoU 0.64 < 0.7: penalised, sigmoid(0)^2
    terms = yolo_v2_loss(pred, target, boxes, labels, anchors, 32, 2, prior_weight=0.0)
    assert float(terms["prior"]) == 0.0
    assert float(yolo_v2_loss(pred, target, boxes, labels, anchors, 32, 2, prior_weight=0.01)["prior"]) > 0


@pytest.mark.parametrize("seed", range(2))
def test_v2_loss_in_a_relaxed_trace_equals_the_static_one(seed):
    """Multi-scale fit runs the loss in a trace Keras relaxed to unknown sizes (grid and image size are tensors):
    the same terms as with static shapes, which equal the numpy formula above."""
    pred, target, boxes, labels, anchors, stride, nc = random_v2_case(seed, grid=4)
    spec = [tf.TensorSpec([None, None, None, pred.shape[-1]]), tf.TensorSpec([None, None, None, 2, 5 + nc]),
            tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([2], tf.int32)]

    @tf.function(input_signature=spec)
    def relaxed(pred, target, boxes, labels, size):
        return yolo_v2_loss(pred, target, boxes, labels, anchors, stride, nc, image_size=(size[0], size[1]))

    got = {k: float(v) for k, v in relaxed(pred, target, boxes, labels, tf.constant([128, 128])).items()}
    want = {k: float(v) for k, v in yolo_v2_loss(pred, target, boxes, labels, anchors, stride, nc,
                                                 image_size=(128, 128)).items()}
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)


def test_v2_loss_image_without_objects():
    """Only the no-object and prior terms remain, finite."""
    grid, nc, stride = 3, 2, 32
    anchors = np.array([[32.0, 32.0]], np.float32)
    boxes = np.zeros((1, 0, 4), np.float32)
    labels = np.zeros((1, 0), np.int32)
    target = yolo_v2_encode(boxes, labels, anchors, (96, 96), nc, stride)
    pred = np.random.default_rng(0).normal(0, 1, (1, grid, grid, 5 + nc)).astype(np.float32)
    terms = {k: float(v) for k, v in yolo_v2_loss(pred, target, boxes, labels, anchors, stride, nc).items()}
    assert terms["coord"] == terms["object"] == terms["class"] == 0.0
    assert np.isfinite(terms["noobject"]) and terms["noobject"] > 0 and terms["prior"] > 0
