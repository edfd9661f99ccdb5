"""U-Net's border weight map (against a brute-force numpy version), elastic deformation, label-image reading."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kdet.data.elastic import apply_displacements, elastic_deform, random_displacements
from kdet.data.label_image import (check_segmentation, load_instance_tiles, read_intensity_image, read_label_image,
                                   semantic_from_instances, segmentation_masks, write_label_image)
from kdet.data.pipeline import make_tf_dataset
from kdet.data.records import DetectionDataset, Record
from kdet.losses.unet_weights import border_weight_map, instance_label_image, two_nearest_distances
from kdet.errors import ConfigError, DataError


def distances_reference(instances):
    """Brute force: for every pixel, the sorted distances to every instance's nearest pixel -> (d1, d2)."""
    yy, xx = np.mgrid[:instances.shape[0], :instances.shape[1]]
    per_instance = []
    for k in np.unique(instances[instances > 0]):
        points = np.argwhere(instances == k)
        d = np.sqrt((yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2).min(-1)
        per_instance.append(d)
    per_instance = np.sort(np.stack(per_instance, -1), -1)
    return per_instance[..., 0], per_instance[..., 1]


def weight_map_reference(instances, labels, class_weights, w0=10.0, sigma=5.0):
    d1, d2 = distances_reference(instances)
    border = w0 * np.exp(-(d1 + d2) ** 2 / (2 * sigma ** 2))
    return class_weights[labels] + np.where(labels == 0, border, 0.0)


def two_touching_discs(height=48, width=64, radius=12):
    yy, xx = np.mgrid[:height, :width]
    instances = np.zeros((height, width), np.int32)
    instances[(yy - 24) ** 2 + (xx - 20) ** 2 <= radius ** 2] = 1
    instances[(yy - 24) ** 2 + (xx - 44) ** 2 <= radius ** 2] = 2  # centres 2r apart: the discs touch
    return instances


def test_weight_map_on_two_touching_discs_equals_numpy():
    instances = two_touching_discs()
    labels = semantic_from_instances(instances)
    class_weights = np.array([0.7, 1.6], np.float32)
    result = border_weight_map(instances[None], labels[None], class_weights, w0=10.0, sigma=5.0).numpy()[0]
    expected = weight_map_reference(instances, labels, class_weights)
    np.testing.assert_allclose(result, expected, atol=1e-4)
    # the largest weights lie on the gap where the discs touch, about w_c + w0
    gap = (instances > 0) & (labels == 0)
    assert gap.sum() > 0 and result[gap].min() > 10.0
    assert result[labels == 1].max() == pytest.approx(1.6)
    far = np.zeros_like(instances, bool)
    far[:, :2] = True
    assert result[far].max() < 0.7 + 1e-3  # far from both discs only w_c is left


def test_two_nearest_distances_on_random_instances_equal_brute_force():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :50]
    instances = np.zeros((40, 50), np.int32)
    for k in range(1, 8):
        cy, cx, r = rng.uniform(0, 40), rng.uniform(0, 50), rng.uniform(2, 7)
        instances[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    radius = 15
    d1, d2 = (d.numpy()[0] for d in two_nearest_distances(instances[None], radius))
    ref1, ref2 = distances_reference(instances)
    np.testing.assert_allclose(d1, np.minimum(ref1, radius), atol=1e-5)
    np.testing.assert_allclose(d2, np.minimum(ref2, radius), atol=1e-5)


def test_weight_map_without_labels_and_without_objects():
    masks = np.zeros((2, 3, 16, 16), np.uint8)  # two images, three padded instance slots
    masks[0, 0, 2:6, 2:6] = 1
    masks[0, 1, 2:6, 6:9] = 1
    instances = instance_label_image(masks).numpy()
    assert set(np.unique(instances[0])) == {0, 1, 2} and not instances[1].any()
    weights = border_weight_map(instances).numpy()
    np.testing.assert_allclose(weights[1], 1.0 + 10 * np.exp(-(2 * 25.0) ** 2 / 50), atol=1e-6)  # nothing near
    assert weights[0][instances[0] > 0].max() == 1.0  # the border term is for background pixels
    assert instance_label_image(np.zeros((1, 0, 4, 4), np.uint8)).shape == (1, 4, 4)


def test_elastic_with_a_known_field_equals_numpy_sampling():
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 255, (12, 20, 3)).astype(np.float32)
    seg = rng.integers(0, 3, (12, 20, 1)).astype(np.int32)
    masks = np.zeros((1, 12, 20), np.uint8)
    masks[0, 3:7, 8:11] = 1
    element = {"images": image, "segmentation_masks": seg, "masks": masks,
               "bounding_boxes": {"boxes": np.array([[3, 8, 7, 11]], np.float32), "labels": np.array([0], np.int32)}}
    shift = np.zeros((12, 20, 2), np.float32)
    shift[..., 0], shift[..., 1] = 2.0, -3.0  # out(y, x) = in(y + 2, x - 3), mirrored at the border
    out = apply_displacements(element, shift)
    padded = np.pad(image, [[0, 2], [3, 0], [0, 0]], mode="reflect")
    np.testing.assert_allclose(out["images"].numpy(), padded[2:, :20], atol=1e-4)
    np.testing.assert_array_equal(out["segmentation_masks"].numpy(), np.pad(seg, [[0, 2], [3, 0], [0, 0]],
                                                                            mode="reflect")[2:, :20])
    np.testing.assert_array_equal(out["bounding_boxes"]["boxes"].numpy(), [[1, 11, 5, 14]])  # moved with the mask
    half = np.full((12, 20, 2), 0.5, np.float32)  # half a pixel: the mean of 4 neighbours inside the image
    mean4 = (image[:-1, :-1] + image[1:, :-1] + image[:-1, 1:] + image[1:, 1:]) / 4
    np.testing.assert_allclose(apply_displacements({"images": image}, half)["images"].numpy()[:-1, :-1], mean4,
                               atol=1e-4)


def test_elastic_random_field_is_smooth_and_keeps_masks_labels():
    field = random_displacements(64, 96, 96, grid=3, sigma=10.0, seed=1).numpy()
    coarse_std = field[:, ::47, ::47].std()
    assert 5.0 < coarse_std < 15.0  # the lattice values are N(0, 10)
    assert np.abs(np.diff(field, axis=1)).max() < 3.0  # per-pixel steps are small: a smooth deformation
    rng = np.random.default_rng(3)
    batch = {"images": tf.constant(rng.uniform(0, 255, (2, 32, 32, 3)), tf.float32),
             "segmentation_masks": tf.constant(rng.choice([0, 1, 255], (2, 32, 32, 1)), tf.int32)}
    out = elastic_deform(batch, sigma=4.0, seed=0)
    assert out["images"].shape == (2, 32, 32, 3)
    assert set(np.unique(out["segmentation_masks"].numpy())) <= {0, 1, 255}
    identity = elastic_deform(batch, sigma=0.0)
    np.testing.assert_allclose(identity["images"].numpy(), batch["images"].numpy(), atol=1e-4)


def test_label_images_keep_16_bit_ids_and_intensities_are_stretched(tmp_path):
    labels = np.zeros((6, 8), np.int32)
    labels[1:3, 1:4] = 300
    labels[3:5, 4:7] = 65000
    path = write_label_image(labels, tmp_path / "labels.tif")
    np.testing.assert_array_equal(read_label_image(path), labels)
    intensity = np.linspace(1000, 3000, 48).reshape(6, 8).astype(np.uint16)  # a 16-bit microscopy image
    Image.fromarray(intensity).save(tmp_path / "image.tif")
    image = read_intensity_image(tmp_path / "image.tif")
    assert image.dtype == np.uint8 and image.shape == (6, 8, 3)
    assert image.min() == 0 and image.max() == 255  # its own range, not / 257 (which would be 4..12)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png.*one integer per pixel"):
        read_label_image(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="missing.tif.*not found"):
        read_label_image(tmp_path / "missing.tif")


def test_touching_instances_are_split_by_background():
    labels = np.zeros((5, 8), np.int32)
    labels[1:4, 1:4] = 1
    labels[1:4, 4:7] = 2
    semantic = semantic_from_instances(labels)
    np.testing.assert_array_equal(semantic[2], [0, 1, 1, 0, 0, 1, 1, 0])  # columns 3 and 4 touch: background


def test_instance_tiles_and_bad_input(tmp_path):
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 4000, (64, 64)).astype(np.uint16)).save(tmp_path / "img.tif")
    labels = np.zeros((64, 64), np.int32)
    labels[5:15, 5:15], labels[40:50, 40:50] = 1, 2
    write_label_image(labels, tmp_path / "labels.tif")
    train = load_instance_tiles(tmp_path / "img.tif", tmp_path / "labels.tif", "train", tile_size=32, stride=16,
                                holdout=(32, 32, 64, 64))
    assert len(train) == 9 - 4  # a 3 x 3 grid of tiles minus the four touching the held-out quarter
    test = load_instance_tiles(tmp_path / "img.tif", tmp_path / "labels.tif", "test", holdout=(32, 32, 64, 64))
    record = test.records[0]
    assert record.image.shape == (32, 32, 3) and record.masks.shape == (1, 32, 32)
    np.testing.assert_array_equal(record.boxes, [[8, 8, 18, 18]])
    assert check_segmentation(train, 2) == 5
    write_label_image(labels[:60], tmp_path / "short.tif")
    with pytest.raises(DataError, match="short.tif.*label image is 64x60"):
        load_instance_tiles(tmp_path / "img.tif", tmp_path / "short.tif")
    with pytest.raises(ConfigError, match="holdout"):
        load_instance_tiles(tmp_path / "img.tif", tmp_path / "labels.tif", holdout=(0, 0, 99, 10))


def test_mask_size_and_class_id_checks_name_the_file():
    image = np.zeros((4, 6, 3), np.uint8)
    wrong_size = Record(0, 4, 6, np.zeros((0, 4)), np.zeros(0), image=image, segmentation=np.zeros((4, 5), np.int32),
                        segmentation_path=None)
    wrong_size.segmentation_path = None
    with pytest.raises(DataError, match="mask is 5x4 but its image is 6x4"):
        list(segmentation_masks(DetectionDataset([wrong_size], ["a"])))
    too_high = Record(1, 4, 6, np.zeros((0, 4)), np.zeros(0), image=image, segmentation=np.full((4, 6), 3))
    with pytest.raises(DataError, match="class id 3 is not in the 3 classes"):
        check_segmentation(DetectionDataset([too_high], ["a", "b"]), 3)
    ignored = Record(2, 4, 6, np.zeros((0, 4)), np.zeros(0), image=image, segmentation=np.full((4, 6), 255))
    assert check_segmentation(DetectionDataset([ignored], ["a"]), 2) == 1


def test_real_nuclei_tiles(shared_data):
    root = shared_data / "stardist_nuclei"
    train = load_instance_tiles(root / "img2d.tif", root / "mask2d.tif", "train")
    test = load_instance_tiles(root / "img2d.tif", root / "mask2d.tif", "test")
    assert len(train) == 40 and len(test) == 1
    record = test.records[0]
    assert record.image.shape == (192, 192, 3) and record.image.max() > 200  # stretched 16-bit, not black
    assert len(record.masks) == 27
    assert ((record.masks.sum(0) > 0) & (record.segmentation == 0)).sum() > 100  # touching nuclei split by gaps
    from kdet.models.unet import UNet
    model = UNet(1, (128, 128), widths=(4, 8), padding="same", class_weights="median")
    masks = make_tf_dataset(train, (128, 128), 8, with_segmentation=True).map(lambda b: b["segmentation_masks"])
    weights = model.adapt(masks)
    assert weights[1] > weights[0] > 0  # nuclei are the rarer class
    np.testing.assert_allclose(model.class_weight_vector.numpy(), weights)


def test_label_image_dataset_from_a_directory(tmp_path):
    from kdet.data.label_image import load_label_image_dataset
    Image.fromarray(np.full((64, 64), 1000, np.uint16)).save(tmp_path / "img2d.tif")
    write_label_image(np.zeros((64, 64), np.int32), tmp_path / "mask2d.tif")
    data = load_label_image_dataset(tmp_path, "train", tile_size=32, stride=32, holdout=[0, 0, 32, 32])
    assert len(data) == 3 and data.class_names == ["nucleus"] and not data.records[0].image.any()  # constant: 0
    with pytest.raises(DataError, match="missing.tif"):
        load_label_image_dataset(tmp_path, "test", labels="missing.tif")
