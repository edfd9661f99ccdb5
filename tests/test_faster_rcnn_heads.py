"""The second stage against numpy references of torchvision's RoIHeads: RoI sampling, loss, post-processing."""
import numpy as np
import tensorflow as tf

from kdet.heads.roi_box_head import BoxPredictor, TwoFCHead, fast_rcnn_loss, postprocess_detections
from kdet.layers.proposals import PADDING_LABEL, sample_rois
from tests.test_rpn import np_iou, np_nms

WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def np_encode(box, ref):
    h, w = ref[2] - ref[0], ref[3] - ref[1]
    return np.array([10 * ((box[0] + box[2]) - (ref[0] + ref[2])) / 2 / h,
                     10 * ((box[1] + box[3]) - (ref[1] + ref[3])) / 2 / w,
                     5 * np.log((box[2] - box[0]) / h), 5 * np.log((box[3] - box[1]) / w)])


def np_decode(delta, ref):
    h, w = ref[2] - ref[0], ref[3] - ref[1]
    cy, cx = ref[0] + h / 2 + delta[0] / 10 * h, ref[1] + w / 2 + delta[1] / 10 * w
    nh = np.exp(min(delta[2] / 5, np.log(1000 / 16))) * h
    nw = np.exp(min(delta[3] / 5, np.log(1000 / 16))) * w
    return np.array([cy - nh / 2, cx - nw / 2, cy + nh / 2, cx + nw / 2])


PROPOSALS = np.array([[[10, 10, 50, 50], [12, 8, 52, 48], [60, 60, 90, 100], [0, 0, 20, 20], [30, 30, 70, 80],
                       [0, 0, 0, 0]]], np.float32)
VALID = np.array([[True, True, True, True, True, False]])
GT_BOXES = np.array([[[11, 11, 49, 52], [62, 58, 92, 98], [5, 5, 5, 30]]], np.float32)  # the last is degenerate
GT_LABELS = np.array([[2, 0, 1]], np.int32)


def test_sample_rois_matches_numpy_assignment():
    out = sample_rois(PROPOSALS, VALID, GT_BOXES, GT_LABELS, batch_size_per_image=16, positive_fraction=1.0)
    rois, labels, targets = (out[k].numpy()[0] for k in ("rois", "roi_labels", "roi_box_targets"))
    # Candidates: the 5 valid proposals, then the 2 valid ground-truth boxes, in that order; then 9 empty slots.
    candidates = np.concatenate([PROPOSALS[0, :5], GT_BOXES[0, :2]])
    np.testing.assert_array_equal(rois[:7], candidates)
    assert np.all(labels[7:] == PADDING_LABEL) and not np.any(rois[7:]) and not np.any(targets[7:])
    iou = np_iou(candidates, GT_BOXES[0, :2])
    for i, box in enumerate(candidates):
        j = iou[i].argmax()
        if iou[i, j] >= 0.5:
            assert labels[i] == GT_LABELS[0, j] + 1
            np.testing.assert_allclose(targets[i], np_encode(GT_BOXES[0, j], box), atol=1e-5)
        else:
            assert labels[i] == 0 and not np.any(targets[i])
    assert set(labels[:7]) == {0, 1, 3}  # foreground of both classes and background occur


def test_sample_rois_fraction_and_padding():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 100, (1, 300, 2)).astype(np.float32)
    proposals = np.concatenate([corners, corners + rng.uniform(5, 40, (1, 300, 2))], -1).astype(np.float32)
    gt = proposals[:, :40] + 1.0  # 40 objects, each with a near-copy proposal: plenty of foreground
    out = sample_rois(proposals, np.ones((1, 300), bool), gt, np.zeros((1, 40), np.int32), batch_size_per_image=64,
                      positive_fraction=0.25, seed=1)
    labels = out["roi_labels"].numpy()[0]
    assert (labels > 0).sum() == 16 and (labels == 0).sum() == 48
    # An image without objects: only background, topped up to the sample size when enough proposals exist.
    out = sample_rois(proposals, np.ones((1, 300), bool), np.zeros((1, 0, 4)), np.zeros((1, 0), np.int32),
                      batch_size_per_image=64)
    assert np.all(out["roi_labels"].numpy() == 0) and not np.any(out["roi_box_targets"].numpy())


def test_fast_rcnn_loss_matches_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 6, 4)).astype(np.float32)
    regression = rng.normal(size=(2, 6, 4, 4)).astype(np.float32)
    labels = np.array([[1, 0, 3, -1, 2, 0], [0, 0, -1, -1, 1, 2]], np.int32)
    targets = np.where((labels > 0)[..., None], rng.normal(size=(2, 6, 4)), 0).astype(np.float32)
    cls, box = fast_rcnn_loss(logits, regression, labels, targets)
    sampled = labels >= 0
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, np.maximum(labels, 0)[..., None], -1)[..., 0]
    np.testing.assert_allclose(cls.numpy(), ce[sampled].mean(), rtol=1e-5)
    own = np.take_along_axis(regression, np.maximum(labels, 0)[..., None, None], 2)[:, :, 0]
    error = np.abs(own - targets)[labels > 0]
    smooth = np.where(error < 1 / 9, 0.5 * error ** 2 * 9, error - 0.5 / 9)
    np.testing.assert_allclose(box.numpy(), smooth.sum() / sampled.sum(), rtol=1e-5)


def np_postprocess(logits, regression, rois, size, max_detections, score_threshold=0.05, nms=0.5):
    """torchvision postprocess_detections for one image -> (boxes, scores, 0-based classes) by descending score."""
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    boxes, scores, classes = [], [], []
    for r, roi in enumerate(rois):
        for c in range(1, logits.shape[-1]):
            box = np.clip(np_decode(regression[r, c], roi), 0, [size[0], size[1], size[0], size[1]])
            if p[r, c] > score_threshold and box[2] - box[0] >= 1e-2 and box[3] - box[1] >= 1e-2:
                boxes.append(box), scores.append(p[r, c]), classes.append(c - 1)
    boxes, scores, classes = np.array(boxes), np.array(scores), np.array(classes)
    keep = []
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        keep += [members[k] for k in np_nms(boxes[members], scores[members], nms)]
    keep = sorted(keep, key=lambda i: -scores[i])[:max_detections]
    return boxes[keep], scores[keep], classes[keep]


def test_postprocess_matches_numpy():
    rng = np.random.default_rng(3)
    size = (80, 120)
    corners = rng.uniform(0, 70, (2, 30, 2))
    rois = np.concatenate([corners, corners + rng.uniform(8, 40, (2, 30, 2))], -1).astype(np.float32)
    rois[:, :3] = rois[:, 3:6] + 1.5  # near-duplicates: NMS has work to do
    logits = (2.0 * rng.normal(size=(2, 30, 4))).astype(np.float32)
    regression = rng.normal(size=(2, 30, 4, 4)).astype(np.float32)
    valid = np.ones((2, 30), bool)
    valid[1, 25:] = False
    out = {k: v.numpy() for k, v in postprocess_detections(logits, regression, rois, valid, size, 40).items()}
    for b in range(2):
        n = valid[b].sum()
        boxes, scores, classes = np_postprocess(logits[b, :n].astype(np.float64), regression[b, :n],
                                                rois[b, :n].astype(np.float64), size, 40)
        assert out["num_detections"][b] == len(boxes) and len(boxes) > 5
        np.testing.assert_allclose(out["scores"][b, :len(boxes)], scores, atol=1e-6)
        np.testing.assert_array_equal(out["classes"][b, :len(boxes)], classes)
        np.testing.assert_allclose(out["boxes"][b, :len(boxes)], boxes, atol=1e-4)
        assert not np.any(out["scores"][b, len(boxes):])


def test_predictor_and_head_shapes():
    head, predictor = TwoFCHead(32), BoxPredictor(5)
    x = head(tf.zeros([2, 7, 3, 3, 8]))
    logits, deltas = predictor(x)
    assert x.shape == (2, 7, 32) and logits.shape == (2, 7, 6) and deltas.shape == (2, 7, 6, 4)


def test_box_head_init_is_torch_linear_default():
    """fc6 / fc7 / cls_score / bbox_pred start as torch nn.Linear does (torchvision's TwoMLPHead and FastRCNNPredictor):
    kernel and bias uniform in +-1/sqrt(fan_in). Detectron's normal(0.001) bbox_pred or Keras' Glorot fc6 fail it."""
    head, predictor = TwoFCHead(256), BoxPredictor(3)
    features = head(tf.zeros([1, 2, 7, 7, 64]))
    predictor(features)
    layers = [(head.fc6, 64 * 49), (head.fc7, 256), (predictor.cls_score, 256), (predictor.bbox_pred, 256)]
    for layer, fan_in in layers:
        bound = 1.0 / np.sqrt(fan_in)
        for values in (layer.kernel.numpy().ravel(), layer.bias.numpy()):
            assert np.abs(values).max() <= bound * (1 + 1e-6)  # float32 rounding of the bound itself
            # a uniform draw on [-b, b]: std b / sqrt(3); 16 draws all inside b / 2 happen once in 65536
            if values.size >= 1000:
                np.testing.assert_allclose(values.std(), bound / np.sqrt(3), rtol=0.1)
            if values.size >= 16:
                assert np.abs(values).max() > 0.5 * bound
