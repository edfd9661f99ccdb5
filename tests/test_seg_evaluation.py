"""kdet.eval.semantic: mIoU / pixel accuracy with ignore 255 in each image's frame, connected components,
instance AP@0.5 and merged-object counts."""
from collections import deque

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kdet.data.records import DetectionDataset, Record
from kdet.errors import DataError
from kdet.eval.semantic import connected_components, evaluate_semantic, instance_metrics
from kdet.models.segmentation_base import SemanticSegmenter


class RedChannelRule(SemanticSegmenter):
    """Predicts class round(red / 100) everywhere: a model whose output the test chooses through the image."""

    def call(self, images, training=False):
        classes = tf.cast(tf.round(tf.cast(images, tf.float32)[..., 0] / 100.0), tf.int32)
        return {"logits": 20.0 * tf.one_hot(classes, self.num_mask_classes)}


def miou_reference(preds, targets, num_classes, ignore=255):
    """IoU per class over all pixels that are not ignored; classes absent from both are left out of the mean."""
    ious = []
    correct = total = 0
    for c in range(num_classes):
        inter = union = 0
        for pred, target in zip(preds, targets):
            valid = target != ignore
            inter += np.sum((pred == c) & (target == c) & valid)
            union += np.sum(((pred == c) | (target == c)) & valid)
        if union:
            ious.append(inter / union)
    for pred, target in zip(preds, targets):
        valid = target != ignore
        correct += np.sum((pred == target) & valid)
        total += valid.sum()
    return np.mean(ious), correct / total


def record(image_id, predicted, target):
    height, width = target.shape
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = predicted * 100
    return Record(image_id, height, width, np.zeros((0, 4)), np.zeros(0), image=image, segmentation=target)


def test_miou_with_ignore_in_the_original_frame():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 3, (20, 30)), rng.integers(0, 3, (20, 15))]
    targets = [rng.integers(0, 3, (20, 30)), rng.integers(0, 3, (20, 15))]
    for target in targets:
        target[rng.random(target.shape) < 0.2] = 255
    dataset = DetectionDataset([record(i, p, t) for i, (p, t) in enumerate(zip(preds, targets))], ["a", "b"])
    model = RedChannelRule(2, image_size=(20, 30))
    # letterbox keeps the narrow image unscaled in the top-left: predictions stay exact in its own frame
    result = evaluate_semantic(model, dataset, batch_size=2, resize="letterbox", progress=False)
    expected_miou, expected_accuracy = miou_reference(preds, targets, 3)
    assert result["mIoU"] == pytest.approx(expected_miou, abs=1e-9)
    assert result["pixel_accuracy"] == pytest.approx(expected_accuracy, abs=1e-9)
    assert list(result["per_class_iou"]) == ["background", "a", "b"] and result["num_images"] == 2
    # whatever the model says at ignored pixels changes nothing
    changed = [np.where(t == 255, (p + 1) % 3, p) for p, t in zip(preds, targets)]
    dataset = DetectionDataset([record(i, p, t) for i, (p, t) in enumerate(zip(changed, targets))], ["a", "b"])
    assert evaluate_semantic(model, dataset, resize="letterbox", progress=False)["mIoU"] == \
        pytest.approx(expected_miou, abs=1e-9)


def test_evaluation_resizes_predictions_back_to_each_image():
    target = np.zeros((40, 60), np.int32)
    target[:, 30:] = 1
    predicted = target.copy()
    dataset = DetectionDataset([record(0, predicted, target)], ["a"])
    result = evaluate_semantic(RedChannelRule(1, image_size=(20, 30)), dataset, progress=False)
    assert result["mIoU"] == pytest.approx(1.0)  # half-size model, scored at 40 x 60


def test_bad_masks_fail_before_the_model_runs():
    target = np.full((20, 30), 5, np.int32)
    dataset = DetectionDataset([record(0, np.zeros((20, 30), int), target)], ["a"])
    with pytest.raises(DataError, match="class id 5 is not in the 2 classes"):
        evaluate_semantic(RedChannelRule(1, image_size=(20, 30)), dataset, progress=False)


def components_reference(foreground, connectivity):
    labels = np.zeros(foreground.shape, np.int32)
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    if connectivity == 8:
        steps += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    count = 0
    for start in zip(*np.nonzero(foreground)):
        if labels[start]:
            continue
        count += 1
        labels[start] = count
        queue = deque([start])
        while queue:
            y, x = queue.popleft()
            for dy, dx in steps:
                ny, nx = y + dy, x + dx
                if 0 <= ny < foreground.shape[0] and 0 <= nx < foreground.shape[1] and foreground[ny, nx] \
                        and not labels[ny, nx]:
                    labels[ny, nx] = count
                    queue.append((ny, nx))
    return labels


@pytest.mark.parametrize("connectivity", [4, 8])
def test_connected_components_equal_flood_fill(connectivity):
    rng = np.random.default_rng(connectivity)
    for density in (0.2, 0.45, 0.6):
        foreground = rng.random((25, 31)) < density
        np.testing.assert_array_equal(connected_components(foreground, connectivity),
                                      components_reference(foreground, connectivity))
    spiral = np.zeros((9, 9), bool)  # one long winding component
    spiral[0, :], spiral[:, 8], spiral[8, :], spiral[2:, 0], spiral[2, :7], spiral[2:7, 6], spiral[6, 2:7] = (True,) * 7
    assert connected_components(spiral).max() == components_reference(spiral, 4).max()
    assert not connected_components(np.zeros((3, 3), bool)).any()


def test_instance_metrics_count_merges_and_matches():
    truth = np.zeros((10, 20), np.int32)
    truth[2:8, 2:8], truth[2:8, 8:14], truth[1:3, 16:19] = 1, 2, 3  # two touching squares and a small one
    separated = truth.copy()
    separated[:, 7:9] = 0  # the predicted gap between the squares: each square keeps IoU 5/6 or 4/6 > 0.5
    result = instance_metrics(connected_components(separated > 0), truth)
    assert result["AP50"] == 1.0 and result["merged"] == 0 and result["tp"] == 3
    merged = instance_metrics(connected_components(truth > 0), truth)
    # one blob over both squares: IoU 0.5 with each (not > 0.5), so 1 TP (the small one), 1 FP, 2 FN
    assert (merged["tp"], merged["fp"], merged["fn"], merged["merged"]) == (1, 1, 2, 1)
    assert merged["AP50"] == pytest.approx(1 / 4)
    empty = instance_metrics(np.zeros_like(truth), truth)
    assert empty["AP50"] == 0.0 and empty["fn"] == 3
    assert instance_metrics(np.zeros((4, 4)), np.zeros((4, 4)))["AP50"] == 1.0


def test_predict_files_writes_overlays_and_class_id_pngs(tmp_path):
    from kdet.data.images import read_segmentation
    from kdet.eval.semantic import predict_files
    image = np.zeros((30, 44, 3), np.uint8)
    image[:, 22:, 0] = 200  # right half -> class 2
    Image.fromarray(image).save(tmp_path / "in.png")
    results = predict_files(RedChannelRule(2, image_size=(15, 22)), [tmp_path / "in.png"], tmp_path / "out",
                            class_names=["a", "b"])
    mask = read_segmentation(tmp_path / "out" / "in_mask.png")
    assert mask.shape == (30, 44) and set(np.unique(mask)) == {0, 2}
    assert results[0]["pixels"] == {"background": int((mask == 0).sum()), "b": int((mask == 2).sum())}
    overlay = np.asarray(Image.open(tmp_path / "out" / "in.png"))
    assert overlay.shape == (30, 44, 3) and (overlay[:, 30] != image[:, 30]).any()  # class 2 is coloured
