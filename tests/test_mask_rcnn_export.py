"""Mask R-CNN deployed (issue 15 item 6): SavedModel, TFLite builtins-only fp32 and ONNX give Keras' boxes and instance
masks; `serving_bytes` maps the masks to each image's own size; `kdet serve` answers with RLE masks.

Masks are compared per detection by IoU (a pixel whose pasted probability sits at the 0.5 threshold may flip between
runtimes): >= 0.98 for the float artifacts. The int8 TFLite (backbone, FPN, RPN head and box head int8; proposals,
RoI pooling, decode and the mask branch float) is judged like the other detectors' int8 exports: most of Keras'
detections found again, with their masks.
"""
import base64
import json
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from kdet.data.shapes import make_shapes
from kdet.eval.detection import masks_to_original
from kdet.models.mask_rcnn import MaskRCNN
from kdet.ops.masks import paste_masks
from kdet.ops.mode import builtins_only
from kdet.serving.server import ModelServer
from tests.test_mask_rcnn import TINY, masks_dataset
from tests.testing import check_export_parity, compare_detections, encode_png, mask_iou_of

SIZE = (64, 64)
MASK_IOU = 0.98
# int8, measured on this fixture's model (12 steps): Keras keeps 2 detections on its 3 images, int8 3-4; 1 of the 2
# matched, with mask IoU 0.986 (box head with Keras' Glorot init) and 0.388 (with torch's Linear init, 2026-12-04);
# on 8 images 2 of 2 matched at IoU 0.69 / 0.70. A barely trained 64 x 64 model's masks sit near the 0.5 threshold,
# so the mask bar is low (the shapes model in docs/mask_rcnn.md is the accuracy figure: mask AP 0.750 vs 0.751);
# it still fails a broken export (nothing matched, or IoU ~0).
MATCHED, MEAN_MASK_IOU = 0.5, 0.25
# No proposal cap binds at inference (341 anchors at 64 x 64): a cut among near-tied objectness values could keep
# another proposal in TFLite than in TF (tests/test_faster_rcnn.py).
ARGS = dict(TINY, rpn_pre_nms_top_n_test=4096, rpn_post_nms_top_n_test=4096, max_detections=100)


def threshold_keeping(model, images, floor=0.0):
    """A score threshold above every image's max_detections-th score (the cap never binds) and below the best
    image's top score, in the middle of the widest gap between the scores there: float differences between
    runtimes cannot move a detection across it. A briefly fitted box head scores images at different levels, so
    an image may keep no detection (a parity case too: its count must be 0 everywhere)."""
    model.box_settings["box_score_threshold"] = floor
    scores = model.detect(images.astype(np.float32))["scores"].numpy()           # [B, K], descending per image
    low, high = max(floor, scores[:, -1].max()), scores[:, 0].max()
    assert high > low, scores
    values = np.unique(np.concatenate([[low, high], scores[(scores > low) & (scores < high)]]))
    best = int(np.argmax(np.diff(values)))
    return float(values[best] + values[best + 1]) / 2


@pytest.fixture(scope="module")
def trained():
    """A tiny Mask R-CNN fitted briefly on shapes (confident masks), with a score threshold far from any score."""
    keras.utils.set_random_seed(0)
    model = MaskRCNN(3, image_size=SIZE, bounding_box_format="xyxy", class_names=["a", "b", "c"], **ARGS)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(masks_dataset(SIZE, count=32), epochs=1, steps_per_epoch=24, verbose=0)
    images = np.stack([r.image for r in make_shapes(3, SIZE, seed=5, min_objects=2, max_objects=4).records])
    model.box_settings["box_score_threshold"] = threshold_keeping(model, images)
    detections = model.detect(images.astype(np.float32))
    assert detections["num_detections"].numpy().sum() >= 1 and detections["masks"].numpy().sum() > 0
    return model, images


@pytest.fixture(scope="module")
def float_reports(trained, tmp_path_factory):
    model, images = trained
    directory = tmp_path_factory.mktemp("export")
    reports = check_export_parity(model, images, directory, formats=("saved_model", "tflite", "onnx"),
                                  box_atol=1e-2, mask_iou=MASK_IOU)
    return reports, directory / "saved_model" / "1"


@pytest.mark.slow
def test_float_artifacts_give_the_keras_masks(float_reports):
    """SavedModel, TFLite (builtins only: RoIAlign, NMS and paste twins) and ONNX: same detections, mask IoU."""
    reports, _ = float_reports
    print({fmt: reports[fmt] for fmt in ("saved_model", "tflite", "onnx")})
    for fmt in ("saved_model", "tflite", "onnx"):
        assert reports[fmt]["detections"] >= 1 and reports[fmt]["min_mask_iou"] >= MASK_IOU
    assert "masks" in reports["serving_bytes"]["checked"]      # serving_bytes at the model size = serving_default


@pytest.mark.slow
def test_serving_bytes_maps_masks_to_each_images_own_size(trained, float_reports):
    model, images = trained
    _, saved_model = float_reports
    sizes = [(48, 80), (100, 72)]
    originals = [tf.image.resize(image, size, method="nearest").numpy() for image, size in zip(images, sizes)]
    outputs = tf.saved_model.load(str(saved_model)).signatures["serving_bytes"](
        image_bytes=tf.constant([encode_png(image) for image in originals]))
    outputs = {k: v.numpy() for k, v in outputs.items()}
    assert outputs["masks"].shape == (2, ARGS["max_detections"], 100, 80) and outputs["masks"].dtype == np.uint8
    np.testing.assert_array_equal(outputs["original_size"], sizes)
    for b, (original, (height, width)) in enumerate(zip(originals, sizes)):
        resized = tf.image.resize(original.astype(np.float32), SIZE, method="bilinear")[None]
        keras_out = {k: v.numpy()[0] for k, v in model.detect(resized).items()}
        n = int(keras_out["num_detections"])
        assert outputs["num_detections"][b] == n
        scale = np.array([SIZE[0] / height, SIZE[1] / width])
        np.testing.assert_allclose(outputs["boxes"][b, :n], keras_out["boxes"][:n] / np.tile(scale, 2), atol=1e-2)
        want = masks_to_original(keras_out["masks"][:n], scale, (height, width))   # kdet predict's mapping
        for i in range(n):
            assert mask_iou_of(outputs["masks"][b, i, :height, :width], want[i]) >= MASK_IOU
        assert not outputs["masks"][b, :, height:].any() and not outputs["masks"][b, :, :, width:].any()
        assert not outputs["masks"][b, n:].any()


@pytest.mark.slow
def test_kdet_serve_returns_rle_masks_of_the_real_model(float_reports):
    _, saved_model = float_reports
    image = tf.image.resize(make_shapes(1, SIZE, seed=5, min_objects=2).records[0].image, (50, 70), "nearest")
    data = encode_png(image.numpy())
    want = tf.saved_model.load(str(saved_model)).signatures["serving_bytes"](image_bytes=tf.constant([data]))
    want = {k: v.numpy() for k, v in want.items()}
    with ModelServer(saved_model.parent, model_name="mask_rcnn", rest_port=0, grpc_port=None,
                     poll_seconds=0) as server:
        body = {"signature_name": "serving_bytes", "instances": [{"b64": base64.b64encode(data).decode()}]}
        request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/models/mask_rcnn:predict",
                                         data=json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=120) as response:
            row = json.loads(response.read())["predictions"][0]
    assert len(row["masks"]) == ARGS["max_detections"] and all(rle["size"] == [50, 70] for rle in row["masks"])
    decoded = np.stack([mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()}) for r in row["masks"]])
    np.testing.assert_array_equal(decoded, want["masks"][0])
    assert row["num_detections"] == int(want["num_detections"][0])


def int8_ops(path):
    """[(subgraph, op name, first output's name, True if any output is int8)] of a .tflite file."""
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffer_utils.read_model(str(path))
    rows = []
    for index, subgraph in enumerate(model.subgraphs):
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            outputs = [subgraph.tensors[i] for i in op.outputs if i >= 0]
            rows.append((index, names[max(code.builtinCode, code.deprecatedBuiltinCode)], outputs[0].name.decode(),
                         any(t.type == schema.TensorType.INT8 for t in outputs)))
    return rows


@pytest.mark.slow
def test_int8_tflite_finds_the_keras_detections_and_masks(trained, tmp_path):
    """int8 TFLite, builtins only: the network int8, proposals / RoI pooling / decode / mask branch float32; on the
    briefly trained model it finds most of Keras' detections with their masks. (Before: a SIGFPE in calibration, a
    pyramid level without RoIs, then a segmentation fault in TF's quantiser on the -inf / -FLT_MAX ranges.)"""
    model, _ = trained
    calibration = np.stack([r.image for r in make_shapes(16, SIZE, seed=0, min_objects=1, max_objects=4).records])
    # 12 test images, not the fixture's 3: on this briefly trained model one or two detections per image sit near the
    # class boundary, and over 3 images a single int8 flip was the whole verdict (one CI run: 0 of 1 matched).
    # The fixture's threshold (the widest score gap of its 3 images) left 1-46 detections here depending on the run
    # (training is not bitwise repeatable), so this test keeps about the best 5 per image: a fraction over ~60.
    images = np.stack([r.image for r in make_shapes(12, SIZE, seed=7, min_objects=2, max_objects=4).records])
    threshold = model.box_settings["box_score_threshold"]
    model.box_settings["box_score_threshold"] = 0.0
    scores = model.detect(images.astype(np.float32))["scores"].numpy()
    model.box_settings["box_score_threshold"] = float(np.median(scores[:, 4]))
    try:
        reports = check_export_parity(model, images, tmp_path, formats=("tflite_int8",),
                                      representative_images=calibration)
    finally:
        model.box_settings["box_score_threshold"] = threshold
    report = reports["tflite_int8"]
    print("Mask R-CNN int8 vs Keras:", report)
    ops = int8_ops(tmp_path / "model_int8.tflite")
    network = [row for row in ops if row[1] in ("CONV_2D", "FULLY_CONNECTED") and "kdet_decode" not in row[2]]
    assert network and sum(row[3] for row in network) >= len(network) - 1, network  # all but fc6 (float input)
    assert not [row for row in ops if row[3] and (row[0] > 0 or row[1] == "TOPK_V2" or "/proposals" in row[2]
                                                  or "/box_roi_pool" in row[2])]
    assert report["keras_detections"] >= 1, report
    assert report["matched_fraction"] >= MATCHED and report["mean_mask_iou"] >= MEAN_MASK_IOU, report


def test_mask_iou_comparison_catches_a_moved_mask():
    """compare_detections(mask_iou=...) pairs detections as before and then needs each mask's IoU with Keras'."""
    masks = np.zeros((1, 2, 20, 20), np.uint8)
    masks[0, 0, 2:12, 2:12] = 1
    reference = {"boxes": np.array([[[2, 2, 12, 12], [0, 0, 0, 0]]], np.float32), "scores": np.array([[0.9, 0.0]]),
                 "classes": np.array([[1, 0]], np.int32), "num_detections": np.array([1], np.int32), "masks": masks}
    flipped = dict(reference, masks=masks.copy())
    flipped["masks"][0, 0, 11, 11] = 0                                   # one pixel of 100: IoU 0.99
    assert compare_detections(reference, flipped, mask_iou=0.98)["min_mask_iou"] == pytest.approx(0.99)
    moved = dict(reference, masks=np.roll(masks, 2, axis=3))                  # IoU 80 / 120
    with pytest.raises(AssertionError, match="IoU 0.6667 < 0.98"):
        compare_detections(reference, moved, mask_iou=0.98)


def test_paste_pads_rows_alike_in_both_twins():
    """paste_masks(rows=K'): zero masks after the K pasted, the same in the TF path and the builtins-only twin."""
    probabilities = np.random.default_rng(0).uniform(0, 1, (2, 3, 28, 28)).astype(np.float32)
    boxes = np.array([[[4, 4, 30, 40], [10, 0, 50, 20], [0, 0, 48, 64]]] * 2, np.float32)
    default = paste_masks(probabilities, boxes, (48, 64), rows=5).numpy()
    with builtins_only():
        twin = paste_masks(probabilities, boxes, (48, 64), rows=5).numpy()
    assert default.shape == twin.shape == (2, 5, 48, 64) and default.dtype == twin.dtype == np.uint8
    np.testing.assert_array_equal(default[:, :3], paste_masks(probabilities, boxes, (48, 64)).numpy())
    assert default[:, :3].sum() > 0 and not default[:, 3:].any()
    assert np.mean(default != twin) < 1e-3          # the twins sample the same points (float rounding at 0.5)
