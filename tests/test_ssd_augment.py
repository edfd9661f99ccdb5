"""SSD augmentation: the composed expand / crop / flip geometry against numpy, the min-IoU crop rule, photometric
ranges, padded batches and tf.data."""
import numpy as np
import pytest
import tensorflow as tf

from kdet.data.ssd_augment import SSDAugment, apply_geometry, box_iou_one_to_many, photometric_distort, sample_crop


def colour_image():
    """60 x 80 image: red object [10, 20, 30, 50], green object [40, 5, 55, 15], grey elsewhere."""
    image = np.full((60, 80, 3), 90.0, np.float32)
    image[10:30, 20:50] = [255, 0, 0]
    image[40:55, 5:15] = [0, 255, 0]
    boxes = np.array([[10, 20, 30, 50], [40, 5, 55, 15], [0, 0, 0, 0]], np.float32)
    labels = np.array([0, 1, -1], np.int32)
    return image, boxes, labels


def geometry_reference(boxes, labels, offset, window, flip, size):
    """Boxes through canvas offset, window crop (centre rule), resize to `size`, flip: plain numpy."""
    height, width = size
    out_boxes, out_labels = np.zeros_like(boxes), np.full_like(labels, -1)
    sy, sx = (window[2] - window[0]) / height, (window[3] - window[1]) / width
    for i, (box, label) in enumerate(zip(boxes, labels)):
        y1, x1, y2, x2 = box + [offset[0], offset[1], offset[0], offset[1]]
        cy, cx = (y1 + y2) / 2, (x1 + x2) / 2
        if label < 0 or not (window[0] < cy < window[2] and window[1] < cx < window[3]):
            continue
        y1, y2 = np.clip([(y1 - window[0]) / sy, (y2 - window[0]) / sy], 0, height)
        x1, x2 = np.clip([(x1 - window[1]) / sx, (x2 - window[1]) / sx], 0, width)
        if flip:
            x1, x2 = width - x2, width - x1
        out_boxes[i], out_labels[i] = [y1, x1, y2, x2], label
    return out_boxes, out_labels


@pytest.mark.parametrize("offset,window,flip", [
    ((0, 0), (0, 0, 60, 80), False),          # identity
    ((10, 20), (0, 0, 120, 160), True),       # expand x2, no crop, flip
    ((0, 0), (5, 10, 35, 60), False),         # crop only: green object's centre leaves the window
    ((30, 40), (20, 30, 110, 150), True),     # expand + crop + flip
])
def test_geometry_matches_numpy(offset, window, flip):
    image, boxes, labels = colour_image()
    out, out_boxes, out_labels = apply_geometry(tf.constant(image), boxes, labels, tf.constant(offset, tf.float32),
                                                tf.constant(window, tf.float32), tf.constant(flip))
    expected_boxes, expected_labels = geometry_reference(boxes, labels, offset, window, flip, (60, 80))
    np.testing.assert_array_equal(out_labels.numpy(), expected_labels)
    np.testing.assert_allclose(out_boxes.numpy(), expected_boxes, atol=1e-4)
    out = out.numpy()
    if window == (0, 0, 60, 80) and not flip:
        np.testing.assert_allclose(out, image, atol=1e-3)
    # the pixels inside each kept box (shrunk by a pixel against interpolation at the border) are the object's colour
    for box, label in zip(out_boxes.numpy(), out_labels.numpy()):
        if label >= 0:
            y1, x1, y2, x2 = np.round(box).astype(int) + [1, 1, -1, -1]
            colour = [255, 0, 0] if label == 0 else [0, 255, 0]
            np.testing.assert_allclose(out[y1:y2, x1:x2].mean((0, 1)), colour, atol=8)
    if window == (0, 0, 120, 160):  # the canvas outside the image is the mean pixel
        np.testing.assert_allclose(out[-1, -1], [123, 117, 104], atol=1e-3)


def test_crop_windows_obey_the_min_iou_rule():
    rng = np.random.default_rng(0)
    boxes = np.array([[20, 30, 60, 90], [100, 100, 140, 130], [0, 0, 0, 0]], np.float32)
    valid = np.array([True, True, False])
    size = tf.constant([160.0, 200.0])
    cropped = 0
    for trial in range(30):
        min_iou = float(rng.choice([0.0, 0.1, 0.3, 0.5, 0.7]))
        window = sample_crop(size, boxes, valid, min_iou).numpy()
        assert 0 <= window[0] < window[2] <= 160 and 0 <= window[1] < window[3] <= 200
        if np.allclose(window, [0, 0, 160, 200]):
            continue
        cropped += 1
        h, w = window[2] - window[0], window[3] - window[1]
        assert 0.3 * 160 - 1e-3 <= h and 0.3 * 200 - 1e-3 <= w and 0.5 <= w / h <= 2.0
        centres = (boxes[:2, :2] + boxes[:2, 2:]) / 2
        inside = (centres[:, 0] > window[0]) & (centres[:, 0] < window[2]) & \
                 (centres[:, 1] > window[1]) & (centres[:, 1] < window[3])
        assert inside.any()
        iou = box_iou_one_to_many(window[None], boxes[:2]).numpy()[0]
        assert iou[inside].max() >= min_iou
    assert cropped > 10
    np.testing.assert_array_equal(sample_crop(size, boxes, valid, 1.0).numpy(), [0, 0, 160, 200])
    no_objects = sample_crop(size, boxes, np.zeros(3, bool), 0.0).numpy()
    np.testing.assert_array_equal(no_objects, [0, 0, 160, 200])


def test_photometric_stays_in_range_and_changes_colours():
    image, _, _ = colour_image()
    tf.random.set_seed(1)
    outputs = [photometric_distort(tf.constant(image)).numpy() for _ in range(6)]
    assert all(o.min() >= 0 and o.max() <= 255 and o.shape == image.shape for o in outputs)
    assert any(np.abs(o - image).max() > 10 for o in outputs)


def test_batches_elements_and_tf_data():
    image, boxes, labels = colour_image()
    augment = SSDAugment()
    batch = {"images": tf.constant(np.stack([image] * 3)), "image_id": tf.constant([1, 2, 3]),
             "bounding_boxes": {"boxes": tf.constant(np.stack([boxes] * 3)),
                                "labels": tf.constant(np.stack([labels] * 3))}}
    out = augment(batch)
    assert out["images"].shape == (3, 60, 80, 3) and out["bounding_boxes"]["boxes"].shape == (3, 3, 4)
    assert out["image_id"].numpy().tolist() == [1, 2, 3]
    kept = out["bounding_boxes"]["labels"].numpy()
    assert (kept[:, 2] == -1).all()  # padding stays padding
    assert not out["bounding_boxes"]["boxes"].numpy()[kept < 0].any()
    ds = tf.data.Dataset.from_tensor_slices(batch).map(augment).batch(3)
    element = next(iter(ds))
    assert element["images"].shape == (3, 60, 80, 3)
    with pytest.raises(ValueError, match="masks"):
        augment(dict(batch, masks=tf.zeros([3, 3, 60, 80], tf.uint8)))
    with pytest.raises(ValueError, match="max_expand"):
        SSDAugment(max_expand=0.5)
