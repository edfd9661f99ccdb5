"""The per-model test harness: the same Keras-native checks for every architecture, each model's test file keeps
only what is specific to it.

    check_fit(model, size)                  model.fit on a plain tf.data pipeline made only of Keras preprocessing
                                            layers (Resizing + RandomFlip with bounding boxes, padded_batch):
                                            finite losses that fall
    check_predict_any_size(model, size)     model.predict on images of another size == a model of that size with
                                            the same weights (or, for fixed-size networks, the resized image with
                                            boxes scaled back), boxes inside the image, in `bounding_box_format`
    check_reload_in_fresh_process(model)    model.save(.keras), then keras.saving.load_model after `import kdet` in a
                                            new Python process, safe_mode on: same predictions
    check_keras_native(model, tmp_path)     all three, the "Must show" of the one-path issue

Detection models train on (images, {"boxes", "labels"}); semantic models (`task == "semantic"`) on (images, masks).
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kdet.data.shapes import make_shapes
from kdet.ops import convert_format

REPO = Path(__file__).resolve().parents[1]


def keras_shapes_dataset(image_size, batch_size=4, count=16, bounding_box_format="xyxy", seed=0, semantic=False,
                         source_size=(96, 112), flip=True, instance_masks=False):
    """Synthetic shapes through a pipeline a Keras user would write: no kdet code after the raw arrays.

    Returns a repeating tf.data.Dataset of (images float32 [B, H, W, 3] 0..255, {"boxes": [B, M, 4] in
    `bounding_box_format`, "labels": [B, M] float32 padded with -1}) or, with `semantic`, (images, masks
    [B, H, W, 1] int32 with 0 = background and class + 1 elsewhere).
    """
    data = make_shapes(count, source_size, seed=seed)
    height, width = image_size
    if semantic:
        images = np.stack([r.image for r in data.records]).astype(np.float32)
        masks = np.stack([r.segmentation for r in data.records]).astype(np.int32)[..., None]
        ds = tf.data.Dataset.from_tensor_slices((images, masks))
        ds = ds.map(lambda x, m: (keras.layers.Resizing(height, width)(x),
                                  tf.cast(keras.layers.Resizing(height, width, interpolation="nearest")(m), tf.int32)))
        return ds.batch(batch_size).repeat()

    if instance_masks:  # Mask R-CNN: (images, {"boxes", "labels", "masks" [B, M, H, W]}), made at the model's size
        data = make_shapes(count, image_size, seed=seed)
        most = max(len(r.labels) for r in data.records)
        boxes = np.zeros((count, most, 4), np.float32)
        labels = -np.ones((count, most), np.float32)
        masks = np.zeros((count, most, height, width), np.uint8)
        for i, r in enumerate(data.records):
            n = len(r.labels)
            boxes[i, :n] = convert_format(r.boxes, "yxyx", bounding_box_format, height, width)
            labels[i, :n], masks[i, :n] = r.labels, r.masks
        images = np.stack([r.image for r in data.records]).astype(np.float32)
        ds = tf.data.Dataset.from_tensor_slices((images, {"boxes": boxes, "labels": labels, "masks": masks}))
        return ds.batch(batch_size).repeat()

    def elements():
        for r in data.records:
            boxes = np.asarray(convert_format(r.boxes, "yxyx", bounding_box_format, *source_size), np.float32)
            yield {"images": r.image.astype(np.float32),
                   "bounding_boxes": {"boxes": boxes, "labels": r.labels.astype(np.float32)}}

    spec = {"images": tf.TensorSpec([None, None, 3], tf.float32),
            "bounding_boxes": {"boxes": tf.TensorSpec([None, 4], tf.float32),
                               "labels": tf.TensorSpec([None], tf.float32)}}
    ds = tf.data.Dataset.from_generator(elements, output_signature=spec).cache()
    ds = ds.map(keras.layers.Resizing(height, width, bounding_box_format=bounding_box_format))
    if flip:
        ds = ds.map(keras.layers.RandomFlip("horizontal", bounding_box_format=bounding_box_format, seed=seed))
    ds = ds.padded_batch(batch_size, padding_values={"images": 0.0,
                                                     "bounding_boxes": {"boxes": 0.0, "labels": -1.0}})
    return ds.map(lambda e: (e["images"], e["bounding_boxes"])).repeat()


def shapes_images(size, count=2, seed=7):
    """uint8 [count, H, W, 3] held-out shapes images at `size`."""
    return np.stack([r.image for r in make_shapes(count, size, seed=seed).records])


def check_fit(model, size=None, epochs=3, steps_per_epoch=4, batch_size=4, learning_rate=1e-3, optimizer=None):
    """Fit on the Keras-only pipeline; every loss finite, the last epoch's loss below the first's. Returns the
    History's dict."""
    size = tuple(size or model.image_size)
    semantic = model.task == "semantic"
    ds = keras_shapes_dataset(size, batch_size, bounding_box_format=model.bounding_box_format, semantic=semantic,
                              instance_masks=model.data_needs.instance_masks)
    model.compile(optimizer=optimizer or keras.optimizers.Adam(learning_rate))
    history = model.fit(ds, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0).history
    losses = history["loss"]
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], f"loss did not fall over {epochs} epochs: {losses}"
    return history


def _as_numpy(outputs):
    return {k: np.asarray(v) for k, v in outputs.items()}


def _in_image(boxes, model, size):
    yxyx = np.asarray(convert_format(boxes, model.bounding_box_format, "yxyx", *size))
    height, width = size
    return np.all(yxyx >= -1e-3) and np.all(yxyx[..., [0, 2]] <= height + 1e-3) and \
        np.all(yxyx[..., [1, 3]] <= width + 1e-3)


def check_predict_any_size(model, size, reference="twin", atol=1e-3, images=None):
    """`model.predict` on images of `size` (not the model's own) against a reference computed at that size.

    reference "twin": a new model of the same class and config but `image_size=size`, given the same weights, must
    give the same predictions (anchors, grids and priors then come from the constructor; here from the input).
    reference "resize": fixed-size networks (a fully connected head) must equal predict on the image resized to the
    model's size, boxes scaled back to the input's pixels. Returns the predictions.
    """
    size = tuple(size)
    assert size != tuple(model.image_size), "pick a size the model was not built at"
    images = shapes_images(size) if images is None else images
    result = _as_numpy(model.predict(images, verbose=0))
    if reference == "twin":
        twin = type(model).from_config(dict(model.get_config(), image_size=list(size)))
        twin(images[:1])
        twin.set_weights(model.get_weights())
        expected = _as_numpy(twin.predict(images, verbose=0))
    else:
        resized = tf.image.resize(images.astype(np.float32), model.image_size).numpy()
        expected = _as_numpy(model.predict(resized, verbose=0))
        if "boxes" in expected:
            (h, w), (mh, mw) = size, model.image_size
            scale = {"yxyx": [h / mh, w / mw] * 2, "xyxy": [w / mw, h / mh] * 2, "xywh": [w / mw, h / mh] * 2,
                     "center_xywh": [w / mw, h / mh] * 2}[model.bounding_box_format]
            expected["boxes"] = expected["boxes"] * np.asarray(scale, np.float32)
    assert sorted(result) == sorted(expected)
    if model.task == "semantic":
        assert result["masks"].shape == images.shape[:3]
        np.testing.assert_array_equal(result["masks"], expected["masks"])
        np.testing.assert_allclose(result["probabilities"], expected["probabilities"], atol=atol)
        return result
    np.testing.assert_array_equal(result["num_detections"], expected["num_detections"])
    for i, count in enumerate(result["num_detections"]):
        np.testing.assert_array_equal(result["classes"][i, :count], expected["classes"][i, :count])
        np.testing.assert_allclose(result["scores"][i, :count], expected["scores"][i, :count], atol=atol)
        np.testing.assert_allclose(result["boxes"][i, :count], expected["boxes"][i, :count], atol=atol * 100)
        assert _in_image(result["boxes"][i, :count], model, size)
    return result


_RELOAD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import kdet, keras
    model = keras.saving.load_model(sys.argv[1])          # safe_mode=True is Keras' default
    out = model.predict(np.load(sys.argv[2]), verbose=0)
    np.savez(sys.argv[3], **{k: np.asarray(v) for k, v in out.items()})
    print(json.dumps({"class": type(model).__name__, "class_names": getattr(model, "class_names", None)}))
""")


def check_reload_in_fresh_process(model, tmp_path, images=None, atol=1e-4):
    """Save as .keras, load it in a new Python process after `import kdet`, compare the predictions there."""
    tmp_path = Path(tmp_path)
    images = shapes_images(model.image_size) if images is None else images
    expected = _as_numpy(model.predict(images, verbose=0))
    path, inputs, outputs = tmp_path / "model.keras", tmp_path / "images.npy", tmp_path / "reloaded.npz"
    model.save(path)
    np.save(inputs, images)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-c", _RELOAD, str(path), str(inputs), str(outputs)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads(run.stdout.strip().splitlines()[-1])
    assert info["class"] == type(model).__name__
    assert info["class_names"] == getattr(model, "class_names", None)
    reloaded = dict(np.load(outputs))
    assert sorted(reloaded) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(reloaded[key], value, atol=atol, err_msg=key)
    return reloaded


def check_keras_native(model, tmp_path, other_size, reference="twin", fit_size=None, **fit_kwargs):
    """fit on a Keras-only pipeline, predict at another size, reload in a fresh process: the whole user path."""
    check_fit(model, fit_size, **fit_kwargs)
    check_predict_any_size(model, other_size, reference)
    check_reload_in_fresh_process(model, tmp_path)
