"""export_model layout, the shared parity helper (and that it can fail), and parity of the real models."""
import os

import keras
import numpy as np
import pytest

from kdet.errors import ConfigError
from kdet.export import export_model, load_runner
from kdet.models.classloc import ClassLocModel
from tests.testing import (TinySegmenter, check_export_parity, compare_detections, compare_semantic, keras_outputs,
                           make_tiny_detector, quantised_report, random_images)


def _detections(counts, k=4, seed=0):
    """A synthetic detection dict with `counts` detections per image, zero padding after them."""
    rng = np.random.default_rng(seed)
    batch = len(counts)
    corner = rng.uniform(0, 50, (batch, k, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(5, 20, (batch, k, 2))], -1).astype(np.float32)
    scores = np.sort(rng.uniform(0.3, 1, (batch, k)), axis=1)[:, ::-1].astype(np.float32)
    classes = rng.integers(0, 3, (batch, k)).astype(np.int32)
    keep = np.arange(k)[None] < np.array(counts)[:, None]
    return {"boxes": np.where(keep[..., None], boxes, 0), "scores": np.where(keep, scores, 0),
            "classes": np.where(keep, classes, 0), "num_detections": np.array(counts, np.int32)}


def test_compare_detections_catches_every_kind_of_mismatch():
    reference = _detections([3, 1])
    assert compare_detections(reference, {k: v.copy() for k, v in reference.items()})["detections"] == 4
    # Rows may swap (tied scores ordered differently by another runtime) and still match.
    swapped = {k: v.copy() for k, v in reference.items()}
    for key in ("boxes", "scores", "classes"):
        swapped[key][0, [0, 1]] = swapped[key][0, [1, 0]]
    compare_detections(reference, swapped)
    broken = []
    counts = {k: v.copy() for k, v in reference.items()}
    counts["num_detections"][1] = 4  # the TFLite count trap: padded rows counted
    broken.append((counts, "num_detections differ"))
    shifted = {k: v.copy() for k, v in reference.items()}
    shifted["boxes"][0, 2, 1] += 2e-3
    broken.append((shifted, "only 2 of 3"))
    relabelled = {k: v.copy() for k, v in reference.items()}
    relabelled["classes"][1, 0] += 1
    broken.append((relabelled, "only 0 of 1"))
    padded = {k: v.copy() for k, v in reference.items()}
    padded["scores"][1, 3] = 0.5
    broken.append((padded, "past num_detections are not zero"))
    missing = {k: v for k, v in reference.items() if k != "scores"}
    broken.append((missing, "'scores' missing"))
    for candidate, message in broken:
        with pytest.raises(AssertionError, match=message):
            compare_detections(reference, candidate, box_atol=1e-3)


def test_quantised_report_counts_matches_by_iou():
    reference = _detections([2, 2])
    candidate = {k: v.copy() for k, v in reference.items()}
    candidate["boxes"][0, 0] += 1.0  # still IoU > 0.5
    candidate["classes"][1, 1] += 1  # wrong class: unmatched
    report = quantised_report(reference, candidate)
    assert report["matched_fraction"] == 0.75 and report["max_box_error"] == pytest.approx(1.0)


def test_compare_semantic_catches_mask_and_probability_errors():
    probabilities = np.random.default_rng(0).dirichlet([1, 1, 1], size=(1, 6, 5)).astype(np.float32)
    reference = {"masks": probabilities.argmax(-1).astype(np.int32), "probabilities": probabilities}
    compare_semantic(reference, {k: v.copy() for k, v in reference.items()})
    wrong = {k: v.copy() for k, v in reference.items()}
    wrong["masks"][0, 0, 0] = (wrong["masks"][0, 0, 0] + 1) % 3
    with pytest.raises(AssertionError, match="mask pixels differ"):
        compare_semantic(reference, wrong)
    wrong = {k: v.copy() for k, v in reference.items()}
    wrong["probabilities"][0, 1, 1, 0] += 1e-3
    with pytest.raises(AssertionError, match="probabilities differ"):
        compare_semantic(reference, wrong)


@pytest.mark.slow
def test_export_model_writes_the_documented_layout(tmp_path):
    model, images = make_tiny_detector(batch=2)
    paths = export_model(model, tmp_path, "tiny", quantize="int8",
                         representative_images=random_images(model, 8, seed=3).astype(np.float32))
    assert paths == {"saved_model": str(tmp_path / "tiny" / "1"), "tflite": str(tmp_path / "tiny" / "tiny_int8.tflite"),
                     "onnx": str(tmp_path / "tiny" / "tiny.onnx")}
    assert os.path.exists(os.path.join(paths["saved_model"], "saved_model.pb"))
    again = export_model(model, tmp_path, "tiny", formats=("saved_model", "tflite"))
    assert again == {"saved_model": str(tmp_path / "tiny" / "2"), "tflite": str(tmp_path / "tiny" / "tiny.tflite")}
    reference = keras_outputs(model, images)
    for path in (paths["onnx"], again["saved_model"], again["tflite"]):
        compare_detections(reference, load_runner(path)(images), name=path)
    with pytest.raises(ConfigError, match="unknown export format"):
        export_model(model, tmp_path, "tiny", formats=("saved_model", "torchscript"))


@pytest.mark.slow
def test_classloc_parity_every_format(tmp_path):
    keras.utils.set_random_seed(0)
    model = ClassLocModel(num_classes=3, image_size=(64, 96), widths=(8, 16), hidden=16)
    images = random_images(model, 3)
    reports = check_export_parity(model, images, tmp_path,
                                  formats=("keras", "saved_model", "tflite", "tflite_int8", "onnx"),
                                  representative_images=random_images(model, 16, seed=1))
    assert reports["tflite"]["detections"] == 3 and reports["serving_bytes"]["checked"]
    int8 = reports["tflite_int8"]
    assert 0.0 <= int8["matched_fraction"] <= 1.0 and int8["artifact_detections"] == 3
    print("classloc int8 vs Keras:", int8)


@pytest.mark.slow
def test_semantic_parity(tmp_path):
    keras.utils.set_random_seed(1)
    model = TinySegmenter(image_size=(48, 64))
    reports = check_export_parity(model, random_images(model, 2), tmp_path, formats=("saved_model", "tflite", "onnx"))
    assert all(reports[f]["mask_agreement"] == 1.0 for f in ("saved_model", "tflite", "onnx"))
