"""kdet's Mask R-CNN against torchvision's maskrcnn_resnet50_fpn (v1), through the committed fixture.

tests/reference/make_mask_rcnn_twin_fixtures.py ran torchvision on seeded weights; here the same weights are rebuilt
from the seed in numpy, loaded through the converter's table (`mask_rcnn_table`), and compared: the FPN features,
the mask branch's logits for the same RoIs (one per FPN level P2-P5 and more), the final boxes (<= 0.5 px) and the
pasted binary masks (IoU >= 0.98 per instance).
"""
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from kdet.convert.torchvision import load_state_dict, mask_rcnn_table, torch_shapes
from kdet.models.mask_rcnn import MaskRCNN
from tests.testing import relative_error, twin_fixture_state

FIXTURE = Path(__file__).parent / "fixtures" / "mask_rcnn_twin.npz"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data():
    with np.load(FIXTURE) as fixture:
        return {k: fixture[k] for k in fixture.files}


@pytest.fixture(scope="module")
def model(data):
    state = twin_fixture_state(data)
    state["roi_heads.mask_predictor.mask_fcn_logits.bias"] += data["mask_bias"]
    height, width = data["images"].shape[1:3]
    model = MaskRCNN(num_classes=int(data["num_classes"]) - 1, image_size=(height, width))
    model(data["images"].astype(np.float32))
    assert load_state_dict(model, state) == len(torch_shapes(model, mask_rcnn_table))
    return model


def test_same_parameters_as_torchvision(data, model):
    expected = {str(n): s for n, s in zip(data["torch_names"], data["torch_shapes"])
                if not str(n).endswith("num_batches_tracked")}
    assert {n: str(list(s)) for n, s in torch_shapes(model, mask_rcnn_table).items()} == expected


def test_fpn_features(data, model):
    channels = int(data["feature_channels"])
    levels = model.extract_features(data["images"].astype(np.float32))[0]
    for level, feature in zip((2, 3, 4, 5, 6), levels):
        assert relative_error(feature[..., :channels], data[f"P{level}"]) <= 1e-3, level


def test_mask_logits_for_the_same_rois(data, model):
    """RoIAlign 14x14 on P2-P5 (torchvision's level mapping), four 3x3 convs, the 2x2 transposed conv, the 1x1 logits."""
    features = model.extract_features(data["images"].astype(np.float32))[1]
    rois = tf.constant(data["mask_rois"][None], tf.float32)  # [1, R, 4] yxyx
    pooled = model.mask_roi_align(features, rois)  # [1, R, 14, 14, C]
    logits = model.mask_predictor(model.mask_head(pooled)).numpy()[0]  # [R, 28, 28, C + 1]
    expected = data["mask_logits"]
    assert logits.shape[:3] == expected.shape[:3]
    assert relative_error(logits[..., data["mask_classes"]], expected) <= 1e-3


def unpack_masks(packed, width):
    return np.unpackbits(packed, axis=-1)[..., :width].astype(bool)


def test_final_boxes_and_pasted_masks(data, model):
    height, width = data["images"].shape[1:3]
    detections = {k: v.numpy() for k, v in model.detect(data["images"].astype(np.float32)).items()}
    boxes, scores, labels = data["det0_boxes"], data["det0_scores"], data["det0_labels"]
    n = int(detections["num_detections"][0])
    assert n == len(boxes), (n, len(boxes))
    assert detections["masks"].shape == (1, detections["boxes"].shape[1], height, width)
    # Rows pair by position: both sort by descending score; a near-tie may swap two rows, so match greedily.
    free, pairs = list(range(n)), []
    for box, score, label in zip(boxes, scores, labels):
        candidates = [j for j in free if detections["classes"][0, j] + 1 == label
                      and abs(detections["scores"][0, j] - score) <= 1e-3
                      and np.max(np.abs(detections["boxes"][0, j] - box)) <= 0.5]
        assert candidates, (box, score, label)
        free.remove(candidates[0])
        pairs.append(candidates[0])
    expected_masks = unpack_masks(data["det0_masks_packed"], width)
    for i, expected in enumerate(expected_masks):
        ours = detections["masks"][0, pairs[i]].astype(bool)
        iou = np.logical_and(ours, expected).sum() / max(np.logical_or(ours, expected).sum(), 1)
        assert expected.sum() > 0 and iou >= 0.98, (i, iou, ours.sum(), expected.sum())
    assert not detections["masks"][0, n:].any()  # rows past num_detections are empty
