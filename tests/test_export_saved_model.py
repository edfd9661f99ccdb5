"""SavedModel export: TF Serving's versioned layout, both signatures, serving_bytes in each image's own frame."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kdet.data.decode import decode_in_graph
from kdet.errors import KdetError
from kdet.export import export_saved_model, load_runner
from kdet.inference.runners import latest_version_dir
from tests.testing import (TinySegmenter, compare_detections, encode_jpeg, encode_png, keras_outputs,
                           make_tiny_detector, random_images)

pytestmark = pytest.mark.slow


CLASS_NAMES = ["red cell", "white cell", "plättchen"]


@pytest.fixture(scope="module")
def detector():
    return make_tiny_detector(batch=3, class_names=CLASS_NAMES)


@pytest.fixture(scope="module")
def exported(detector, tmp_path_factory):
    model, _ = detector
    return export_saved_model(model, tmp_path_factory.mktemp("serving") / "tiny")


def test_versions_are_integers_and_immutable(detector, exported, tmp_path):
    model, images = detector
    assert os.path.basename(exported) == "1"
    base = tmp_path / "tiny"
    first = export_saved_model(model, base)
    second = export_saved_model(model, base)
    assert [os.path.basename(first), os.path.basename(second)] == ["1", "2"]
    assert export_saved_model(model, base, version=7).endswith("7")
    assert latest_version_dir(base).endswith("7")
    assert sorted(os.listdir(base)) == ["1", "2", "7"]  # no staging directory left behind
    with pytest.raises(KdetError, match="already exists"):
        export_saved_model(model, base, version=2)
    # A runner on the base directory serves the highest version, like TF Serving.
    runner = load_runner(base)
    assert runner.path.endswith("7")
    compare_detections(keras_outputs(model, images), runner(images), name="saved_model base dir")


def test_serving_default_matches_keras_counts_included(detector, exported):
    model, images = detector
    reference = keras_outputs(model, images)
    counts = reference["num_detections"]
    assert counts.min() > 0 and counts.min() < model.max_detections and len(set(counts)) > 1, counts
    loaded = tf.saved_model.load(exported)
    signature = loaded.signatures["serving_default"]
    spec = signature.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, *model.image_size, 3]
    outputs = {k: v.numpy() for k, v in signature(images=tf.constant(images)).items()}
    assert sorted(outputs) == ["boxes", "classes", "num_detections", "scores"]
    report = compare_detections(reference, outputs, box_atol=1e-3, name="serving_default")
    assert report["detections"] == counts.sum()


def test_serving_bytes_boxes_in_each_images_own_frame(detector, exported):
    model, _ = detector
    height, width = model.image_size  # 64 x 80
    # Non-square originals whose aspect differs from the model's, so a swapped H/W scale cannot pass.
    originals = [random_images(model, 1, seed=11)[0], random_images(model, 1, seed=12)[0]]
    originals = [tf.image.resize(originals[0], (90, 150)).numpy().astype(np.uint8),
                 tf.image.resize(originals[1], (123, 61)).numpy().astype(np.uint8)]
    encoded = [encode_jpeg(originals[0]), encode_png(originals[1])]  # mixed formats in one request
    loaded = tf.saved_model.load(exported)
    outputs = {k: v.numpy() for k, v in loaded.signatures["serving_bytes"](image_bytes=tf.constant(encoded)).items()}
    for i, data in enumerate(encoded):
        pixels = decode_in_graph(tf.constant(data))  # kdet's one decoder, as training and predict
        original_h, original_w = pixels.shape[:2]
        resized = tf.image.resize(tf.cast(pixels, tf.float32), (height, width))[None]
        reference = {k: v.numpy() for k, v in model.detect(resized).items()}
        scale = np.array([original_h / height, original_w / width] * 2, np.float32)
        reference["boxes"] = reference["boxes"] * scale
        assert reference["num_detections"][0] > 0
        candidate = {k: v[i:i + 1] for k, v in outputs.items()}
        compare_detections(reference, candidate, box_atol=1e-3, name=f"serving_bytes image {i}")
        n = reference["num_detections"][0]
        assert candidate["boxes"][0, :n, 2].max() <= original_h + 1e-3
        assert candidate["boxes"][0, :n, 3].max() <= original_w + 1e-3


def test_serving_bytes_semantic_masks_resized_back_and_padded(tmp_path):
    model = TinySegmenter(image_size=(48, 64))
    path = export_saved_model(model, tmp_path / "seg")
    sizes = [(30, 50), (60, 40)]
    originals = [tf.image.resize(random_images(model, 1, seed=s)[0], size).numpy().astype(np.uint8)
                 for s, size in enumerate(sizes)]
    encoded = tf.constant([encode_png(image) for image in originals])
    outputs = {k: v.numpy() for k, v in
               tf.saved_model.load(path).signatures["serving_bytes"](image_bytes=encoded).items()}
    assert outputs["masks"].shape == (2, 60, 50) and outputs["probabilities"].shape == (2, 60, 50, 3)
    np.testing.assert_array_equal(outputs["original_size"], sizes)
    for i, (h, w) in enumerate(sizes):
        resized = tf.image.resize(tf.cast(originals[i], tf.float32), model.image_size)[None]
        reference = model.detect(resized)
        expected = tf.image.resize(reference["masks"][0, :, :, None], (h, w), method="nearest")[..., 0].numpy()
        np.testing.assert_array_equal(outputs["masks"][i, :h, :w], expected)
        assert (outputs["masks"][i, h:, :] == -1).all() and (outputs["masks"][i, :, w:] == -1).all()
        assert (outputs["probabilities"][i, h:, :] == 0).all()
        np.testing.assert_allclose(outputs["probabilities"][i, :h, :w].sum(-1), 1.0, atol=1e-5)


def test_saved_model_cli_lists_both_signatures(exported):
    # The console script TF installs; the same tool as a module where the script is not on PATH.
    command = [shutil.which("saved_model_cli")] if shutil.which("saved_model_cli") else \
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    result = subprocess.run(command + ["show", "--dir", exported, "--all"], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "signature_def['serving_default']" in out and "signature_def['serving_bytes']" in out
    assert "inputs['images'] tensor_info:" in out and "DT_UINT8" in out
    assert "inputs['image_bytes'] tensor_info:" in out and "DT_STRING" in out
    for key in ("boxes", "scores", "classes", "num_detections"):
        assert f"outputs['{key}']" in out


def test_runner_rejects_bad_shapes_instead_of_aborting(exported, detector):
    model, images = detector
    runner = load_runner(exported)
    with pytest.raises(KdetError, match="expects uint8 images"):
        runner(images[0])  # rank 3: the raw signature would abort the process
    with pytest.raises(KdetError, match="expects uint8 images"):
        runner(images.astype(np.float32))
    with pytest.raises(KdetError, match="expects uint8 images"):
        runner(images[:, :32])
    with pytest.raises(KdetError, match="no such artifact"):
        load_runner(os.path.join(exported, "missing"))


def test_class_names_for_tf_serving_and_the_runner(detector, exported):
    # TF Serving users: one name per line beside the SavedModel, in the version directory TF Serving copies.
    labels = os.path.join(exported, "assets.extra", "labels.txt")
    with open(labels, encoding="utf-8") as file:
        assert file.read() == "red cell\nwhite cell\nplättchen\n"
    # tf.saved_model.load users: an attribute of the loaded object.
    loaded = tf.saved_model.load(exported)
    assert [name.numpy().decode() for name in loaded.class_names] == CLASS_NAMES
    assert load_runner(exported).class_names == CLASS_NAMES


def test_class_names_absent_or_unwritable(tmp_path):
    model = TinySegmenter(image_size=(48, 64))  # no class names
    path = export_saved_model(model, tmp_path / "plain")
    assert load_runner(path).class_names is None and not os.path.exists(os.path.join(path, "assets.extra"))
    bad, _ = make_tiny_detector(batch=1, class_names=["a", "two\nlines", "c"])
    with pytest.raises(KdetError, match="single lines"):
        export_saved_model(bad, tmp_path / "bad")
    assert not os.path.exists(tmp_path / "bad" / "1")


def test_keras_runner_reads_class_names(detector, tmp_path):
    model, images = detector
    model.save(tmp_path / "tiny.keras")
    runner = load_runner(tmp_path / "tiny.keras")
    assert runner.class_names == CLASS_NAMES
    compare_detections(keras_outputs(model, images), runner(images), name="keras")
