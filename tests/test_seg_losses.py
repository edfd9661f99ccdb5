"""kdet.losses.segmentation: weighted pixel cross-entropy with ignore 255, and class weights from masks."""
import numpy as np
import pytest

from kdet.errors import ConfigError, DataError
from kdet.losses.segmentation import (class_pixel_counts, class_weights_from_counts, class_weights_from_masks,
                                      pixel_cross_entropy)


def cross_entropy_reference(labels, logits, class_weights=None, pixel_weights=None, ignore=255):
    total, norm = 0.0, 0.0
    for index in np.ndindex(labels.shape):
        label = labels[index]
        if label == ignore:
            continue
        z = logits[index].astype(np.float64)
        log_p = z - z.max() - np.log(np.exp(z - z.max()).sum())
        w = 1.0
        if class_weights is not None:
            w *= class_weights[label]
        if pixel_weights is not None:
            w *= pixel_weights[index]
        total += -w * log_p[label]
        norm += w
    return total / norm if norm else 0.0


@pytest.mark.parametrize("use_class,use_pixel", [(False, False), (True, False), (False, True), (True, True)])
def test_pixel_cross_entropy_equals_numpy(use_class, use_pixel):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (2, 5, 6)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = 255
    logits = rng.normal(0, 3, (2, 5, 6, 4)).astype(np.float32)
    class_weights = np.array([0.5, 2.0, 1.0, 3.0], np.float32) if use_class else None
    pixel_weights = rng.uniform(0.5, 10, labels.shape).astype(np.float32) if use_pixel else None
    result = float(pixel_cross_entropy(labels, logits, class_weights, pixel_weights))
    assert result == pytest.approx(cross_entropy_reference(labels, logits, class_weights, pixel_weights), rel=1e-5)
    # the [B, H, W, 1] label layout of the data contract gives the same
    assert float(pixel_cross_entropy(labels[..., None], logits, class_weights, pixel_weights)) == \
        pytest.approx(result, rel=1e-6)


def test_ignored_pixels_count_nowhere_and_all_ignored_is_zero():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 3, 3, 2)).astype(np.float32)
    labels = np.array([[[0, 1, 255], [1, 0, 255], [255, 255, 255]]], np.int32)
    base = float(pixel_cross_entropy(labels, logits))
    changed = logits.copy()
    changed[labels == 255] += 100.0  # whatever the network says at ignored pixels
    assert float(pixel_cross_entropy(labels, changed)) == pytest.approx(base, rel=1e-6)
    assert float(pixel_cross_entropy(np.full((1, 3, 3), 255), logits)) == 0.0
    # a perfectly confident right answer costs ~0
    sure = np.zeros((1, 1, 2, 2), np.float32)
    sure[0, 0, 0, 0] = sure[0, 0, 1, 1] = 50.0
    assert float(pixel_cross_entropy(np.array([[[0, 1]]]), sure)) < 1e-6


def test_class_weights_from_masks_by_hand():
    masks = [np.array([[0, 0, 0, 1]]), ("second.png", np.array([[0, 2, 2, 255]]))]
    pixels, image_pixels = class_pixel_counts(masks, 4)
    np.testing.assert_array_equal(pixels, [4, 1, 2, 0])
    np.testing.assert_array_equal(image_pixels, [7, 4, 3, 0])
    # inverse: f = (4, 1, 2) / 7, K = 3 present -> w = 1 / (3 f); class 3 never occurs -> 1
    np.testing.assert_allclose(class_weights_from_masks(masks, 4, "inverse"), [7 / 12, 7 / 3, 7 / 6, 1.0], rtol=1e-6)
    # median: g = (4/7, 1/4, 2/3), median 4/7
    np.testing.assert_allclose(class_weights_from_masks(masks, 4, "median"), [1.0, 16 / 7, 6 / 7, 1.0], rtol=1e-6)
    weights = class_weights_from_counts(pixels, method="inverse")
    assert np.dot(weights[:3], pixels[:3]) / pixels.sum() == pytest.approx(1.0)  # mean weight of a labelled pixel


def test_class_ids_above_the_class_count_name_the_mask():
    with pytest.raises(DataError, match="second.png.*class id 7 is not in the 3 classes"):
        class_pixel_counts([np.zeros((2, 2)), ("second.png", np.array([[0, 7], [255, 1]]))], 3)
    with pytest.raises(ConfigError, match="choose one of inverse, median"):
        class_weights_from_counts([1, 2], [3, 3], "mean")
    np.testing.assert_array_equal(class_weights_from_counts([0, 0], [0, 0]), [1, 1])  # nothing labelled
