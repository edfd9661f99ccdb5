"""RetinaNet: anchors per level, loss and decoding against numpy references, bad input, the Keras-native path
(fit, any input size, reload) and export."""
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.models import MODELS
from kdet.models.retinanet import RetinaNet, retinanet_anchor_sizes, top_scores_above
from kdet.ops import builtins_only
from tests.harness import check_keras_native
from tests.test_ops_nms import nms_reference
from tests.testing import check_export_parity, random_images, threshold_with_margin

TINY = dict(depth=18, base_width=8, fpn_channels=16, head_convs=2)


def tiny(num_classes=3, image_size=(128, 160), **kwargs):
    return RetinaNet(num_classes, image_size=image_size, max_detections=kwargs.pop("max_detections", 20),
                     **dict(TINY, **kwargs))


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    m = tiny()
    m(tf.zeros([1, 128, 160, 3]))
    return m


def test_anchor_count_and_order_per_level(model):
    sizes = retinanet_anchor_sizes((32, 64, 128, 256, 512), (1.0, 2 ** (1 / 3), 2 ** (2 / 3)))
    assert sizes[0] == (32, 40, 50) and sizes[4] == (512, 645, 812)
    anchors, start = model.anchors_for((128, 160)).numpy(), 0
    for level, (base_sizes, count) in enumerate(zip(sizes, model.anchors_per_level((128, 160)))):
        feat_h, feat_w = math.ceil(128 / 2 ** (level + 3)), math.ceil(160 / 2 ** (level + 3))
        # torchvision's cell size is image // cells: 160 px over ceil(160 / 64) = 3 P6 cells is 53 px, not 64
        stride_y, stride_x = 128 // feat_h, 160 // feat_w
        assert count == feat_h * feat_w * 9
        level_anchors = anchors[start:start + count].reshape(feat_h, feat_w, 9, 4)
        first = level_anchors[0, 0]
        heights, widths = first[:, 2] - first[:, 0], first[:, 3] - first[:, 1]
        # ratio (h / w) outer, scale inner; half sizes rounded: h = 2 * round(s * sqrt(r) / 2)
        expected = [(2 * np.round(s * np.sqrt(r) / 2), 2 * np.round(s / np.sqrt(r) / 2))
                    for r in (0.5, 1.0, 2.0) for s in base_sizes]
        np.testing.assert_allclose(np.stack([heights, widths], 1), expected, atol=1.0)
        np.testing.assert_allclose((first[:, 0] + first[:, 2]) / 2, 0.0, atol=0.5)  # centred on the cell corner
        if feat_w > 1:  # next column: shifted by the stride, same shapes
            np.testing.assert_allclose(level_anchors[0, 1] - first, [[0, stride_x, 0, stride_x]] * 9)
        if feat_h > 1:
            np.testing.assert_allclose(level_anchors[1, 0] - first, [[stride_y, 0, stride_y, 0]] * 9)
        start += count
    assert start == len(anchors)
    outputs = model(tf.zeros([2, 128, 160, 3]))
    assert outputs["cls_logits"].shape == (2, len(anchors), 3)
    assert outputs["box_regression"].shape == (2, len(anchors), 4)


def test_class_bias_starts_at_prior(model):
    bias = model.head.classification.output_conv.bias.numpy()
    np.testing.assert_allclose(bias, -math.log(0.99 / 0.01), rtol=1e-6)
    probabilities = tf.sigmoid(model(random_images(model, 1))["cls_logits"]).numpy()
    assert abs(np.median(probabilities) - 0.01) < 0.005


def loss_reference(labels, box_targets, logits, deltas, num_classes, alpha=0.25, gamma=2.0):
    total_cls, total_box = 0.0, 0.0
    for b in range(labels.shape[0]):
        pos = labels[b] >= 0
        counted = labels[b] >= -1
        t = np.zeros_like(logits[b], np.float64)
        t[pos, labels[b][pos]] = 1
        x = logits[b].astype(np.float64)
        p = 1 / (1 + np.exp(-x))
        ce = np.logaddexp(0, x) - t * x
        p_t = t * p + (1 - t) * (1 - p)
        focal = (alpha * t + (1 - alpha) * (1 - t)) * (1 - p_t) ** gamma * ce
        n = max(pos.sum(), 1)
        total_cls += focal[counted].sum() / n
        total_box += np.abs(deltas[b][pos] - box_targets[b][pos]).sum() / n
    return total_cls / labels.shape[0], total_box / labels.shape[0]


def test_loss_matches_numpy_reference(model):
    rng = np.random.default_rng(0)
    n = len(model.anchors_for(model.image_size))
    labels = rng.choice([-2, -1, -1, -1, 0, 1, 2], size=(2, n)).astype(np.int32)
    labels[1] = -1  # an image without objects contributes its negatives, normalised by 1
    box_targets = np.where(labels[..., None] >= 0, rng.normal(size=(2, n, 4)), 0).astype(np.float32)
    y_pred = {"cls_logits": rng.normal(-2, 2, (2, n, 3)).astype(np.float32),
              "box_regression": rng.normal(size=(2, n, 4)).astype(np.float32)}
    total = model.loss_from_targets({"labels": labels, "box_targets": box_targets}, y_pred, None).numpy()
    cls, box = loss_reference(labels, box_targets, y_pred["cls_logits"], y_pred["box_regression"], 3)
    np.testing.assert_allclose(total, cls + box, rtol=1e-5)


def decode_reference(model, logits, deltas, image_size):
    """torchvision RetinaNet.postprocess_detections for one image of `image_size`, in numpy."""
    height, width = image_size
    all_anchors = model.anchors_for(image_size).numpy()
    boxes, scores, labels, start = [], [], [], 0
    for count in model.anchors_per_level(image_size):
        flat = (1 / (1 + np.exp(-logits[start:start + count].astype(np.float64)))).reshape(-1)
        candidates = np.flatnonzero(flat > model.score_threshold)
        candidates = candidates[np.argsort(-flat[candidates], kind="stable")][:model.topk_candidates]
        for c in candidates:
            a, k = divmod(int(c), model.num_classes)
            anchor, d = all_anchors[start + a], deltas[start + a]
            ah, aw = anchor[2] - anchor[0], anchor[3] - anchor[1]
            cy, cx = anchor[0] + ah / 2 + d[0] * ah, anchor[1] + aw / 2 + d[1] * aw
            h, w = ah * np.exp(min(d[2], np.log(1000 / 16))), aw * np.exp(min(d[3], np.log(1000 / 16)))
            box = np.clip([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 0, [height, width, height, width])
            boxes.append(box), scores.append(flat[c]), labels.append(k)
        start += count
    keep = []
    for k in set(labels):
        members = [i for i in range(len(labels)) if labels[i] == k]
        kept = nms_reference(np.asarray([boxes[m] for m in members]), np.asarray([scores[m] for m in members]),
                             model.nms_iou_threshold)
        keep += [members[i] for i in kept]
    keep = sorted(keep, key=lambda i: -scores[i])[:model.max_detections]
    return np.array([boxes[i] for i in keep]).reshape(-1, 4), np.array([scores[i] for i in keep]), \
        np.array([labels[i] for i in keep])


@pytest.mark.parametrize("builtins", [False, True])
def test_decode_matches_numpy_reference(builtins):
    # decode follows the size it is given, not the constructor's: built at 96 x 128, decoded at 160 x 96; builtins:
    # the TFLite twin (batched candidate filtering)
    keras.utils.set_random_seed(1)
    m = tiny(num_classes=4, image_size=(96, 128), max_detections=15, topk_candidates=50)  # decode needs no weights
    rng = np.random.default_rng(2)
    size = (160, 96)
    n = len(m.anchors_for(size))
    outputs = {"cls_logits": rng.normal(-4.5, 1.2, (2, n, 4)).astype(np.float32),
               "box_regression": rng.normal(0, 0.3, (2, n, 4)).astype(np.float32)}
    outputs["box_regression"][0, :5, 2:] = 20.0  # huge deltas: clamped before exp, then clipped to the image
    with builtins_only(builtins):
        result = {k: v.numpy() for k, v in m.decode(outputs, size).items()}
    for b in range(2):
        boxes, scores, labels = decode_reference(m, outputs["cls_logits"][b], outputs["box_regression"][b], size)
        count = int(result["num_detections"][b])
        assert count == len(scores) and 0 < count <= 15
        order = np.argsort(-result["scores"][b, :count], kind="stable")
        np.testing.assert_allclose(result["scores"][b, :count][order], scores, rtol=1e-5)
        np.testing.assert_allclose(result["boxes"][b, :count][order], boxes, atol=1e-3)
        np.testing.assert_array_equal(result["classes"][b, :count][order], labels)
        assert not result["boxes"][b, count:].any()


@pytest.mark.parametrize("mean", [-4.0, 0.0])  # few anchors pass / most do (the default path's dense branch)
def test_top_scores_above_both_paths_equal_reference(mean):
    rng = np.random.default_rng(4)
    logits = rng.normal(mean, 1.2, (3, 200, 5)).astype(np.float32)
    logits[1, 10:20] = logits[1, 30:40]  # equal scores: ties by ascending flat index
    logits[2] = -9.0  # an image with no candidate
    sigmoid = tf.sigmoid(logits).numpy().reshape(3, -1)
    for k in (7, 1000):
        for builtins in (False, True):
            with builtins_only(builtins):
                scores, indices = (v.numpy() for v in top_scores_above(tf.constant(logits), k, 0.05))
            assert scores.shape == indices.shape == (3, k)
            for b in range(3):
                order = np.argsort(-sigmoid[b], kind="stable")[:k]
                order = order[sigmoid[b, order] > 0.05]
                passing = int((sigmoid[b] > 0.05).sum())
                assert (passing == 0) if b == 2 else (mean == 0.0) == (passing > 300)
                np.testing.assert_array_equal(indices[b, :len(order)], order, err_msg=f"{builtins} {k} {b}")
                np.testing.assert_allclose(scores[b, :len(order)], sigmoid[b, order], rtol=1e-6)
                assert (scores[b, len(order):] <= 0.05).all()


def test_input_size_not_divisible_by_128():
    m = tiny(image_size=(64, 64), base_width=4, fpn_channels=8, head_convs=1)  # runs at any size: 200 x 300 here
    out = m(tf.zeros([1, 200, 300, 3]))
    anchors, counts = m.anchors_for((200, 300)).numpy(), m.anchors_per_level((200, 300))
    assert out["cls_logits"].shape[1] == len(anchors) == sum(counts)
    # P7 is ceil(200 / 128) x ceil(300 / 128) = 2 x 3 cells; torchvision's anchor stride there is 200 // 2 = 100.
    p7 = anchors[-counts[-1]:].reshape(2, 3, 9, 4)
    np.testing.assert_allclose(p7[1, 2, 0] - p7[0, 0, 0], [100, 200, 100, 200])
    assert m.detect(tf.zeros([1, 200, 300, 3]))["boxes"].shape == (1, 20, 4)


def test_degenerate_boxes_and_empty_images_in_a_training_batch(model):
    targets = {"boxes": tf.constant([[[10, 10, 10, 60], [30, 40, 20, 50], [0, 0, 0, 0]],     # only degenerate boxes
                                     [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],             # no objects at all
                                     [[20, 30, 90, 100], [5, 5, 5.5, 5.5], [0, 0, 0, 0]]], tf.float32),
               "labels": tf.constant([[0, 1, -1], [-1, -1, -1], [2, 1, -1]], tf.int32)}
    y = model.encode_targets(targets, (128, 160))
    labels = y["labels"].numpy()
    assert (labels[0] == -1).all() and (labels[1] == -1).all()
    assert set(np.unique(labels[2])) >= {-1, 2}
    with tf.GradientTape() as tape:
        loss = model.loss_from_targets(y, model(tf.zeros([3, 128, 160, 3]), training=True), None)
    gradients = tape.gradient(loss, model.trainable_weights)
    assert np.isfinite(loss.numpy()) and all(np.isfinite(g.numpy()).all() for g in gradients if g is not None)


def test_label_ids_map_classes_to_head_columns():
    m = tiny(image_size=(64, 64), label_ids=(2, 5, 7), max_detections=50)  # decode and targets need no weights
    assert m.num_columns == 8
    targets = {"boxes": tf.constant([[[8, 8, 40, 40], [30, 20, 60, 60]]], tf.float32),
               "labels": tf.constant([[0, 2]], tf.int32)}
    assert set(np.unique(m.encode_targets(targets, (64, 64))["labels"].numpy())) <= {-2, -1, 2, 7}
    n = len(m.anchors_for((64, 64)))
    logits = np.full((1, n, 8), -9.0, np.float32)
    logits[0, :40, [0, 1, 3]] = 3.0       # unused columns: never reported
    logits[0, 40:45, 5] = 2.0             # column 5 = class 1
    out = m.decode({"cls_logits": logits, "box_regression": np.zeros((1, n, 4), np.float32)}, (64, 64))
    count = int(out["num_detections"][0])
    assert count > 0 and set(out["classes"].numpy()[0, :count]) == {1}
    with pytest.raises(ValueError, match="label_ids"):
        tiny(label_ids=(1, 1, 2))


def test_config_round_trip_and_registry(model):
    assert MODELS["retinanet"] is RetinaNet
    clone = RetinaNet.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    with pytest.raises(ValueError, match="box_loss"):
        tiny(box_loss="l2")


@pytest.mark.parametrize("name", ["retinanet_shapes", "retinanet_r18_fpn_bccd", "retinanet_r50_fpn_bccd",
                                  "retinanet_resnet50_fpn_coco", "ssd300_shapes", "ssd300_bccd", "ssd300_vgg16_coco",
                                  "ssdlite_shapes", "ssdlite_bccd"])
def test_configs_load_and_construct(name):
    from kdet.config import load_config
    config = load_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    m = config.model
    model = MODELS[m.name](num_classes=m.num_classes, image_size=tuple(m.image_size),
                           max_detections=m.max_detections, **m.args)
    assert len(model.anchors_for(model.image_size)) > 0 and model.num_classes == m.num_classes


def test_keras_native_fit_any_size_and_reload(tmp_path):
    """The one-path Must-show: fit on a Keras-only pipeline (xyxy boxes), predict a 96 x 128 image with boxes in its
    own pixels (the same as a model built at that size), reload in a fresh process after `import kdet`."""
    keras.utils.set_random_seed(0)
    m = tiny(image_size=(64, 64), head_convs=1, bounding_box_format="xyxy",
             class_names=["circle", "square", "triangle"])
    check_keras_native(m, tmp_path, other_size=(96, 128), learning_rate=2e-3)


def test_predict_with_a_trace_of_unknown_size():
    """Anchors from tensor sizes (a trace Keras relaxed to [None, None, None, 3]) = anchors from int sizes."""
    keras.utils.set_random_seed(2)
    m = tiny(image_size=(64, 64), head_convs=1)
    images = random_images(m, 1, seed=2)[:, :48]  # 48 x 64: P6 and P7 of one row
    m.score_threshold = 0.0095  # below every random-init score (about 0.01): the full candidate lists
    relaxed = tf.function(m.detect, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    static = {k: v.numpy() for k, v in m.detect(tf.constant(images, tf.float32)).items()}
    dynamic = {k: v.numpy() for k, v in relaxed(tf.constant(images, tf.float32)).items()}
    assert static["num_detections"][0] > 0
    for key, value in static.items():
        np.testing.assert_allclose(dynamic[key], value, atol=1e-4, err_msg=key)
    assert static["boxes"][..., [0, 2]].max() <= 48 and static["boxes"][..., [1, 3]].max() <= 64


@pytest.mark.slow
def test_export_parity(tmp_path):
    keras.utils.set_random_seed(3)
    m = tiny(image_size=(64, 96), max_detections=50, topk_candidates=1000)  # caps above the candidate count
    images = random_images(m, 2, seed=3)
    scores = tf.sigmoid(m(images)["cls_logits"]).numpy()
    m.score_threshold = threshold_with_margin(scores, 0.999)  # a few detections per image, different counts
    reports = check_export_parity(m, images, tmp_path, formats=("saved_model", "tflite", "onnx"))
    assert reports["tflite"]["detections"] > 0
