"""The synthetic shapes set: deterministic, exact boxes / masks / semantic maps, the right geometry per class."""
import time

import numpy as np
import pytest

from kdet.data.shapes import CLASS_NAMES, make_shapes
from kdet.errors import ConfigError


def reference_box(mask):
    """Slow, obvious tight box of a bool mask: [ymin, xmin, ymax + 1, xmax + 1]."""
    ys, xs = np.where(mask)
    return [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(60, seed=7)


def test_types_and_shapes(shapes):
    assert shapes.class_names == ["circle", "square", "triangle"] == CLASS_NAMES
    assert len(shapes) == 60
    for record in shapes.records:
        n = len(record.labels)
        assert 1 <= n <= 4
        assert record.image.dtype == np.uint8 and record.image.shape == (128, 128, 3)
        assert record.masks.dtype == np.uint8 and record.masks.shape == (n, 128, 128)
        assert record.segmentation.dtype == np.int32 and record.segmentation.shape == (128, 128)
        assert record.boxes.dtype == np.float32 and record.boxes.shape == (n, 4)
        assert record.labels.dtype == np.int32 and set(record.labels.tolist()) <= {0, 1, 2}
        assert record.path is None and (record.height, record.width) == (128, 128)


def test_boxes_are_tight_to_the_visible_masks(shapes):
    for record in shapes.records:
        for box, mask in zip(record.boxes, record.masks):
            assert mask.any()
            np.testing.assert_array_equal(box, reference_box(mask > 0))


def test_masks_are_disjoint_and_semantic_map_is_label_plus_one(shapes):
    for record in shapes.records:
        assert record.masks.sum(axis=0).max() <= 1  # visible pixels: each pixel shows one object at most
        expected = np.zeros((128, 128), np.int32)
        for mask, label in zip(record.masks, record.labels):
            expected[mask > 0] = label + 1
        np.testing.assert_array_equal(record.segmentation, expected)


def test_every_object_stays_visible_and_masks_cover_the_foreground():
    for record in make_shapes(30, seed=3).records:
        assert all(mask.sum() >= 4 for mask in record.masks)
        assert record.masks.sum() == (record.segmentation > 0).sum()


@pytest.mark.parametrize("label, fill, tolerance", [(0, np.pi / 4, 0.06), (1, 1.0, 1e-9), (2, 0.5, 0.08)])
def test_geometry_of_each_class(label, fill, tolerance):
    """An unoccluded circle fills pi/4 of its box, a square all of it, a triangle half of it."""
    records = make_shapes(90, max_objects=1, seed=11).records
    ratios = []
    for record in records:
        assert len(record.labels) == 1
        if record.labels[0] == label:
            y0, x0, y1, x1 = record.boxes[0]
            ratios.append(record.masks[0].sum() / ((y1 - y0) * (x1 - x0)))
    assert len(ratios) > 10
    np.testing.assert_allclose(ratios, fill, atol=tolerance)


def test_sizes_follow_min_and_max_size():
    records = make_shapes(40, max_objects=1, min_size=0.3, max_size=0.4, seed=5).records
    for record in records:
        y0, x0, y1, x1 = record.boxes[0]
        # circle / square: the box is the size; triangle: the base is the size, the height too
        assert 0.3 * 128 - 2 <= max(y1 - y0, x1 - x0) <= 0.4 * 128 + 1


def test_shapes_are_visible_against_the_background():
    for record in make_shapes(20, max_objects=1, seed=2).records:
        inside = record.image[record.masks[0] > 0].mean(axis=0)
        outside = record.image[record.masks[0] == 0].astype(np.float64)
        assert np.linalg.norm(inside - outside.mean(axis=0)) > 40
        assert outside.std(axis=0).max() > 2  # noisy / graded background, not a flat colour


def test_deterministic_and_extendable():
    first = make_shapes(5, seed=3)
    again = make_shapes(8, seed=3)
    other = make_shapes(5, seed=4)
    for a, b in zip(first.records, again.records):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.masks, b.masks)
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(first.records, other.records))


def test_no_overlap_option_and_non_square_size():
    records = make_shapes(30, image_size=(96, 160), min_objects=2, max_objects=3, allow_overlap=False,
                          seed=9).records
    for record in records:
        assert record.image.shape == (96, 160, 3)
        # no occlusion at all: every object keeps its full geometric fill ratio
        for box, mask, label in zip(record.boxes, record.masks, record.labels):
            y0, x0, y1, x1 = box
            assert 0 <= y0 < y1 <= 96 and 0 <= x0 < x1 <= 160
            ratio = mask.sum() / ((y1 - y0) * (x1 - x0))
            assert abs(ratio - [np.pi / 4, 1.0, 0.5][label]) < 0.12


def test_fast_with_every_object_count_and_balanced_classes():
    # CPU time of this process, not wall time: CI shares the cores with the other test worker
    start = time.process_time()
    records = make_shapes(300, seed=1).records
    assert time.process_time() - start < 5.0  # ~0.7 s here; per-pixel Python would take minutes
    counts = np.bincount([len(r.labels) for r in records], minlength=5)
    assert counts[0] == 0 and all(counts[1:5] > 40)
    per_class = np.bincount(np.concatenate([r.labels for r in records]), minlength=3)
    assert per_class.min() > 0.25 * per_class.sum()


@pytest.mark.parametrize("kwargs", [dict(num_images=-1), dict(num_images=2, image_size=(4, 4)),
                                    dict(num_images=2, min_objects=3, max_objects=2),
                                    dict(num_images=2, min_size=0.6, max_size=0.5),
                                    dict(num_images=2, max_size=1.5)])
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        make_shapes(**kwargs)
