"""The tf.data pipeline keeps boxes, instance masks and semantic masks consistent with the pixels."""
import numpy as np
import pytest

from kdet.config import AugmentConfig
from kdet.data.pipeline import make_tf_dataset
from kdet.data.records import DetectionDataset, Record
from kdet.data.shapes import make_shapes
from kdet.errors import DataError


def _mask_box(mask):
    ys, xs = np.nonzero(mask)
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32)


def _iou(a, b):
    ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = ih * iw
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_palette_segmentation_pngs_keep_class_ids(shared_data):
    from kdet.data.voc import read_voc
    dataset = read_voc(shared_data / "labelme_voc3" / "voc", split=None, with_segmentation=True, verbose=False)
    record = dataset.records[0]
    batch = next(iter(make_tf_dataset(DetectionDataset([record], dataset.class_names),
                                      (record.height, record.width), 1, with_segmentation=True)))
    values = set(np.unique(batch["segmentation_masks"].numpy()).tolist())
    assert 255 in values and 0 in values
    assert values - {0, 255} <= set(range(1, len(dataset.class_names) + 1))


@pytest.mark.parametrize("augment", [None, AugmentConfig(flip=True, scale_jitter=[0.7, 1.4], color_jitter=0.2),
                                     AugmentConfig(flip=False, elastic=4.0)])
def test_boxes_follow_masks_through_resize_and_augmentation(augment):
    dataset = make_shapes(24, image_size=(72, 90), max_objects=3, seed=3)
    ds = make_tf_dataset(dataset, (64, 64), 8, training=augment is not None, augment=augment, seed=1,
                         with_masks=True, with_segmentation=True)
    checked = 0
    for batch in ds:
        boxes = batch["bounding_boxes"]["boxes"].numpy()
        labels = batch["bounding_boxes"]["labels"].numpy()
        masks = batch["masks"].numpy()
        semantic = batch["segmentation_masks"].numpy()[..., 0]
        for i in range(len(boxes)):
            for j in np.nonzero(labels[i] >= 0)[0]:
                if augment is None:  # without augmentation the box is exactly the record's, scaled
                    record = dataset.records[int(batch["image_id"][i])]
                    np.testing.assert_allclose(boxes[i, j], record.boxes[j] * np.tile(batch["scale"][i], 2),
                                               rtol=1e-5)
                if masks[i, j].sum() < 100 or boxes[i, j].min() <= 0 or boxes[i, j].max() >= 64:
                    # small shapes: nearest-neighbour resampling may drop a triangle's thin tip; shapes cut by the
                    # crop keep the clipped box (as every detection library does), wider than the visible part
                    continue
                # Nearest-neighbour resampling can drop a triangle's one-pixel tip, so compare by IoU and by the
                # mean edge error rather than edge by edge.
                reference = _mask_box(masks[i, j])
                assert _iou(boxes[i, j], reference) > 0.8
                assert np.abs(boxes[i, j] - reference).mean() < 1.0
                # the semantic mask says the same class where this instance's pixels are visible
                visible = masks[i, j].astype(bool) & (semantic[i] != 0) & (semantic[i] != 255)
                assert np.mean(semantic[i][visible] == labels[i, j] + 1) > 0.5
                checked += 1
            assert np.all(boxes[i][labels[i] < 0] == 0)  # padding rows
    assert checked > 20


def test_letterbox_scale_maps_boxes_back():
    dataset = make_shapes(4, image_size=(60, 120), max_objects=2, seed=0)
    batch = next(iter(make_tf_dataset(dataset, (64, 64), 4, resize="letterbox")))
    scale = batch["scale"].numpy()
    np.testing.assert_allclose(scale, np.full((4, 2), 64 / 120), rtol=1e-6)
    images = batch["images"].numpy()
    assert np.all(images[:, 33:, :, :] == 0)  # padding below the 32-row image
    for i, record in enumerate(dataset.records):
        n = len(record.boxes)
        np.testing.assert_allclose(batch["bounding_boxes"]["boxes"].numpy()[i, :n] / np.tile(scale[i], 2),
                                   record.boxes, rtol=1e-5)


def test_image_files_are_decoded(shared_data):
    from kdet.data.voc import read_voc
    dataset = read_voc(shared_data / "bccd" / "BCCD", split="test", verbose=False)
    dataset.records = dataset.records[:3]
    batch = next(iter(make_tf_dataset(dataset, (96, 128), 3)))
    assert batch["images"].shape == (3, 96, 128, 3)
    assert 20 < float(batch["images"].numpy().mean()) < 250
    np.testing.assert_array_equal(batch["original_size"].numpy(), [[480, 640]] * 3)


def test_empty_dataset_or_missing_file_are_clear_errors():
    with pytest.raises(DataError, match="no usable images"):
        make_tf_dataset(DetectionDataset([], ["a"]), (32, 32), 2)
    image = np.zeros((8, 8, 3), np.uint8)
    records = [Record(0, 8, 8, [[0, 0, 4, 4]], [0], image=image),
               Record(1, 8, 8, [[0, 0, 4, 4]], [0], path="x.png")]
    with pytest.raises(DataError, match="x.png: image file not found"):
        make_tf_dataset(DetectionDataset(records, ["a"]), (32, 32), 2)


def test_images_without_objects_batch_with_padding():
    dataset = make_shapes(4, image_size=(32, 32), min_objects=0, max_objects=0, seed=0)
    batch = next(iter(make_tf_dataset(dataset, (32, 32), 4, training=True, augment=AugmentConfig(
        flip=True, scale_jitter=[0.8, 1.2]), with_masks=True)))
    assert batch["bounding_boxes"]["labels"].shape == (4, 0)


def test_color_jitter_keeps_the_mean_brightness():
    """A biased jitter makes training images differ from evaluation images (Keras' RandomColorJitter did, by +35%)."""
    import tensorflow as tf

    from kdet.data.augment import Augmenter
    rng = np.random.default_rng(0)
    augmenter = Augmenter(flip=False, color_jitter=0.3, seed=0)
    images = rng.uniform(0, 255, (200, 8, 8, 3)).astype(np.float32)
    out = np.stack([augmenter({"images": tf.constant(im), "bounding_boxes": {
        "boxes": tf.zeros([0, 4]), "labels": tf.zeros([0], tf.int32)}})["images"].numpy() for im in images])
    assert abs(out.mean() / images.mean() - 1) < 0.03
    assert np.abs(out - images).mean() > 5  # and it does jitter
    assert out.min() >= 0 and out.max() <= 255


def test_ssd_augmentation_from_the_config_moves_boxes_with_the_pixels():
    """data.augment.ssd applies the paper's expand / min-IoU crop / flip: boxes stay valid and inside the image, the
    images change, and a dataset with masks is refused with a ConfigError (SSDAugment moves boxes only)."""
    from kdet.errors import ConfigError
    dataset = make_shapes(16, image_size=(64, 64), max_objects=3, seed=4)
    plain = next(iter(make_tf_dataset(dataset, (64, 64), 16)))
    augment = AugmentConfig(flip=False, scale_jitter=[1.0, 1.0], ssd=True)
    batch = next(iter(make_tf_dataset(dataset, (64, 64), 16, training=True, augment=augment, seed=0, shuffle=False)))
    boxes, labels = batch["bounding_boxes"]["boxes"].numpy(), batch["bounding_boxes"]["labels"].numpy()
    valid = boxes[labels >= 0]
    assert len(valid) > 0 and np.all(valid >= 0) and np.all(valid <= 64)
    assert np.all(valid[:, 2] > valid[:, 0]) and np.all(valid[:, 3] > valid[:, 1])
    assert np.abs(batch["images"].numpy() - plain["images"].numpy()).mean() > 1.0
    with pytest.raises(ConfigError, match="augment.ssd"):
        make_tf_dataset(dataset, (64, 64), 4, training=True, augment=augment, with_masks=True)
