import numpy as np
import pytest

from kdet.errors import DataError
from kdet.metrics.miou import SegmentationEvaluator, confusion_matrix, segmentation_metrics


def _direct(pred, target, num_classes, ignore=255):
    """Per-class IoU straight from pixel masks, no confusion matrix."""
    valid = target != ignore
    ious = []
    for c in range(num_classes):
        inter = np.sum((pred == c) & (target == c) & valid)
        union = np.sum(((pred == c) | (target == c)) & valid)
        ious.append(inter / union if union else np.nan)
    accuracy = np.sum((pred == target) & valid) / np.sum(valid)
    return np.array(ious), accuracy


def test_hand_case():
    target = np.array([[0, 0, 1, 1],
                       [0, 255, 1, 1]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 1, 2]])     # the 0 under 255 must not count
    # class 0: inter 2, union 3; class 1: inter 3, union 5; class 2: inter 0, union 1; class 3: absent.
    cm = confusion_matrix(pred, target, 4)
    np.testing.assert_array_equal(cm, [[2, 1, 0, 0], [0, 3, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    result = segmentation_metrics(pred, target, 4)
    np.testing.assert_allclose(result["per_class_iou"], [2 / 3, 3 / 5, 0.0, np.nan])
    assert result["mIoU"] == pytest.approx((2 / 3 + 3 / 5 + 0) / 3, abs=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(5 / 7, abs=1e-12)


def test_random_maps_match_direct_numpy_with_ignore():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (3, 40, 50))
    target[rng.random(target.shape) < 0.2] = 255
    pred = np.where(rng.random(target.shape) < 0.6, np.where(target == 255, 0, target),
                    rng.integers(0, 5, target.shape))
    per_class, accuracy = _direct(pred, target, 6)
    result = segmentation_metrics(pred, target[..., None], 6)   # [B, H, W, 1] target as in the data contract
    np.testing.assert_allclose(result["per_class_iou"], per_class, atol=1e-12)
    assert np.isnan(result["per_class_iou"][5])
    assert result["mIoU"] == pytest.approx(np.nanmean(per_class), abs=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-12)

    evaluator = SegmentationEvaluator(6)
    for p, t in zip(pred, target):
        evaluator.update(p, t)
    accumulated = evaluator.result()
    np.testing.assert_allclose(accumulated["per_class_iou"], per_class, atol=1e-12)
    assert accumulated["mIoU"] == pytest.approx(result["mIoU"], abs=1e-12)
    evaluator.reset()
    assert evaluator.matrix.sum() == 0


def test_edge_cases_and_errors():
    everything_ignored = segmentation_metrics(np.zeros((2, 2), int), np.full((2, 2), 255), 3)
    assert np.isnan(everything_ignored["mIoU"]) and np.isnan(everything_ignored["pixel_accuracy"])
    with pytest.raises(DataError, match="target.*class id 7"):
        confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 7), 3)
    with pytest.raises(DataError, match="pred.*class id 3"):
        confusion_matrix(np.full((2, 2), 3), np.zeros((2, 2), int), 3)
    with pytest.raises(DataError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)
    with pytest.raises(DataError, match="integer"):
        confusion_matrix(np.full((2, 2), 0.5), np.zeros((2, 2), int), 3)


def test_real_voc_class_masks(shared_data):
    """labelme_voc3's palette PNGs hold VOC ids with 255 borders: metrics over the 3 images, accumulated,
    equal the direct computation, and the border pixels change nothing whatever is predicted there."""
    from PIL import Image

    folder = shared_data / "labelme_voc3" / "voc" / "SegmentationClass"
    targets = [np.asarray(Image.open(path)).astype(np.int64) for path in sorted(folder.glob("*.png"))]
    assert len(targets) == 3 and any((t == 255).any() for t in targets)
    rng = np.random.default_rng(2)
    evaluator = SegmentationEvaluator(21)
    preds = []
    for target in targets:
        pred = np.where(target == 255, rng.integers(0, 21, target.shape), target)
        pred[: target.shape[0] // 3] = 15        # a band predicted "person": some right, most wrong
        preds.append(pred)
        evaluator.update(pred, target)
    flat_pred = np.concatenate([p.ravel() for p in preds])
    flat_target = np.concatenate([t.ravel() for t in targets])
    per_class, accuracy = _direct(flat_pred, flat_target, 21)
    result = evaluator.result()
    np.testing.assert_allclose(result["per_class_iou"], per_class, atol=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert 0.2 < result["mIoU"] < 0.95
