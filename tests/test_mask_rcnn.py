"""Mask R-CNN as a model: L_mask on the ground-truth class only, the Keras-native path with instance masks (fit,
predict at another size, reload in a fresh process), box-less images and empty masks, bad targets, configs, and
mask AP in the evaluation."""
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.build import build_model
from kdet.config import load_config
from kdet.data.shapes import make_shapes
from kdet.eval.detection import evaluate_detections, masks_to_original
from kdet.heads.mask_head import MaskRCNNPredictor, mask_loss
from kdet.models import MODELS
from kdet.models.mask_rcnn import MaskRCNN
from kdet.ops import convert_format
from tests.harness import check_predict_any_size, check_reload_in_fresh_process, shapes_images

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 64)
TINY = dict(backbone="resnet_fpn", depth=18, base_width=8, fpn_channels=16,
            anchor_sizes=((16,), (32,), (64,), (128,), (256,)), rpn_pre_nms_top_n_train=200,
            rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_train=64, rpn_post_nms_top_n_test=100,
            rpn_batch_size_per_image=64, representation_size=64, box_batch_size_per_image=64, max_detections=10,
            mask_layers=(16, 16), mask_predictor_channels=16)


def masks_dataset(size, bounding_box_format="xyxy", count=16, batch_size=4, min_objects=1, max_objects=4, seed=0):
    """Shapes as a user's plain tf.data pipeline: (images [B, H, W, 3] float32, {"boxes" in `bounding_box_format`,
    "labels" padded with -1, "masks" [B, M, H, W] uint8}), repeating; no kdet code after the arrays."""
    records = make_shapes(count, size, seed=seed, min_objects=min_objects, max_objects=max_objects).records
    most = max(1, max(len(r.labels) for r in records))
    boxes = np.zeros((count, most, 4), np.float32)
    labels = -np.ones((count, most), np.int32)
    masks = np.zeros((count, most, *size), np.uint8)
    for i, r in enumerate(records):
        n = len(r.labels)
        boxes[i, :n] = convert_format(r.boxes, "yxyx", bounding_box_format, *size)
        labels[i, :n], masks[i, :n] = r.labels, r.masks
    images = np.stack([r.image for r in records]).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images, {"boxes": boxes, "labels": labels, "masks": masks}))
    return ds.batch(batch_size).repeat()


# -- the loss ---------------------------------------------------------------------------------------------------------
def test_mask_loss_uses_only_the_ground_truth_class_map():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2, 5, 28, 28, 4)).astype(np.float32)
    labels = np.array([[1, 3, 0, -1, 2], [2, 0, 0, 0, 0]], np.int32)     # columns; 0 background, -1 empty slot
    targets = (rng.uniform(size=(2, 5, 28, 28)) > 0.5).astype(np.float32)
    loss = float(mask_loss(logits, labels, targets))
    own = np.stack([logits[b, r, :, :, labels[b, r]] for b, r in [(0, 0), (0, 1), (0, 4), (1, 0)]])
    own_targets = targets[[0, 0, 0, 1], [0, 1, 4, 0]]
    reference = np.mean(np.maximum(own, 0) - own * own_targets + np.log1p(np.exp(-np.abs(own))))
    np.testing.assert_allclose(loss, reference, rtol=1e-5)
    other = logits.copy()
    for b in range(2):
        for r in range(5):
            columns = [c for c in range(4) if c != labels[b, r] or labels[b, r] <= 0]
            other[b, r][..., columns] = rng.normal(0, 5, (28, 28, len(columns)))
    assert float(mask_loss(other, labels, targets)) == pytest.approx(loss, rel=1e-6)
    changed = logits.copy()
    changed[0, 1, ..., 3] += 1.0
    assert abs(float(mask_loss(changed, labels, targets)) - loss) > 1e-3
    assert float(mask_loss(logits, np.zeros_like(labels), targets)) == 0.0  # no foreground: 0, not NaN


def test_class_logits_equal_the_predictors_map_of_each_rois_column():
    """Inference's predictor path (transposed conv as 1x1 conv + pixel shuffle, one weight column per RoI) against
    numpy's 2x2 stride-2 transposed conv, ReLU and 1x1 conv on every column, then the RoI's column."""
    rng = np.random.default_rng(1)
    predictor = MaskRCNNPredictor(5, channels=6)
    predictor.build((None, None, 3, 4, 7))
    for weight in predictor.weights:
        weight.assign(rng.normal(0, 0.5, weight.shape).astype(np.float32))
    x = rng.normal(size=(2, 3, 3, 4, 7)).astype(np.float32)
    columns = np.array([[1, 4, 0], [2, -1, 3]], np.int32)  # -1 (an empty slot) reads column 0, as class_maps
    kernel, bias = predictor.conv5_mask.kernel.numpy(), predictor.conv5_mask.bias.numpy()  # [2, 2, 6, 7], [6]
    up = np.zeros((2, 3, 6, 8, 6), np.float32)
    for a in range(2):
        for b in range(2):
            up[:, :, a::2, b::2] = x @ kernel[a, b].T
    up = np.maximum(up + bias, 0)
    maps = up @ predictor.mask_fcn_logits.kernel.numpy()[0, 0] + predictor.mask_fcn_logits.bias.numpy()
    want = np.stack([[maps[i, r, ..., max(c, 0)] for r, c in enumerate(row)] for i, row in enumerate(columns)])
    got = predictor.class_logits(tf.constant(x), tf.constant(columns)).numpy()
    assert got.shape == (2, 3, 6, 8)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(predictor(x).numpy(), maps, atol=1e-4, rtol=1e-5)  # the training path's layers


# -- the model --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    keras.utils.set_random_seed(0)
    model = MaskRCNN(3, image_size=SIZE, bounding_box_format="xyxy", class_names=["a", "b", "c"], **TINY)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(masks_dataset(SIZE), epochs=3, steps_per_epoch=4, verbose=0).history
    model.box_settings["box_score_threshold"] = 0.0  # an untrained box head: detections all the same
    return model, history


def test_fit_with_masks_trains_every_part(fitted):
    model, history = fitted
    assert MODELS["mask_rcnn"] is MaskRCNN and model.data_needs.instance_masks
    for name in ("loss", "mask", "classification", "rpn_objectness"):
        assert all(np.isfinite(history[name])), history
    assert history["loss"][-1] < history["loss"][0] and history["mask"][-1] < history["mask"][0], history


def test_predict_returns_pasted_masks_at_any_size(fitted, tmp_path):
    model, _ = fitted
    result = check_predict_any_size(model, (80, 96))        # boxes, scores, classes equal a model built at 80x96
    masks, counts = result["masks"], result["num_detections"]
    assert masks.shape == (2, 10, 80, 96) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    assert counts.max() > 0 and masks.sum() > 0
    for i, n in enumerate(counts):
        assert not masks[i, n:].any()                        # rows past num_detections are zeros
    # Each mask equals the predicted class's map pasted at its box (decode's pieces, recomputed here).
    images = shapes_images((80, 96)).astype(np.float32)
    outputs = model(images, training=False)
    detections = model.decode(outputs, (80, 96))
    # predict runs compiled, this eager: float summation order can move a pixel that sits at the 0.5 threshold (one
    # in 153600 differed in one CI run), so a few such pixels are allowed, not a different mask.
    differ = detections["masks"].numpy() != masks
    assert differ.mean() < 1e-4, f"{differ.sum()} of {differ.size} mask pixels differ from decode's"
    check_reload_in_fresh_process(model, tmp_path)           # .keras with safe_mode, masks equal


def test_boxless_images_and_empty_masks_train_without_nan(fitted):
    model, _ = fitted
    images = np.stack([r.image for r in make_shapes(2, SIZE, seed=3).records]).astype(np.float32)
    empty = {"boxes": np.zeros((2, 0, 4), np.float32), "labels": np.zeros((2, 0), np.int32),
             "masks": np.zeros((2, 0, *SIZE), np.uint8)}
    logs = model.train_on_batch(images, empty, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["mask"] == 0.0, logs
    # One object whose mask is all zero (e.g. cropped away), next to padding (xyxy boxes: the model's format).
    hollow = {"boxes": np.array([[[8, 8, 40, 40], [0, 0, 0, 0]]] * 2, np.float32),
              "labels": np.array([[1, -1], [-1, -1]], np.int32), "masks": np.zeros((2, 2, *SIZE), np.uint8)}
    logs = model.train_on_batch(images, hollow, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values()) and logs["mask"] > 0.0, logs


def test_bad_targets_and_backbone_fail_clearly(fitted):
    model, _ = fitted
    boxes = {"boxes": tf.constant([[[8.0, 8.0, 40.0, 40.0]]]), "labels": tf.constant([[0]])}
    with pytest.raises(ValueError, match="'masks' is missing"):
        model.encode_targets(boxes, SIZE)
    with pytest.raises(ValueError, match="2 masks per image but y\\['boxes'\\] 1"):
        model.encode_targets(dict(boxes, masks=tf.zeros((1, 2, *SIZE), tf.uint8)), SIZE)
    with pytest.raises(ValueError, match="images' pixels"):
        model.encode_targets(dict(boxes, masks=tf.zeros((1, 1, 32, 32), tf.uint8)), SIZE)

    @tf.function(input_signature=[tf.TensorSpec([1, None, 4]), tf.TensorSpec([1, None], tf.int32),
                                  tf.TensorSpec([1, None, None, None], tf.uint8)])
    def relaxed(boxes, labels, masks):  # shapes unknown at trace time: checked when it runs
        return model.encode_targets({"boxes": boxes, "labels": labels, "masks": masks}, SIZE)["masks"]

    with pytest.raises(tf.errors.InvalidArgumentError, match="one mask per box"):
        relaxed(boxes["boxes"], boxes["labels"], tf.zeros((1, 2, *SIZE), tf.uint8))
    with pytest.raises(ValueError, match="resnet_fpn"):
        MaskRCNN(3, backbone="vgg16")


def test_configs_build_with_faster_rcnn_arguments_passed_through():
    shapes = build_model(load_config(REPO / "configs/mask_rcnn_shapes.yaml"))
    assert isinstance(shapes, MaskRCNN) and shapes.depth == 18 and shapes.fpn_channels == 32
    assert shapes.mask_head.convs[0].kernel.shape == (3, 3, 32, 64)
    assert shapes.mask_predictor.mask_fcn_logits.kernel.shape == (1, 1, 64, 4)
    clone = MaskRCNN.from_config(shapes.get_config())
    assert clone.get_config() == shapes.get_config()
    coco = load_config(REPO / "configs/mask_rcnn_resnet50_fpn_coco.yaml")
    assert coco.model.name == "mask_rcnn" and coco.model.args["depth"] == 50 and coco.model.num_classes == 80
    nuclei = load_config(REPO / "configs/mask_rcnn_r18_fpn_nuclei.yaml")
    assert nuclei.data.format == "label_image" and nuclei.model.name == "mask_rcnn"


# -- evaluation -------------------------------------------------------------------------------------------------------
def test_evaluation_reports_mask_ap_next_to_box_ap():
    data = make_shapes(4, (48, 64), seed=5)
    perfect = [{"boxes": r.boxes, "scores": np.ones(len(r.labels)), "classes": r.labels, "masks": r.masks,
                "image_id": r.image_id} for r in data.records]
    results = evaluate_detections(data, perfect, metric="coco")
    assert results["AP"] == pytest.approx(1.0) and results["mask_AP"] == pytest.approx(1.0)
    # Right boxes, masks shifted by 6 px: box AP stays 1, mask AP falls.
    shifted = [dict(d, masks=np.roll(d["masks"], 6, axis=2)) for d in perfect]
    results = evaluate_detections(data, shifted, metric="coco")
    assert results["AP"] == pytest.approx(1.0) and results["mask_AP"] < 0.9
    boxes_only = evaluate_detections(data, [{k: v for k, v in d.items() if k != "masks"} for d in perfect], "coco")
    assert "mask_AP" not in boxes_only


def test_masks_map_back_to_the_original_frame():
    mask = np.zeros((1, 64, 64), np.uint8)
    mask[0, 16:32, 8:24] = 1                          # input frame of a 32 x 128 original stretched to 64 x 64
    back = masks_to_original(mask, np.array([2.0, 0.5]), (32, 128))
    assert back.shape == (1, 32, 128)
    rows, cols = np.nonzero(back[0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 15, 16, 47)
