"""`model.predict` on arrays (issue 18: bimodal per call while `predict_on_batch` stayed steady): kdet's
`Detector.predict` feeds Keras a tf.data pipeline without autotuning, and must give exactly what the compiled
predict function gives batch by batch, for every input form Keras' own `predict` takes."""
import keras
import numpy as np
import tensorflow as tf

from tests.testing import make_tiny_detector

KEYS = ("boxes", "scores", "classes", "num_detections")


def _per_batch(model, images, batch_size):
    parts = [model.predict_on_batch(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return {key: np.concatenate([part[key] for part in parts]) for key in KEYS}


def test_predict_equals_predict_on_batch_and_keras_own_predict():
    model, images = make_tiny_detector(batch=5, seed=3)
    expected = _per_batch(model, images, 2)
    assert 0 < int(expected["num_detections"].sum()) < 5 * model.max_detections  # some rows, not all: a real check
    for name, got in [("array", model.predict(images, batch_size=2, verbose=0)),
                      ("tensor", model.predict(tf.constant(images), batch_size=2, verbose=0)),
                      ("keras", keras.Model.predict(model, images, batch_size=2, verbose=0))]:
        for key in KEYS:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{name}: {key}")
    everything = _per_batch(model, images, 32)  # Keras' default batch size: one batch
    np.testing.assert_array_equal(model.predict(images, verbose=0)["boxes"], everything["boxes"])


def test_datasets_and_steps_go_to_keras_unchanged():
    model, images = make_tiny_detector(batch=4, seed=1)
    expected = _per_batch(model, images, 2)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(2)
    got = model.predict(dataset, verbose=0)
    np.testing.assert_array_equal(got["boxes"], expected["boxes"])
    first = model.predict(images, batch_size=2, steps=1, verbose=0)  # steps: the first batch only
    np.testing.assert_array_equal(first["scores"], expected["scores"][:2])
