"""YOLO data pieces: multi-scale batches inside tf.data, k-means anchor priors (synthetic clusters and BCCD), and bad
input (a YOLO txt with an out-of-range class id or a zero-size box, an image without objects)."""
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from kdet.data.anchors_kmeans import (anchors_main, compute_priors, format_priors, kmeans_iou, mean_iou,
                                      shape_iou)
from kdet.data.multiscale import multiscale_batches, resize_batch
from kdet.data.pipeline import make_tf_dataset
from kdet.data.records import DetectionDataset, Record
from kdet.data.shapes import make_shapes
from kdet.errors import DataError
from kdet.models import TinyYOLOv2, YOLOv1
from kdet.ops.images import image_hw


def test_multiscale_batches_change_size_every_n_batches():
    dataset = make_shapes(48, (64, 64), max_objects=3, seed=2)
    batches = make_tf_dataset(dataset, (64, 64), 2)
    model = TinyYOLOv2(num_classes=3, image_size=(64, 64), width_multiplier=0.0625, multiscale_sizes=(32, 64, 96))

    def with_targets(batch):  # what the train step does, here inside tf.data to see the grid per size
        size = image_hw(batch["images"])
        return batch, model.encode_targets(model.standardize_targets(batch["bounding_boxes"], size), size)

    pairs = multiscale_batches(batches, model.data_needs.multiscale_sizes, every=3, seed=4, map_fn=with_targets)
    assert pairs.element_spec[0]["images"].shape.as_list() == [None, None, None, 3]
    sizes, originals = [], list(batches)
    for i, (batch, targets) in enumerate(pairs):
        size = batch["images"].shape[1]
        sizes.append(size)
        assert batch["images"].shape[1:] == (size, size, 3) and size in (32, 64, 96)
        assert targets["grid"].shape[1:3] == (size // 32, size // 32)  # the grid follows the size
        np.testing.assert_allclose(batch["bounding_boxes"]["boxes"].numpy(),
                                   originals[i]["bounding_boxes"]["boxes"].numpy() * size / 64, atol=1e-4)
    blocks = [sizes[i:i + 3] for i in range(0, len(sizes), 3)]
    assert all(len(set(block)) == 1 for block in blocks), sizes  # one size per block of 3 batches
    assert len(set(sizes)) >= 2, sizes  # ... and the size really changes
    # another epoch draws another sequence; the same seed gives the same first epoch
    again = [b["images"].shape[1] for b, _ in multiscale_batches(batches, (32, 64, 96), every=3, seed=4,
                                                                   map_fn=lambda b: (b, 0))]
    assert again == sizes


def test_resize_batch_scales_images_boxes_and_masks():
    images = tf.random.uniform([2, 40, 60, 3], 0, 255)
    masks = tf.cast(tf.random.uniform([2, 3, 40, 60]) > 0.5, tf.uint8)
    batch = {"images": images, "bounding_boxes": {"boxes": tf.constant([[[4.0, 6, 20, 30]] * 3] * 2),
                                                  "labels": tf.zeros([2, 3], tf.int32)},
             "masks": masks, "scale": tf.ones([2, 2])}
    out = resize_batch(batch, 80)
    assert out["images"].shape == (2, 80, 80, 3) and out["masks"].shape == (2, 3, 80, 80)
    np.testing.assert_allclose(out["bounding_boxes"]["boxes"][0, 0].numpy(), [8, 8, 40, 40], atol=1e-5)
    np.testing.assert_allclose(out["scale"].numpy(), [[2, 80 / 60]] * 2, atol=1e-6)


def test_shape_iou_and_mean_iou_reference():
    shapes = np.array([[2.0, 2.0], [1.0, 4.0]])
    priors = np.array([[2.0, 2.0], [1.0, 1.0]])
    np.testing.assert_allclose(shape_iou(shapes, priors), [[1.0, 0.25], [2 / 6, 0.25]])
    assert mean_iou(shapes, priors) == pytest.approx((1.0 + 2 / 6) / 2)


def test_kmeans_recovers_known_clusters():
    """Four box shapes with 5 % jitter: k-means with d = 1 - IoU returns them (sorted by area) and beats any
    other choice of 4 priors drawn from the data."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.05, 0.04], [0.10, 0.30], [0.30, 0.12], [0.50, 0.55]])
    shapes = np.concatenate([c * rng.normal(1.0, 0.05, (150, 2)) for c in centres])
    found = kmeans_iou(shapes, 4, seed=1)
    np.testing.assert_allclose(found, centres, rtol=0.03)
    fit = mean_iou(shapes, found)
    assert fit > 0.9
    for _ in range(5):
        assert fit >= mean_iou(shapes, shapes[rng.choice(len(shapes), 4, replace=False)])


def test_compute_priors_on_bccd_beats_hand_picked(shared_data, capsys):
    """The paper's comparison on real data: 5 k-means priors fit BCCD's training boxes better than the 5 VOC priors
    of yolo-voc.cfg and the 9 Faster R-CNN anchors; the CLI entry point prints the same report."""
    from kdet.data.io import load_dataset
    path = shared_data / "bccd" / "BCCD"
    dataset = load_dataset("voc", path, split="train", verbose=False)
    result = compute_priors(dataset, 5, (416, 416))
    assert result["num_boxes"] > 2500 and len(result["priors_cells"]) == 5
    assert result["mean_iou"] > max(result["hand_picked"].values())
    assert result["mean_iou"] > 0.7
    cells = np.array(result["priors_cells"])
    np.testing.assert_allclose(cells * 32, result["priors_pixels"], atol=0.01)
    assert anchors_main(["--k", "5", "--format", "voc", str(path), "--image-size", "416", "416"]) == 0
    printed = capsys.readouterr().out
    assert f"{result['mean_iou']:.4f}" in printed and "model.args.anchors" in printed
    assert format_priors(result).splitlines()[-1] == printed.strip().splitlines()[-1]


def test_compute_priors_without_boxes_is_a_data_error():
    empty = DetectionDataset([Record(image_id=0, height=10, width=10, boxes=np.zeros((0, 4), np.float32),
                                     labels=np.zeros(0, np.int32))], ["a"])
    with pytest.raises(DataError, match="at least 5 boxes"):
        compute_priors(empty, 5)


def write_yolo_set(root: Path, label_text: str):
    from kdet.data.images import encode_png
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    image = np.full((64, 64, 3), 128, np.uint8)
    (root / "images" / "train" / "a.png").write_bytes(encode_png(image))
    (root / "images" / "train" / "empty.png").write_bytes(encode_png(image))
    (root / "labels" / "train" / "a.txt").write_text(label_text)
    (root / "labels" / "train" / "empty.txt").write_text("")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [cell, blob]\n")
    return root / "data.yaml"


def test_bad_yolo_txt_class_out_of_range_and_zero_size_box(tmp_path):
    """The reader drops and reports (file + line) a class id outside names and a box of zero width; strict raises;
    the image without objects stays and trains (all-zero YOLO targets, finite loss)."""
    from kdet.data.yolo import read_yolo
    yaml_path = write_yolo_set(tmp_path, "7 0.5 0.5 0.2 0.2\n0 0.3 0.3 0.0 0.2\n1 0.5 0.5 0.25 0.5\n")
    dataset = read_yolo(yaml_path, "train", verbose=False)
    by_name = {Path(r.path).name: r for r in dataset.records}
    assert set(by_name) == {"a.png", "empty.png"}
    assert by_name["a.png"].labels.tolist() == [1] and len(by_name["empty.png"].boxes) == 0
    problems = " ".join(str(p) for p in dataset.report.problems)
    assert "a.txt" in problems and "line 1" in problems and "line 2" in problems
    with pytest.raises(DataError, match="a.txt"):
        read_yolo(yaml_path, "train", strict=True, verbose=False)
    model = YOLOv1(num_classes=2, image_size=(64, 64), width_multiplier=0.0625, fc_units=(8,))
    batch = next(iter(make_tf_dataset(dataset, (64, 64), 2)))
    targets = model.encode_targets(batch["bounding_boxes"], (64, 64))
    per_image_objects = tf.reduce_sum(targets["grid"][..., 4], axis=[1, 2]).numpy()
    order = [Path(dataset.records[i].path).name for i in batch["image_id"].numpy()]
    assert dict(zip(order, per_image_objects)) == {"a.png": 1.0, "empty.png": 0.0}
    loss = model.compute_loss(batch["images"], batch["bounding_boxes"], model(batch["images"]))
    assert np.isfinite(float(loss))
