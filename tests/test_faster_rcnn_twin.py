"""kdet's Faster R-CNN against torchvision's fasterrcnn_resnet50_fpn, through the committed fixture.

tests/reference/make_faster_rcnn_twin_fixtures.py ran torchvision on seeded weights; here the same weights are rebuilt
from the seed in numpy, loaded through the converter's table, and every stage is compared: backbone and FPN features,
RPN outputs and anchors, proposals, box-head outputs for torchvision's own proposals, and the final detections.
"""
from pathlib import Path

import numpy as np
import pytest

from kdet.convert.torchvision import faster_rcnn_table, load_state_dict, torch_shapes
from kdet.errors import KdetError
from kdet.models.faster_rcnn import FasterRCNN
from tests.testing import relative_error, twin_fixture_state

FIXTURE = Path(__file__).parent / "fixtures" / "faster_rcnn_twin.npz"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data():
    with np.load(FIXTURE) as fixture:
        return {k: fixture[k] for k in fixture.files}


@pytest.fixture(scope="module")
def state(data):
    return twin_fixture_state(data)


@pytest.fixture(scope="module")
def model(data, state):
    height, width = data["images"].shape[1:3]
    model = FasterRCNN(num_classes=int(data["num_classes"]) - 1, image_size=(height, width))
    model(data["images"][:1].astype(np.float32))
    assert load_state_dict(model, state) == len(torch_shapes(model, faster_rcnn_table))
    return model


def test_same_parameters_as_torchvision(data, model):
    expected = {str(n): s for n, s in zip(data["torch_names"], data["torch_shapes"])
                if not str(n).endswith("num_batches_tracked")}
    ours = {n: str(list(s)) for n, s in torch_shapes(model, faster_rcnn_table).items()}
    assert ours == expected


def test_state_dict_that_does_not_fit_changes_nothing(model, state):
    before = model.rpn_head.cls_logits.kernel.numpy().copy()
    broken = dict(state)
    broken.pop("rpn.head.bbox_pred.bias")
    broken["roi_heads.mask_head.weight"] = np.zeros(3, np.float32)
    broken["rpn.head.cls_logits.weight"] = np.zeros((1, 256, 1, 1), np.float32)
    with pytest.raises(KdetError, match=r"missing \(1\): rpn.head.bbox_pred.bias.*unexpected \(1\): "
                                        r"roi_heads.mask_head.weight.*shape mismatch"):
        load_state_dict(model, broken)
    np.testing.assert_array_equal(model.rpn_head.cls_logits.kernel.numpy(), before)


def test_backbone_and_fpn_features(data, model):
    channels = int(data["feature_channels"])
    features = model.backbone(model.normalize(data["images"].astype(np.float32)))
    pyramid = model.fpn(features)
    for level in (2, 3, 4, 5):
        assert relative_error(features[f"C{level}"][..., :channels], data[f"C{level}"]) <= 1e-3, level
    for level in (2, 3, 4, 5, 6):
        assert relative_error(pyramid[f"P{level}"][..., :channels], data[f"P{level}"]) <= 1e-3, level


def test_anchors_and_rpn_outputs(data, model):
    keep = data["anchor_index"]
    anchors = model.anchor_grid(data["images"].shape[1:3])[0].numpy()
    assert anchors.shape[0] == int(data["num_anchors"])
    np.testing.assert_allclose(anchors[keep], data["anchors"], atol=1e-5)
    outputs = model(data["images"].astype(np.float32))
    assert relative_error(outputs["rpn_objectness"].numpy()[:, keep], data["rpn_objectness"]) <= 1e-3
    assert relative_error(outputs["rpn_box_deltas"].numpy()[:, keep], data["rpn_box_deltas"]) <= 1e-3


def test_proposals(data, model):
    outputs = model(data["images"].astype(np.float32))
    for i in range(len(data["images"])):
        expected = data[f"proposals{i}"]
        valid = outputs["proposal_valid"][i].numpy()
        ours = outputs["proposals"][i].numpy()[valid]
        assert len(ours) == len(expected), (i, len(ours), len(expected))
        np.testing.assert_allclose(ours, expected, atol=0.05)


def test_box_head_on_torchvision_proposals(data, model):
    features = model.extract_features(data["images"].astype(np.float32))[1]
    count = max(len(data[f"proposals{i}"]) for i in range(len(data["images"])))
    rois = np.zeros((len(data["images"]), count, 4), np.float32)
    for i in range(len(data["images"])):
        rois[i, :len(data[f"proposals{i}"])] = data[f"proposals{i}"]
    class_logits, box_regression = model.box_head_outputs(features, rois)
    rows, classes = data["roi_rows"], data["roi_classes"]
    assert relative_error(class_logits.numpy()[:, rows], data["roi_class_logits"]) <= 1e-3
    assert relative_error(box_regression.numpy()[:, rows][:, :, classes], data["roi_box_regression"]) <= 1e-3


def test_final_detections(data, model):
    detections = {k: v.numpy() for k, v in model.detect(data["images"].astype(np.float32)).items()}
    for i in range(len(data["images"])):
        boxes, scores, labels = data[f"det{i}_boxes"], data[f"det{i}_scores"], data[f"det{i}_labels"]
        n = int(detections["num_detections"][i])
        assert n == len(boxes), (i, n, len(boxes))
        # Rows pair by position: both sort by descending score; a near-tie may swap two rows, so match greedily.
        free = list(range(n))
        for box, score, label in zip(boxes, scores, labels):
            candidates = [j for j in free if detections["classes"][i, j] + 1 == label
                          and abs(detections["scores"][i, j] - score) <= 1e-3
                          and np.max(np.abs(detections["boxes"][i, j] - box)) <= 0.5]
            assert candidates, (i, box, score, label)
            free.remove(candidates[0])


# The 80 COCO category ids (torchvision's labels; its 91-column predictor leaves the other ids unused).
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def test_label_ids_select_predictor_columns(data, state):
    """num_classes=80 with label_ids = the COCO ids (kdet's COCO reader's labels) loads the same 91-column weights and
    gives torchvision's detections of those classes, class c being category COCO_IDS[c]."""
    height, width = data["images"].shape[1:3]
    model = FasterRCNN(num_classes=80, image_size=(height, width), label_ids=COCO_IDS)
    model(data["images"][:1].astype(np.float32))
    load_state_dict(model, state)
    detections = {k: v.numpy() for k, v in model.detect(data["images"].astype(np.float32)).items()}
    for i in range(len(data["images"])):
        labels = data[f"det{i}_labels"]
        kept = np.isin(labels, COCO_IDS)
        n = int(detections["num_detections"][i])
        ours = np.asarray(COCO_IDS)[detections["classes"][i, :n]]
        if len(labels) < 100:  # under the cap, dropping the unused columns only drops their detections
            assert n == kept.sum()
        np.testing.assert_array_equal(ours[:kept.sum()], labels[kept])
        np.testing.assert_allclose(detections["boxes"][i, :kept.sum()], data[f"det{i}_boxes"][kept], atol=0.5)
