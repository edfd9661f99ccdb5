"""Faster R-CNN as a model: the Keras-native path, joint training on shapes, decoding, export parity, save/load,
mixed precision, bad input, options."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.data.pipeline import make_tf_dataset
from kdet.data.shapes import make_shapes
from kdet.layers.proposals import ProposalGenerator
from kdet.models.faster_rcnn import FasterRCNN
from tests.harness import check_keras_native, keras_shapes_dataset, shapes_images
from tests.testing import check_export_parity

SIZE = (128, 128)
# Small everything: a ResNet-18 at 1/8 width, 16-channel FPN, few proposals and sampled RoIs in training. At
# inference no proposal cap binds (4092 anchors at 128x128): a cut inside near-tied objectness values could keep a
# different proposal in TFLite than in TF, so export parity would hinge on float noise.
TINY_FPN = dict(backbone="resnet_fpn", depth=18, base_width=8, fpn_channels=16,
                anchor_sizes=((16,), (32,), (64,), (128,), (256,)), rpn_pre_nms_top_n_train=200,
                rpn_pre_nms_top_n_test=4096, rpn_post_nms_top_n_train=64, rpn_post_nms_top_n_test=4096,
                rpn_batch_size_per_image=64, representation_size=64, box_batch_size_per_image=64, max_detections=20)
TINY_VGG = dict(backbone="vgg16", vgg_widths=(8, 16, 32, 32, 32), anchor_sizes=((24, 48, 96),),
                rpn_pre_nms_top_n_train=300, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_train=64,
                rpn_post_nms_top_n_test=64, rpn_batch_size_per_image=64, representation_size=64,
                box_batch_size_per_image=64, max_detections=20)


def separated_threshold(model, images, floor=1e-3):
    """A score threshold in the widest gap between the detection scores of `images` (above every image's last row,
    so the max_detections cap does not bind): no score sits near it, so float differences between runtimes cannot
    move a detection across it. Training decides how confident the tiny model is; this keeps the tests independent
    of it."""
    model.box_settings["box_score_threshold"] = floor
    scores = model.detect(images.astype(np.float32))["scores"].numpy()
    candidates = np.sort(scores[scores > max(floor, scores[:, -1].max())])[::-1]
    assert len(candidates) >= 2, scores
    gaps = candidates[:-1] - candidates[1:]
    best = int(np.argmax(gaps))
    return float(candidates[best] + candidates[best + 1]) / 2


def batches(num_images=48, batch_size=8, empty_batches=0):
    """Shapes batches (images, {"boxes" yxyx, "labels"}) for `fit`, after `empty_batches` batches of images without
    any object (M = 0)."""
    ds = make_tf_dataset(make_shapes(num_images, SIZE), SIZE, batch_size, training=True, seed=0)
    if empty_batches:
        empty = make_shapes(batch_size * empty_batches, SIZE, min_objects=0, max_objects=0)
        ds = make_tf_dataset(empty, SIZE, batch_size).concatenate(ds.repeat())
    return ds.map(lambda batch: (batch["images"], batch["bounding_boxes"])).repeat()


def test_keras_native_path(tmp_path):
    """Must show (issue 14): fit on a Keras-only tf.data pipeline (xyxy boxes), predict a 96x128 image with boxes in
    its own pixels equal to a model built at that size, reload in a fresh process with the class names."""
    keras.utils.set_random_seed(0)
    model = FasterRCNN(3, image_size=(64, 64), bounding_box_format="xyxy", class_names=["a", "b", "c"],
                       **{**TINY_FPN, "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100,
                          "max_detections": 10})
    model.box_settings["box_score_threshold"] = 0.0  # an untrained box head: detections all the same
    check_keras_native(model, tmp_path, other_size=(96, 128), epochs=3, steps_per_epoch=3)


@pytest.fixture(scope="module")
def trained():
    """The tiny FPN model after 120 joint steps (after 60, one fit in three had not learnt to localise: its best
    box missed the objects of all 16 images tried; after 120, 4 of 4 fits hit 15-16 of 16); its first two batches
    hold no object at all (all-negative RPN, background-only RoIs), which must train like any other."""
    keras.utils.set_random_seed(0)
    model = FasterRCNN(3, image_size=SIZE, **TINY_FPN)
    model(np.zeros((1, *SIZE, 3), np.float32))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(batches(empty_batches=2), steps_per_epoch=10, epochs=12, verbose=0).history
    return model, history


@pytest.mark.slow
def test_joint_training_loss_falls(trained):
    _, history = trained
    # The parts do not all fall together: as proposals improve, more sampled RoIs are foreground, whose box loss
    # counts and whose class is harder than background.
    # So the total is checked at its best epoch after the first (one CI run ended at 0.4731 from 0.4726, through 0.386).
    assert min(history["loss"][1:]) < 0.9 * history["loss"][0], history["loss"]
    assert history["rpn_objectness"][-1] < 0.5 * history["rpn_objectness"][0], history["rpn_objectness"]
    assert history["classification"][-1] < history["classification"][0], history["classification"]
    assert all(np.isfinite(history[name]).all() for name in history)


@pytest.mark.slow
def test_decode_gives_the_detection_dict(trained):
    model, _ = trained
    data = make_shapes(4, SIZE, seed=11)
    images = np.stack([r.image for r in data.records]).astype(np.float32)
    threshold = 1e-3  # how confident 120 steps make the model varies by machine; the contract does not
    model.box_settings["box_score_threshold"] = threshold
    out = {k: v.numpy() for k, v in model.detect(images).items()}
    assert out["boxes"].shape == (4, 20, 4) and out["scores"].shape == (4, 20)
    assert out["classes"].dtype == np.int32 and out["num_detections"].dtype == np.int32
    assert out["num_detections"].sum() > 0
    for b, n in enumerate(out["num_detections"]):
        boxes, scores, classes = out["boxes"][b, :n], out["scores"][b, :n], out["classes"][b, :n]
        assert np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= SIZE[0]) and np.all(boxes[:, [1, 3]] <= SIZE[1])
        assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
        assert np.all(scores > threshold) and np.all(np.diff(scores) <= 1e-6) and np.all((classes >= 0) & (classes < 3))
        assert not np.any(out["boxes"][b, n:]) and not np.any(out["scores"][b, n:])
    # The best detection of each image overlaps one of its objects.
    hits = 0
    for b, record in enumerate(data.records):
        if out["num_detections"][b]:
            best = out["boxes"][b, 0]
            ih = np.clip(np.minimum(best[2], record.boxes[:, 2]) - np.maximum(best[0], record.boxes[:, 0]), 0, None)
            iw = np.clip(np.minimum(best[3], record.boxes[:, 3]) - np.maximum(best[1], record.boxes[:, 1]), 0, None)
            hits += np.any(ih * iw > 0)
    assert hits >= 2


@pytest.mark.slow
def test_export_parity(trained, tmp_path):
    """SavedModel, TFLite (builtins only: no SELECT_TF_OPS needed) and ONNX give the Keras detections."""
    model, _ = trained
    images = np.stack([r.image for r in make_shapes(2, SIZE, seed=5).records])
    model.box_settings["box_score_threshold"] = separated_threshold(model, images)
    assert model.detect(images.astype(np.float32))["num_detections"].numpy().sum() > 0
    reports = check_export_parity(model, images, tmp_path, formats=("saved_model", "tflite", "onnx"),
                                  box_atol=1e-2, score_atol=1e-4, check_serving_bytes=False)
    assert set(reports) == {"saved_model", "tflite", "onnx"}


def test_config_round_trip_save_load_and_options(tmp_path):
    model = FasterRCNN(3, image_size=(64, 64), **TINY_VGG)
    config = model.get_config()
    clone = FasterRCNN.from_config(config)
    assert clone.get_config() == config and clone.roi_pooling == "pool" and clone.head_dropout == 0.5
    images = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    expected = model(images)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")  # safe_mode: every layer is registered
    np.testing.assert_allclose(loaded(images)["class_logits"], expected["class_logits"], atol=1e-6)
    assert model.anchor_grid((64, 64))[0].shape == (4 * 4 * 9, 4)
    assert FasterRCNN.from_config(dict(config, backbone_weights=None)).get_config() == config  # older .keras files
    with pytest.raises(ValueError, match="roi_pooling='pool' needs a single feature map"):
        FasterRCNN(3, image_size=(64, 64), roi_pooling="pool", **{**TINY_FPN, "max_detections": 5})
    with pytest.raises(ValueError, match="backbone must be one of"):
        FasterRCNN(3, backbone="resnet_c5")
    with pytest.raises(ValueError, match="anchor_sizes needs 5 level"):
        FasterRCNN(3, image_size=(64, 64), **{**TINY_FPN, "anchor_sizes": ((32,),)})


def test_fast_rcnn_stage_on_given_proposals():
    """stage "fast_rcnn" with x = {"images", "proposals"} (what the schedules feed): Keras' compute_loss finds the
    images in the dict, the RPN does not run, the given proposals (clipped to the input) are the RoIs."""
    keras.utils.set_random_seed(3)
    model = FasterRCNN(3, image_size=(64, 64), stage="fast_rcnn", **TINY_VGG)
    x = {"images": tf.fill([1, 48, 80, 3], 100.0),
         "proposals": tf.constant([[[4.0, 6.0, 30.0, 40.0], [10.0, 50.0, 60.0, 90.0], [0.0, 0.0, 0.0, 0.0]]])}
    y = {"boxes": tf.constant([[[5.0, 5.0, 30.0, 42.0]]]), "labels": tf.constant([[2.0]])}  # float, as Keras gives
    y_pred = model(x, training=True)
    assert "rpn_objectness" not in y_pred
    np.testing.assert_array_equal(y_pred["proposals"].numpy()[0, :2], [[4, 6, 30, 40], [10, 50, 48, 80]])
    np.testing.assert_array_equal(y_pred["proposal_valid"].numpy(), [[True, True, False]])
    loss = model.compute_loss(x, y, y_pred)
    parts = {m.name: float(m.result()) for m in model.metrics if m.name in model.loss_names}
    assert parts["rpn_objectness"] == 0 and parts["classification"] > 0 and parts["box_regression"] > 0
    np.testing.assert_allclose(float(loss), parts["classification"] + parts["box_regression"], rtol=1e-6)
    assert model.detect(x)["boxes"].shape == (1, 20, 4)


@pytest.mark.slow
def test_c4_head_on_an_image_smaller_than_the_anchors():
    """ResNet C4 + res5 head, 32x32 images under 128-512 px anchors: every object still gets its best anchors."""
    keras.utils.set_random_seed(2)
    model = FasterRCNN(3, image_size=(32, 32), backbone="resnet_c4", depth=18, base_width=8, frozen_stages=1,
                       rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=32, rpn_pre_nms_top_n_test=100,
                       rpn_post_nms_top_n_test=32, box_batch_size_per_image=32, max_detections=10)
    assert model.anchor_sizes == ((128, 256, 512),) and model.anchor_grid((32, 32))[0].shape == (2 * 2 * 9, 4)
    images = tf.fill([2, 32, 32, 3], 128.0)
    targets = model.encode_targets({"boxes": tf.constant([[[4.0, 4.0, 20.0, 24.0]], [[0.0] * 4]]),
                                    "labels": tf.constant([[1], [-1]])}, (32, 32))
    assert targets["rpn_labels"].numpy()[0].max() == 1 and targets["rpn_labels"].numpy()[1].max() == 0
    # One eager forward + backward pass (no graph to trace): the frozen stem is not trained, the per-RoI res5 is.
    model(images)
    stem, res5 = model.backbone.conv1[-1].kernel, model.backbone.stages[3][0].conv1[-1].kernel
    assert not any(v is stem for v in model.trainable_weights) and any(v is res5 for v in model.trainable_weights)
    with tf.GradientTape() as tape:
        loss = model.loss_from_targets(targets, model(images, training=True), images)
    gradients = tape.gradient(loss, model.trainable_weights)
    assert np.isfinite(loss.numpy()) and {m.name: m for m in model.metrics}["rpn_objectness"].result() > 0
    assert all(g is None or np.all(np.isfinite(g)) for g in gradients)
    assert np.any(gradients[[i for i, v in enumerate(model.trainable_weights) if v is res5][0]].numpy())
    features = model.extract_features(images)[1]
    assert model.box_head_outputs(features, tf.zeros([2, 5, 4]))[1].shape == (2, 5, 4, 4)
    assert model.detect(images)["boxes"].shape == (2, 10, 4)


def test_mixed_bfloat16_builds_fits_and_predicts():
    """Under mixed_bfloat16 (issue 18: the proposal generator cast the anchors to bf16 and crashed) the model builds,
    fits and predicts at another size; anchors, proposals and box decoding stay float32."""
    data = keras_shapes_dataset((64, 64), 2, bounding_box_format="yxyx")  # its Keras layers keep float32 images
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(1)
        model = FasterRCNN(3, image_size=(64, 64), **{**TINY_FPN, "rpn_pre_nms_top_n_test": 300,
                                                      "rpn_post_nms_top_n_test": 100, "max_detections": 10})
        assert model.compute_dtype == "bfloat16" and model.proposal_generator.compute_dtype == "float32"
        assert model.roi_align.compute_dtype == "float32"
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        history = model.fit(data, steps_per_epoch=1, epochs=1, verbose=0).history
        assert all(np.isfinite(values).all() for values in history.values()) and history["rpn_objectness"][0] > 0
        model.box_settings["box_score_threshold"] = 0.0
        out = model.predict(shapes_images((80, 96)), verbose=0)
        assert out["boxes"].dtype == np.float32 and out["num_detections"].min() > 0
        assert np.all(out["boxes"] >= 0) and np.all(out["boxes"][..., [0, 2]] <= 80) and \
            np.all(out["boxes"][..., [1, 3]] <= 96)
        # Zero deltas give the anchors back to the bit: in bfloat16 1000.25 would be 1000 (spacing 4 there).
        anchors = tf.constant([[1000.25, 1500.75, 1100.75, 1650.5], [10.5, 20.25, 60.5, 90.75]])
        proposals = ProposalGenerator()(tf.constant([[2.0, 1.0]], tf.bfloat16), tf.zeros([1, 2, 4], tf.bfloat16),
                                        anchors, anchors_per_level=[2], image_size=(2000, 2000))
        assert proposals["proposals"].dtype == tf.float32
        np.testing.assert_array_equal(proposals["proposals"].numpy()[0, :2], anchors.numpy())
    finally:
        keras.mixed_precision.set_global_policy("float32")
