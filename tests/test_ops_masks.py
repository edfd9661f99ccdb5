"""kdet.ops.masks: Mask R-CNN's mask targets against a crop-and-resize reference, and the paste into the image
against a numpy port of torchvision's paste_masks_in_image (both the CropAndResize path and the builtins twin)."""
import numpy as np
import pytest
import tensorflow as tf

from kdet.ops import builtins_only
from kdet.ops.masks import mask_targets, paste_masks
from tests.test_ops_roi_align import roi_align_reference


# -- mask targets -----------------------------------------------------------------------------------------------------
def test_mask_target_of_a_roi_equal_to_its_box_is_the_mask_resized():
    """A rectangle's mask, RoI = its box: all ones; the RoI twice as wide to the right: the left half ones.
    (aligned=False RoIAlign reads pixel i at coordinate i, so the RoIs are the pixel-edge boxes shifted by -0.5.)"""
    masks = np.zeros((1, 2, 64, 80), np.uint8)
    masks[0, 0, 8:36, 10:38] = 1                                  # 28 x 28 square
    masks[0, 1, 40:54, 50:64] = 1                                 # 14 x 14 square
    rois = np.array([[[8, 10, 36, 38], [8, 10, 36, 66], [40, 50, 54, 64], [0, 0, 10, 10]]], np.float32) - 0.5
    matched = np.array([[0, 0, 1, -1]], np.int32)
    targets = mask_targets(masks, rois, matched, size=28).numpy()
    assert targets.shape == (1, 4, 28, 28)
    np.testing.assert_array_equal(targets[0, 0], 1.0)
    np.testing.assert_array_equal(targets[0, 1, :, :14], 1.0)
    np.testing.assert_array_equal(targets[0, 1, :, 14:], 0.0)
    np.testing.assert_array_equal(targets[0, 2], 1.0)             # a 14 px object upsampled to 28
    np.testing.assert_array_equal(targets[0, 3], 0.0)             # unmatched: zeros


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_targets_equal_roi_align_of_the_matched_mask_binarised(seed):
    """Reference: torchvision's project_masks_on_boxes (roi_align, scale 1, adaptive sampling, aligned=False) on the
    matched mask, then >= 0.5; random blobs, random RoIs (some partly outside the image), two images."""
    rng = np.random.default_rng(seed)
    height, width, count = 48, 56, 3
    yy, xx = np.mgrid[:height, :width]
    masks = np.zeros((2, count, height, width), np.uint8)
    for b in range(2):
        for m in range(count):
            cy, cx, r = rng.uniform(10, 40), rng.uniform(10, 46), rng.uniform(4, 12)
            masks[b, m] = ((yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.6, 1.5)) ** 2) < r * r
    y1, x1 = rng.uniform(-5, 35, (2, 6)), rng.uniform(-5, 40, (2, 6))
    rois = np.stack([y1, x1, y1 + rng.uniform(2, 40, (2, 6)), x1 + rng.uniform(2, 40, (2, 6))], -1).astype(np.float32)
    matched = rng.integers(-1, count, (2, 6)).astype(np.int32)
    targets = mask_targets(masks, rois, matched, size=14).numpy()
    for b in range(2):
        for s in range(6):
            if matched[b, s] < 0:
                np.testing.assert_array_equal(targets[b, s], 0.0)
                continue
            feature = masks[b, matched[b, s]][None, :, :, None].astype(np.float32)
            pooled = roi_align_reference(feature, rois[b, s][None], [0], (14, 14), 1.0, -1, False)[0, ..., 0]
            expected = (pooled >= 0.5).astype(np.float32)
            close = np.abs(pooled - 0.5) < 1e-5  # float32 vs float64 at the threshold itself
            np.testing.assert_array_equal(targets[b, s][~close], expected[~close])
    assert targets.sum() > 50  # the blobs were hit


def test_mask_targets_without_objects():
    targets = mask_targets(np.zeros((2, 0, 32, 32), np.uint8), np.ones((2, 5, 4), np.float32) * [0, 0, 9, 9],
                           -np.ones((2, 5), np.int32))
    assert targets.shape == (2, 5, 28, 28) and not np.any(targets.numpy())


# -- paste ------------------------------------------------------------------------------------------------------------
def _torch_bilinear_weights(out_size, in_size):
    """upsample_bilinear2d, align_corners=False: (lower index, upper index, upper weight) per output pixel."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    low = source.astype(np.int64)
    high = np.where(low < in_size - 1, low + 1, low)
    return low, high, (source - low).astype(np.float32)


def paste_reference(mask, box, height, width, padding=1):
    """torchvision paste_masks_in_image for one mask [M, M] and box yxyx (float32) -> probabilities [H, W]."""
    side = mask.shape[0]
    scale = (side + 2 * padding) / side
    padded = np.pad(mask.astype(np.float32), padding)
    y1, x1, y2, x2 = np.asarray(box, np.float32)
    h_half, w_half = (y2 - y1) * np.float32(0.5), (x2 - x1) * np.float32(0.5)
    y_c, x_c = (y2 + y1) * np.float32(0.5), (x2 + x1) * np.float32(0.5)
    h_half, w_half = h_half * np.float32(scale), w_half * np.float32(scale)
    by0, bx0, by1, bx1 = (int(v) for v in (y_c - h_half, x_c - w_half, y_c + h_half, x_c + w_half))
    h, w = max(by1 - by0 + 1, 1), max(bx1 - bx0 + 1, 1)
    r0, r1, ly = _torch_bilinear_weights(h, padded.shape[0])
    c0, c1, lx = _torch_bilinear_weights(w, padded.shape[1])
    top = padded[r0][:, c0] * (1 - lx) + padded[r0][:, c1] * lx
    bottom = padded[r1][:, c0] * (1 - lx) + padded[r1][:, c1] * lx
    resized = top * (1 - ly)[:, None] + bottom * ly[:, None]
    image = np.zeros((height, width), np.float32)
    ya, yb, xa, xb = max(by0, 0), min(by1 + 1, height), max(bx0, 0), min(bx1 + 1, width)
    if yb > ya and xb > xa:
        image[ya:yb, xa:xb] = resized[ya - by0:yb - by0, xa - bx0:xb - bx0]
    return image


def paste_cases(seed, count=7, height=70, width=90):
    """Random 28 x 28 probabilities and boxes: inside, across every border, tiny (< 1 px), large, inverted."""
    rng = np.random.default_rng(seed)
    masks = rng.uniform(0, 1, (2, count, 28, 28)).astype(np.float32)
    y1, x1 = rng.uniform(-20, 60, (2, count)), rng.uniform(-20, 80, (2, count))
    boxes = np.stack([y1, x1, y1 + rng.uniform(0.2, 60, (2, count)), x1 + rng.uniform(0.2, 60, (2, count))], -1)
    boxes[0, 0] = [10.3, 12.7, 10.6, 13.1]          # smaller than a pixel
    boxes[0, 1] = [-30.0, -40.0, 100.0, 120.0]      # larger than the image
    boxes[1, 0] = [30.0, 30.0, 20.0, 25.0]          # inverted (a zero row of a padded detection is [0, 0, 0, 0])
    boxes[1, 1] = 0.0
    return masks, boxes.astype(np.float32), (height, width)


@pytest.mark.parametrize("builtins", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paste_equals_torchvision_paste_masks_in_image(seed, builtins):
    masks, boxes, (height, width) = paste_cases(seed)
    with builtins_only(builtins):
        probabilities = paste_masks(masks, boxes, (height, width), threshold=None).numpy()
        binary = paste_masks(masks, boxes, (height, width)).numpy()
    assert probabilities.shape == binary.shape == (2, 7, height, width) and binary.dtype == np.uint8
    for b in range(2):
        for k in range(7):
            expected = paste_reference(masks[b, k], boxes[b, k], height, width)
            # CropAndResize rounds its sample positions differently from torch (up to ~3e-5 measured).
            np.testing.assert_allclose(probabilities[b, k], expected, atol=1e-4, err_msg=f"{b}, {k}")
            decided = np.abs(expected - 0.5) > 1e-4
            np.testing.assert_array_equal(binary[b, k][decided], (expected > 0.5)[decided])
    assert binary.sum() > 1000


def test_builtins_twin_equals_default_path_in_graph_with_dynamic_sizes():
    masks, boxes, size = paste_cases(3, count=5, height=64, width=48)

    def run(builtins):
        with builtins_only(builtins):
            fn = tf.function(lambda m, b, hw: paste_masks(m, b, (hw[0], hw[1]), threshold=None),
                             input_signature=[tf.TensorSpec([None, None, 28, 28]), tf.TensorSpec([None, None, 4]),
                                              tf.TensorSpec([2], tf.int32)])
            return fn(masks, boxes, tf.constant(size)).numpy()

    np.testing.assert_allclose(run(True), run(False), atol=1e-4)


def test_a_box_mask_of_ones_fills_its_box():
    """A mask of ones pasted at box [10, 20, 38, 48] covers rows 10..38 and columns 20..48: torchvision's resized
    mask spans x1 - x0 + 1 pixels (its legacy TO_REMOVE = 1), one past the box's far edge."""
    masks = np.ones((1, 1, 28, 28), np.float32)
    binary = paste_masks(masks, np.array([[[10.0, 20.0, 38.0, 48.0]]], np.float32), (64, 64)).numpy()[0, 0]
    rows, cols = np.nonzero(binary)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 38, 20, 48)
