"""Classification + localization: trains on single-object shapes, decodes, saves, exports with parity."""
import numpy as np
import pytest
import tensorflow as tf

import keras

from kdet.data.pipeline import make_tf_dataset
from kdet.data.shapes import make_shapes
from kdet.models.classloc import ClassLocModel, _paired_iou, _to_yxyx
from kdet.training.recipe import to_keras
from kdet.inference.runners import load_runner
from tests.harness import check_keras_native
from tests.testing import check_export_parity


def test_box_coding_and_iou_against_numpy():
    center = np.array([[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.1]], np.float32)
    yxyx = _to_yxyx(tf.constant(center)).numpy()
    np.testing.assert_allclose(yxyx, [[0.4, 0.3, 0.6, 0.7], [0.0, 0.7, 0.5, 0.8]], atol=1e-7)
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], np.float32)
    b = np.array([[1, 1, 3, 3], [2, 2, 3, 3]], np.float32)
    np.testing.assert_allclose(_paired_iou(tf.constant(a), tf.constant(b)).numpy(), [1 / 7, 0.0], atol=1e-6)


def test_encode_targets_take_the_first_box_relative_to_the_image():
    model = ClassLocModel(3, image_size=(64, 32))
    targets = {"boxes": tf.constant([[[16., 8., 48., 24.]], [[0., 0., 0., 0.]]]), "labels": tf.constant([[2], [-1]])}
    y = model.encode_targets(targets, (64, 32))
    np.testing.assert_allclose(y["boxes"].numpy()[0], [0.5, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(y["labels"].numpy(), [2, 0])
    np.testing.assert_array_equal(y["weights"].numpy(), [1, 0])  # an image without objects adds no loss
    # relative to the input's own size: the same box in an image twice as large is half as large
    y = model.encode_targets(targets, (128, 64))
    np.testing.assert_allclose(y["boxes"].numpy()[0], [0.25, 0.25, 0.25, 0.25])
    # a batch without any object at all (M = 0) trains as all-background: zero weights, no error
    empty = model.encode_targets({"boxes": tf.zeros([2, 0, 4]), "labels": tf.zeros([2, 0], tf.int32)}, (64, 32))
    np.testing.assert_array_equal(empty["weights"].numpy(), [0, 0])


@pytest.mark.slow
def test_keras_native_fit_predict_at_another_size_and_reload(tmp_path):
    """A Keras-only pipeline (Resizing + RandomFlip with boxes), boxes in xyxy; predict a 80x96 image (the FC head
    resizes it to 64x64, boxes come back in the image's pixels); load_model in a fresh process after import kdet."""
    keras.utils.set_random_seed(0)
    model = ClassLocModel(3, image_size=(64, 64), widths=(8, 16, 32), hidden=32, bounding_box_format="xyxy",
                          class_names=["circle", "square", "triangle"])
    check_keras_native(model, tmp_path, other_size=(80, 96), reference="resize", epochs=3, steps_per_epoch=5)


@pytest.mark.slow
def test_fit_lowers_the_loss_then_decode_save_and_export(tmp_path):
    keras.utils.set_random_seed(0)
    data = make_shapes(256, image_size=(64, 64), max_objects=1, min_size=0.3, max_size=0.6, seed=0)
    model = ClassLocModel(3, image_size=(64, 64), widths=(8, 16, 32, 32), hidden=32)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    ds = make_tf_dataset(data, (64, 64), 32, training=True).map(lambda b: to_keras(b, model))
    history = model.fit(ds, epochs=4, verbose=0).history
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert {"class_loss", "box_loss", "iou"} <= set(history)

    images = np.stack([r.image for r in data.records[:3]])
    out = model.predict(images, verbose=0)
    assert out["boxes"].shape == (3, 1, 4) and out["classes"].dtype == np.int32
    np.testing.assert_array_equal(out["num_detections"], [1, 1, 1])
    assert np.all(out["boxes"] >= 0) and np.all(out["boxes"] <= 64)

    # .keras round trip with safe_mode on gives the same detections
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    again = loaded.predict(images, verbose=0)
    np.testing.assert_allclose(again["boxes"], out["boxes"], atol=1e-4)

    reports = check_export_parity(model, images, tmp_path / "export", formats=("saved_model", "tflite", "onnx"))
    assert {"saved_model", "serving_bytes", "tflite", "onnx"} <= set(reports)
    # int8: after 32 steps the class is barely learnt (Keras' top class probability 0.34-0.51 of 3, top-2 margins
    # mostly below 0.1, varying run to run), so "same class" counted near-ties: int8 matched 0.22 of 32 in one CI
    # run with boxes within 0.32 px. Judged instead: every int8 box has IoU >= 0.8 with Keras', the top score is
    # within 0.02 (measured 0.003), and a class may differ only where Keras' top-2 margin is below 0.05.
    many = np.stack([r.image for r in data.records[:32]])
    reports = check_export_parity(model, many, tmp_path / "int8", formats=("tflite_int8",))
    assert reports["tflite_int8"]["keras_detections"] == reports["tflite_int8"]["artifact_detections"] == 32
    keras_out = model.predict(many, verbose=0)
    int8_out = load_runner(tmp_path / "int8" / "model_int8.tflite")(many)
    box_iou = _paired_iou(keras_out["boxes"][:, 0].astype(np.float32),
                          int8_out["boxes"][:, 0].astype(np.float32)).numpy()
    assert np.min(box_iou) >= 0.8, box_iou
    assert np.abs(keras_out["scores"][:, 0] - int8_out["scores"][:, 0]).max() <= 0.02
    top2 = np.sort(tf.nn.softmax(model(many.astype(np.float32))["class_logits"]).numpy(), axis=-1)[:, -2:]
    flipped = keras_out["classes"][:, 0] != int8_out["classes"][:, 0]
    assert np.all(top2[flipped, 1] - top2[flipped, 0] < 0.05), top2[flipped]
