"""YOLOv1 / Fast YOLO / YOLOv2 / tiny-YOLOv2: architecture, target encoding -> decoding round trips (numpy ground
truth), passthrough against a numpy reorg, bad targets, and (slow) training on shapes + export parity."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.backbones.darknet import DarknetBackbone
from kdet.heads.yolo_head import grid_nms
from kdet.models import MODELS, FastYOLO, TinyYOLOv2, YOLOv1, YOLOv2
from kdet.necks.passthrough import Passthrough, reorg
from kdet.ops import combined_nms


def numpy_reorg(x, block=2):
    """out[b, i, j, (dy * block + dx) * C + c] = x[b, block * i + dy, block * j + dx, c], by loops."""
    batch, height, width, channels = x.shape
    out = np.zeros((batch, height // block, width // block, channels * block * block), x.dtype)
    for i in range(height // block):
        for j in range(width // block):
            for dy in range(block):
                for dx in range(block):
                    start = (dy * block + dx) * channels
                    out[:, i, j, start:start + channels] = x[:, block * i + dy, block * j + dx, :]
    return out


def test_passthrough_equals_numpy_reorg():
    rng = np.random.default_rng(0)
    fine = rng.normal(size=(2, 26, 26, 5)).astype(np.float32)
    coarse = rng.normal(size=(2, 13, 13, 7)).astype(np.float32)
    np.testing.assert_array_equal(reorg(fine).numpy(), numpy_reorg(fine))
    out = Passthrough()((fine, coarse)).numpy()
    assert out.shape == (2, 13, 13, 4 * 5 + 7)
    np.testing.assert_array_equal(out, np.concatenate([numpy_reorg(fine), coarse], axis=-1))
    reduced = Passthrough(reduce_channels=3)
    assert reduced((fine, coarse)).shape == (2, 13, 13, 4 * 3 + 7)
    assert reduced.compute_output_shape(((2, 26, 26, 5), (2, 13, 13, 7))) == (2, 13, 13, 19)


@pytest.mark.parametrize("layout, convs, size, shapes", [
    ("yolo_v1", 24, 448, {"C5": (7, 7, 128)}),
    ("fast_yolo", 9, 448, {"C5": (7, 7, 128)}),
    ("darknet19", 18, 416, {"C4": (26, 26, 64), "C5": (13, 13, 128)}),
    ("tiny_darknet", 7, 416, {"C5": (13, 13, 128)}),
])
def test_darknet_layouts(layout, convs, size, shapes):
    """The papers' conv counts (DarkNet-19's 19th conv is the classifier the detector replaces) and grid sizes, on
    1/8-width copies; max-pools: 5 in DarkNet-19."""
    backbone = DarknetBackbone(layout, width_multiplier=0.125)
    out = backbone(tf.zeros([1, size, size, 3]))
    assert backbone.num_convs == convs
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == shapes
    if layout == "darknet19":
        pools = [s for s in backbone.steps if isinstance(s, keras.layers.MaxPooling2D)]
        assert len(pools) == 5


def test_full_size_outputs_and_parameter_counts():
    """Full-width heads: 7x7x30 (v1, S=7, B=2, C=20) and 13x13x125 (v2, 5 anchors); tiny-YOLOv2 matches Darknet's
    tiny-yolo-voc.cfg parameter count (15.87 M)."""
    tiny = TinyYOLOv2(num_classes=20)
    assert tiny(tf.zeros([1, 416, 416, 3]))["predictions"].shape == (1, 13, 13, 125)
    assert abs(tiny.count_params() - 15.87e6) < 0.02e6
    fast = FastYOLO(num_classes=20, fc_units=(16,))  # the head's width does not change the grid
    assert fast(tf.zeros([1, 448, 448, 3]))["predictions"].shape == (1, 7, 7, 30)


@pytest.mark.parametrize("seed, count, classes, k", [(0, 60, 3, 10), (1, 40, 2, 100), (2, 5, 4, 30)])
def test_grid_nms_equals_combined_nms(seed, count, classes, k):
    """The loop-free per-class NMS gives kdet.ops.combined_nms's detections (k above and below the candidates)."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 80, (3, count, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(5, 40, (3, count, 2))], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (3, count, classes)).astype(np.float32)
    scores[1] = 0.0  # an image without any detection
    want = {key: v.numpy() for key, v in combined_nms(boxes, scores, k, 0.45, 0.3).items()}
    got = {key: v.numpy() for key, v in grid_nms(boxes, scores, k, 0.45, 0.3).items()}
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    assert want["num_detections"][1] == 0 and want["num_detections"][0] > 0
    for key in ("boxes", "scores", "classes"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="multiple of 64"):
        YOLOv1(num_classes=3, image_size=(100, 100))
    with pytest.raises(ValueError, match="multiples of 32"):
        YOLOv2(num_classes=3, image_size=(100, 100))
    with pytest.raises(ValueError, match="anchors"):
        YOLOv2(num_classes=3, image_size=(96, 96), anchors=[[0, 1]])


def spread_boxes(rng, grid, size, count, num_classes):
    """`count` boxes in distinct cells, centres inside their cell, boxes inside the image -> (boxes, labels)."""
    cells = rng.choice(grid * grid, count, replace=False)
    cell = size / grid
    boxes = []
    for c in cells:
        cy, cx = (c // grid + rng.uniform(0.1, 0.9)) * cell, (c % grid + rng.uniform(0.1, 0.9)) * cell
        half_h = rng.uniform(4, min(cy, size - cy, 60))
        half_w = rng.uniform(4, min(cx, size - cx, 60))
        boxes.append([cy - half_h, cx - half_w, cy + half_h, cx + half_w])
    return np.array(boxes, np.float32), rng.integers(0, num_classes, count).astype(np.int32)


def sorted_rows(boxes, classes):
    order = np.lexsort((boxes[:, 1], boxes[:, 0]))
    return boxes[order], classes[order]


def batch_of(boxes, labels, size):
    return {"images": tf.zeros([1, size, size, 3]),
            "bounding_boxes": {"boxes": tf.constant(boxes[None]), "labels": tf.constant(labels[None])}}


@pytest.mark.parametrize("seed", range(3))
def test_v1_encode_then_decode_returns_ground_truth(seed):
    """Targets -> the prediction a perfect network would make (predictor 0 = the box with sqrt sizes and
    confidence 1, class probabilities one-hot) -> model.decode -> the ground-truth boxes and classes."""
    rng = np.random.default_rng(seed)
    model = YOLOv1(num_classes=4, image_size=(256, 256), iou_threshold=1.0, score_threshold=0.5, max_detections=20)
    boxes, labels = spread_boxes(rng, model.grid_size, 256, 6, 4)
    grid = model.encode_targets(batch_of(boxes, labels, 256))["grid"].numpy()
    prediction = np.zeros((1, 4, 4, 2 * 5 + 4), np.float32)
    prediction[..., 0:2] = grid[..., 0:2]
    prediction[..., 2:4] = np.sqrt(grid[..., 2:4])
    prediction[..., 4] = grid[..., 4]
    prediction[..., 5:9] = 0.3  # predictor 1: a box with confidence 0, never kept
    prediction[..., 10:] = grid[..., 5:]
    out = {k: v.numpy()[0] for k, v in model.decode({"predictions": tf.constant(prediction)}).items()}
    n = int(out["num_detections"])
    assert n == len(boxes)
    got_boxes, got_classes = sorted_rows(out["boxes"][:n], out["classes"][:n])
    want_boxes, want_classes = sorted_rows(boxes, labels)
    np.testing.assert_allclose(got_boxes, want_boxes, atol=1e-3)
    np.testing.assert_array_equal(got_classes, want_classes)
    np.testing.assert_allclose(out["scores"][:n], 1.0, atol=1e-6)


@pytest.mark.parametrize("cls", [YOLOv2, TinyYOLOv2])
def test_v2_encode_then_decode_returns_ground_truth(cls):
    """Targets -> raw outputs (t_y = logit(offset), t_h = log(h / p_h), t_o and the class logit large) ->
    model.decode -> the ground-truth boxes and classes."""
    rng = np.random.default_rng(7)
    size, num_classes = 192, 3
    model = cls(num_classes=num_classes, image_size=(size, size), anchors=((1, 1), (2.5, 1.5), (1.5, 3)),
                iou_threshold=1.0, score_threshold=0.5, max_detections=20)
    boxes, labels = spread_boxes(rng, size // 32, size, 8, num_classes)
    grid = model.encode_targets(batch_of(boxes, labels, size))["grid"].numpy()  # [1, 6, 6, 3, 8]
    raw = np.full(grid.shape, -30.0, np.float32)
    assigned = grid[..., 4] > 0
    offsets = grid[..., 0:2][assigned]
    raw[..., 0:2][assigned] = np.log(offsets / (1 - offsets))
    raw[..., 2:4][assigned] = grid[..., 2:4][assigned]
    raw[..., 4][assigned] = 30.0
    raw[..., 5:][assigned] = 30.0 * grid[..., 5:][assigned]
    prediction = tf.constant(raw.reshape(1, size // 32, size // 32, -1))
    out = {k: v.numpy()[0] for k, v in model.decode({"predictions": prediction}).items()}
    n = int(out["num_detections"])
    assert n == len(boxes) == assigned.sum()
    got_boxes, got_classes = sorted_rows(out["boxes"][:n], out["classes"][:n])
    want_boxes, want_classes = sorted_rows(boxes, labels)
    np.testing.assert_allclose(got_boxes, want_boxes, atol=1e-3)
    np.testing.assert_array_equal(got_classes, want_classes)


def test_bad_targets_out_of_range_class_zero_size_and_empty_image():
    """A class id >= C and a box of zero width or height give no target; an image without objects gives an all-zero
    grid and a finite loss made only of no-object (and prior) terms."""
    v1 = YOLOv1(num_classes=2, image_size=(128, 128), width_multiplier=0.0625, fc_units=(8,))
    v2 = TinyYOLOv2(num_classes=2, image_size=(64, 64), width_multiplier=0.0625)
    boxes = np.array([[10, 10, 40, 40], [70, 70, 70, 100], [80, 20, 100, 50]], np.float32)  # 2nd: zero height
    labels = np.array([5, 0, -1], np.int32)  # 1st: class 5 of 2; 3rd: padding
    for model, size in ((v1, 128), (v2, 64)):
        y = model.encode_targets(batch_of(boxes * size / 128, labels, size))
        assert float(tf.reduce_sum(y["grid"])) == 0.0, type(model).__name__
        empty = model.encode_targets(batch_of(np.zeros((0, 4), np.float32), np.zeros(0, np.int32), size))
        assert float(tf.reduce_sum(empty["grid"])) == 0.0
        images = tf.random.uniform([1, size, size, 3], 0, 255)
        terms = {}
        model.compute_loss(images, empty, model(images))
        for name in model.loss_names:
            terms[name] = float(model._loss_trackers[name].result())
        assert terms["coord_loss"] == terms["object_loss"] == terms["class_loss"] == 0.0
        assert np.isfinite(terms["noobject_loss"]) and terms["noobject_loss"] > 0


@pytest.mark.parametrize("name", ["yolov1_shapes", "yolov1_fast_shapes", "yolov2_shapes", "yolov2_tiny_shapes",
                                  "yolov1_bccd", "yolov1_fast_bccd", "yolov2_bccd", "yolov2_tiny_bccd"])
def test_configs_build(name):
    from pathlib import Path

    from kdet.api import build_model
    from kdet.config import load_config
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    model = build_model(config)
    assert model.num_classes == config.model.num_classes and model.image_size == tuple(config.model.image_size)


def test_config_round_trip_and_registry():
    assert {MODELS[k] for k in ("yolo_v1", "fast_yolo", "yolo_v2", "tiny_yolo_v2")} == {
        YOLOv1, FastYOLO, YOLOv2, TinyYOLOv2}
    model = YOLOv2(num_classes=3, image_size=(64, 64), width_multiplier=0.0625, anchors=((1, 2), (3, 1)),
                   passthrough_channels=8, multiscale_sizes=(64, 96))
    clone = YOLOv2.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    fast = FastYOLO(num_classes=3, image_size=(128, 128), width_multiplier=0.0625)
    assert FastYOLO.from_config(fast.get_config()).fc_units == (256, 4096)


# -- slow: training on shapes and export parity ---------------------------------------------------------------------

def shapes_training(model, size, steps, multiscale=False):
    """Fit `model` for `steps` batches of 8 on synthetic shapes; returns the per-batch total losses."""
    from kdet.data.multiscale import multiscale_batches
    from kdet.data.pipeline import make_tf_dataset
    from kdet.data.shapes import make_shapes
    dataset = make_shapes(64, (size, size), max_objects=3, min_size=0.3, max_size=0.6, seed=1)
    batches = make_tf_dataset(dataset, (size, size), 8, training=True, seed=0).repeat()

    def to_xy(batch):
        return batch["images"], model.encode_targets(batch)

    if multiscale:
        train = multiscale_batches(batches, model.multiscale_sizes, every=model.multiscale_every, map_fn=to_xy)
    else:
        train = batches.map(to_xy)
    losses = []
    callback = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: losses.append(logs["loss"]))
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[callback])
    return np.array(losses), make_shapes(4, (size, size), max_objects=3, min_size=0.3, max_size=0.6, seed=5)


def uint8_images(dataset):
    return np.stack([r.image for r in dataset.records]).astype(np.uint8)


def running_loss_falls(losses):
    """Keras logs the running mean; per-step loss = difference of running sums. Last third below the first third."""
    steps = np.arange(1, len(losses) + 1)
    per_step = np.diff(np.concatenate([[0.0], losses * steps]))
    third = len(per_step) // 3
    return per_step[-third:].mean() < 0.7 * per_step[:third].mean(), per_step


def set_threshold_by_quantile(model, images, quantile=0.99):
    """A score threshold inside the trained model's score distribution, so counts differ between images."""
    outputs = model(images)["predictions"]
    if isinstance(model, YOLOv1):
        from kdet.ops import yolo_v1_decode
        scores = yolo_v1_decode(outputs, model.image_size, model.num_boxes, model.num_classes)[1]
    else:
        from kdet.ops import yolo_v2_decode
        scores = yolo_v2_decode(outputs, model.anchor_pixels, model.image_size, model.num_classes)["scores"]
    model.score_threshold = float(np.quantile(scores.numpy(), quantile))


@pytest.mark.slow
def test_yolo_v2_trains_multiscale_and_exports(tmp_path):
    """Multi-scale fit (two sizes) lowers the loss; SavedModel / TFLite (builtins, NMS inside) / ONNX / .keras match
    Keras; the int8 TFLite (network int8, decode float) finds most of Keras' detections."""
    from tests.testing import check_export_parity
    keras.utils.set_random_seed(0)
    model = YOLOv2(num_classes=3, image_size=(96, 96), width_multiplier=0.0625, anchors=((1, 1), (2, 2)),
                   multiscale_sizes=(64, 96), multiscale_every=3, max_detections=20)
    losses, test_set = shapes_training(model, 96, 36, multiscale=True)
    falls, per_step = running_loss_falls(losses)
    assert falls, per_step
    images = uint8_images(test_set)
    set_threshold_by_quantile(model, images)
    detections = model.detect(images)
    assert detections["boxes"].shape == (4, 20, 4) and detections["classes"].dtype == tf.int32
    assert int(tf.reduce_sum(detections["num_detections"])) > 0
    check_export_parity(model, images, tmp_path, formats=("keras", "saved_model", "tflite", "onnx"))
    # int8 moves scores by a few percent, so it is judged on many detections (a lower threshold; the cap of 20 may
    # bind, which IoU matching tolerates): with 3 Keras detections one flip across the threshold was 33 % (CI).
    set_threshold_by_quantile(model, images, quantile=0.9)
    reports = check_export_parity(model, images, tmp_path, formats=("tflite_int8",))
    assert reports["tflite_int8"]["keras_detections"] >= 10, reports["tflite_int8"]  # 22 here
    assert reports["tflite_int8"]["matched_fraction"] >= 0.5, reports["tflite_int8"]


@pytest.mark.slow
def test_inference_mode_follows_training_after_a_short_budget():
    """BatchNorm moving statistics catch up within a CPU budget: a 24-layer YOLOv1 that fits one batch in training
    mode must fit it in inference mode too (measured after 60 steps: loss ratio 2 with momentum 0.9, 140 with
    Darknet's / Keras' 0.99, whose inference outputs are near-constant)."""
    from kdet.data.pipeline import make_tf_dataset
    from kdet.data.shapes import make_shapes
    keras.utils.set_random_seed(0)
    model = YOLOv1(num_classes=3, image_size=(128, 128), width_multiplier=0.0625, fc_units=(64,), batch_norm=True,
                   dropout=0.0)
    dataset = make_shapes(8, (128, 128), max_objects=3, min_size=0.3, max_size=0.6, seed=1)
    batch = next(iter(make_tf_dataset(dataset, (128, 128), 8)))
    targets = model.encode_targets(batch)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    model.fit(tf.data.Dataset.from_tensors((batch["images"], targets)).repeat(50), verbose=0)
    training_mode = float(model.compute_loss(batch["images"], targets, model(batch["images"], training=True)))
    inference_mode = float(model.compute_loss(batch["images"], targets, model(batch["images"], training=False)))
    assert training_mode < 1.0 and inference_mode < 10 * training_mode, (training_mode, inference_mode)


@pytest.mark.slow
def test_fast_yolo_trains_and_exports(tmp_path):
    from tests.testing import check_export_parity
    keras.utils.set_random_seed(0)
    model = FastYOLO(num_classes=3, image_size=(128, 128), width_multiplier=0.0625, fc_units=(64,),
                     batch_norm=True, max_detections=20)
    losses, test_set = shapes_training(model, 128, 30)
    falls, per_step = running_loss_falls(losses)
    assert falls, per_step
    images = uint8_images(test_set)
    set_threshold_by_quantile(model, images)
    assert int(tf.reduce_sum(model.detect(images)["num_detections"])) > 0
    check_export_parity(model, images, tmp_path, formats=("saved_model", "tflite", "onnx"),
                        check_serving_bytes=False)


@pytest.mark.slow
def test_tiny_yolo_v2_exports_fp16_and_int8_with_builtins_only(tmp_path):
    """Untrained tiny-YOLOv2: fp16 and int8 TFLite convert with builtins only (NMS inside) and run."""
    from tests.testing import check_export_parity, random_images
    keras.utils.set_random_seed(0)
    model = TinyYOLOv2(num_classes=3, image_size=(96, 96), width_multiplier=0.125, anchors=((1, 1), (2, 2)),
                       max_detections=20)
    images = random_images(model, 4)
    set_threshold_by_quantile(model, images, 0.97)
    reports = check_export_parity(model, images, tmp_path, formats=("tflite_fp16", "tflite_int8"))
    assert reports["tflite_fp16"]["matched_fraction"] >= 0.75, reports
    assert reports["tflite_int8"]["artifact_detections"] > 0, reports
