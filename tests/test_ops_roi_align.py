"""kdet.ops roi_align / roi_pool / multiscale_roi_align against loop ports of torchvision's CPU kernels.

Both paths are checked: `tf.image.crop_and_resize` (default) and the gather + weighted-sum twin (`builtins_only()`),
against the references and against each other (1e-5).
"""
import math

import numpy as np
import pytest
import tensorflow as tf

from kdet.errors import ConfigError
from kdet.ops import builtins_only, multiscale_roi_align, roi_align, roi_pool
from kdet.ops.roi_align import _bin_span


def bilinear_reference(feature, y, x):
    """torchvision bilinear_interpolate; feature [H, W, C] -> [C]."""
    height, width = feature.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * feature[y_low, x_low] + hy * lx * feature[y_low, x_high]
            + ly * hx * feature[y_high, x_low] + ly * lx * feature[y_high, x_high])


def roi_align_reference(features, boxes, box_indices, output_size, scale, sampling_ratio, aligned):
    out_h, out_w = output_size
    features = features.astype(np.float64)
    result = np.zeros((len(boxes), out_h, out_w, features.shape[-1]))
    offset = 0.5 if aligned else 0.0
    for k, (y1, x1, y2, x2) in enumerate(boxes.astype(np.float64)):
        start_y, start_x = y1 * scale - offset, x1 * scale - offset
        roi_h, roi_w = y2 * scale - offset - start_y, x2 * scale - offset - start_x
        if not aligned:
            roi_h, roi_w = max(roi_h, 1.0), max(roi_w, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        count = max(grid_h * grid_w, 1)
        for p in range(out_h):
            for q in range(out_w):
                total = 0.0
                for iy in range(grid_h):
                    y = start_y + p * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_x + q * bin_w + (ix + 0.5) * bin_w / grid_w
                        total = total + bilinear_reference(features[box_indices[k]], y, x)
                result[k, p, q] = total / count
    return result


def roi_pool_reference(features, boxes, box_indices, output_size, scale):
    out_h, out_w = output_size
    height, width = features.shape[1:3]
    result = np.zeros((len(boxes), out_h, out_w, features.shape[-1]), np.float32)
    round_away = lambda v: int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)  # noqa: E731
    for k, box in enumerate(boxes):
        y1, x1, y2, x2 = (round_away(float(np.float32(v) * np.float32(scale))) for v in box)
        bin_h = np.float32(max(y2 - y1 + 1, 1)) / np.float32(out_h)
        bin_w = np.float32(max(x2 - x1 + 1, 1)) / np.float32(out_w)
        for p in range(out_h):
            h0 = min(max(int(math.floor(np.float32(p) * bin_h)) + y1, 0), height)
            h1 = min(max(int(math.ceil(np.float32(p + 1) * bin_h)) + y1, 0), height)
            for q in range(out_w):
                w0 = min(max(int(math.floor(np.float32(q) * bin_w)) + x1, 0), width)
                w1 = min(max(int(math.ceil(np.float32(q + 1) * bin_w)) + x1, 0), width)
                if h1 > h0 and w1 > w0:
                    result[k, p, q] = features[box_indices[k], h0:h1, w0:w1].max(axis=(0, 1))
    return result


def mixed_boxes(rng, count, height, width):
    """yxyx input-pixel boxes: random ones plus outside / degenerate / tiny / whole-image cases."""
    corner = rng.uniform([-0.2 * height, -0.2 * width], [height, width], (count, 2))
    extent = rng.uniform(0.3, 0.9 * max(height, width), (count, 2))
    boxes = np.concatenate([corner, corner + extent], axis=1)
    special = [[-20, -30, 6, 9], [height - 5, width - 7, height + 30, width + 12], [3, width + 20, 9, width + 40],
               [6.2, 4.4, 6.2, 4.4], [2.1, 5.3, 2.4, 5.5], [0, 0, height, width], [-0.7, -0.2, 1.3, 2.6]]
    boxes[:len(special)] = special
    return boxes.astype(np.float32)


def both_paths(function, *args, **kwargs):
    default = function(*args, **kwargs).numpy()
    with builtins_only():
        twin = function(*args, **kwargs).numpy()
    return default, twin


def test_design_fixture_aligned_one_sample_per_bin():
    features = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    expected = [[4.5, 5, 5.5, 6], [7, 7.5, 8, 8.5], [9.5, 10, 10.5, 11], [12, 12.5, 13, 13.5]]
    for sampling_ratio in (1, -1):
        for result in both_paths(roi_align, features, [[1, 1, 3, 3]], [0], 4, aligned=True,
                                 sampling_ratio=sampling_ratio):
            np.testing.assert_allclose(result[0, :, :, 0], expected, atol=1e-5)


@pytest.mark.parametrize("seed,output_size,sampling_ratio,aligned,scale", [
    (0, (7, 7), 2, False, 1.0), (1, (7, 7), 2, True, 0.5), (2, (4, 5), 1, True, 1.0),
    (3, (3, 3), 3, False, 0.25), (4, (7, 7), -1, True, 1.0), (5, (5, 3), -1, False, 0.5),
    (6, (2, 2), 0, True, 0.25), (7, (6, 6), 4, True, 1.0)])
def test_roi_align_equals_reference_on_both_paths(seed, output_size, sampling_ratio, aligned, scale):
    rng = np.random.default_rng(seed)
    features = rng.normal(0, 1, (2, 11, 14, 3)).astype(np.float32)
    boxes = mixed_boxes(rng, 16, 11 / scale, 14 / scale)
    box_indices = rng.integers(0, 2, len(boxes)).astype(np.int32)
    expected = roi_align_reference(features, boxes, box_indices, output_size, scale, sampling_ratio, aligned)
    for result in both_paths(roi_align, features, boxes, box_indices, output_size, scale, sampling_ratio, aligned,
                             max_sampling_ratio=12):
        np.testing.assert_allclose(result, expected, atol=1e-4)


@pytest.mark.parametrize("sampling_ratio,aligned", [(2, False), (2, True), (-1, True), (-1, False), (3, True)])
def test_builtins_twin_equals_default_path_at_scale(sampling_ratio, aligned):
    """The gather + weighted-sum twin equals the crop_and_resize path to 1e-5 (float32 rounding of the sample positions,
    which grows with the coordinates and the feature slope: features in [-1, 1] here), with RoIs in both of the
    twin's cell layouts along each axis: compact (bins spanning <= grid + 1 cells) and wide, in all four pairings."""
    rng = np.random.default_rng(42)
    features = rng.uniform(-1, 1, (3, 32, 40, 8)).astype(np.float32)
    boxes = mixed_boxes(rng, 300, 128, 160)
    box_indices = rng.integers(0, 3, len(boxes))
    if sampling_ratio > 0:
        y1, x1, y2, x2 = (boxes * 0.25 - (0.5 if aligned else 0.0)).T
        grids = tf.fill([len(boxes)], sampling_ratio)
        bin_h, bin_w = (np.maximum(y2 - y1, 0 if aligned else 1) / 7, np.maximum(x2 - x1, 0 if aligned else 1) / 7)
        wide_y = _bin_span(y1, bin_h.astype(np.float32), grids, 7, sampling_ratio, 32).numpy() > sampling_ratio + 1
        wide_x = _bin_span(x1, bin_w.astype(np.float32), grids, 7, sampling_ratio, 40).numpy() > sampling_ratio + 1
        layouts = np.bincount(2 * wide_y + wide_x, minlength=4)
        assert (layouts >= 10).all(), layouts  # every (y, x) pairing of the layouts is exercised
    default, twin = both_paths(roi_align, features, boxes, box_indices, (7, 7), 0.25, sampling_ratio, aligned)
    assert np.abs(default - twin).max() <= 1e-5


@pytest.mark.parametrize("sampling_ratio,aligned,output_size", [(2, False, 7), (2, True, 14), (-1, True, 7)])
def test_builtins_twin_equals_default_path_on_fpn_levels(sampling_ratio, aligned, output_size):
    rng = np.random.default_rng(7)
    strides = (4, 8, 16)
    features = [rng.uniform(-1, 1, (2, 96 // s, 128 // s, 4)).astype(np.float32) for s in strides]
    boxes = mixed_boxes(rng, 200, 96, 128)
    box_indices = rng.integers(0, 2, len(boxes))
    default, twin = both_paths(multiscale_roi_align, features, boxes, box_indices, output_size, strides,
                               sampling_ratio, aligned=aligned)
    assert np.abs(default - twin).max() <= 1e-5


def test_roi_align_edge_cases():
    rng = np.random.default_rng(5)
    features = rng.normal(0, 1, (1, 6, 6, 2)).astype(np.float32)
    for result in both_paths(roi_align, features, np.zeros((0, 4), np.float32), np.zeros(0, np.int32), 3):
        assert result.shape == (0, 3, 3, 2)
    far_away = [[40, 40, 50, 50]]
    for result in both_paths(roi_align, features, far_away, [0], 2, sampling_ratio=2):
        assert not result.any()
    # an empty aligned RoI has no samples in torchvision (output 0); unaligned it is enlarged to one cell
    point = np.array([[2.5, 2.5, 2.5, 2.5]], np.float32)
    for result in both_paths(roi_align, features, point, [0], 2, aligned=True):
        assert not result.any()
    expected = roi_align_reference(features, point, [0], (2, 2), 1.0, -1, False)
    for result in both_paths(roi_align, features, point, [0], 2, aligned=False):
        np.testing.assert_allclose(result, expected, atol=1e-5)
        assert result.any()


def test_adaptive_sampling_beyond_the_cap_uses_the_cap():
    rng = np.random.default_rng(8)
    features = rng.normal(0, 1, (1, 8, 8, 2)).astype(np.float32)
    huge = np.array([[-20, -30, 40, 35]], np.float32)  # 60 x 65 cells: ceil(60 / 2) = 30 samples per bin side
    default_cap = roi_align(features, huge, [0], 2, sampling_ratio=-1, aligned=True).numpy()  # cap ceil(8/2) = 4
    fixed = roi_align(features, huge, [0], 2, sampling_ratio=4, aligned=True).numpy()
    np.testing.assert_allclose(default_cap, fixed, atol=1e-5)
    exact = roi_align(features, huge, [0], 2, sampling_ratio=-1, aligned=True, max_sampling_ratio=33).numpy()
    np.testing.assert_allclose(exact, roi_align_reference(features, huge, [0], (2, 2), 1.0, -1, True), atol=1e-4)


@pytest.mark.parametrize("builtins", [False, True])
def test_roi_align_in_graph_with_unknown_roi_count(builtins):
    @tf.function(input_signature=[tf.TensorSpec([None, 9, 9, 2]), tf.TensorSpec([None, 4]),
                                  tf.TensorSpec([None], tf.int32)])
    def pool(features, boxes, box_indices):
        with builtins_only(builtins):
            return roi_align(features, boxes, box_indices, 3, 1.0, -1, True)

    rng = np.random.default_rng(3)
    features = rng.normal(0, 1, (2, 9, 9, 2)).astype(np.float32)
    boxes = np.clip(mixed_boxes(rng, 9, 9, 9), 0, 9)  # inside the map: the default cap (3) is exact
    indices = rng.integers(0, 2, 9).astype(np.int32)
    expected = roi_align_reference(features, boxes, indices, (3, 3), 1.0, -1, True)
    np.testing.assert_allclose(pool(features, boxes, indices).numpy(), expected, atol=1e-4)
    assert pool(features, boxes[:0], indices[:0]).shape == (0, 3, 3, 2)


@pytest.mark.parametrize("seed,output_size,scale", [(0, (7, 7), 1.0), (1, (2, 3), 0.5), (2, (4, 4), 1 / 16)])
def test_roi_pool_equals_reference(seed, output_size, scale):
    rng = np.random.default_rng(seed)
    features = rng.normal(0, 1, (2, 10, 13, 3)).astype(np.float32)
    boxes = mixed_boxes(rng, 20, 10 / scale, 13 / scale)
    box_indices = rng.integers(0, 2, len(boxes)).astype(np.int32)
    result = roi_pool(features, boxes, box_indices, output_size, scale).numpy()
    np.testing.assert_array_equal(result, roi_pool_reference(features, boxes, box_indices, output_size, scale))


def test_roi_pool_hand_values_and_empty():
    features = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    # box rows/cols 1..3 -> 3 cells, 2 bins: [1, 3) and [2, 4) overlap on the middle row/column
    np.testing.assert_array_equal(roi_pool(features, [[1, 1, 3, 3]], [0], 2).numpy()[0, :, :, 0],
                                  [[12, 13], [17, 18]])
    assert roi_pool(features, np.zeros((0, 4), np.float32), np.zeros(0, np.int32), 2).shape == (0, 2, 2, 1)
    assert not roi_pool(features, [[30, 30, 40, 40]], [0], 2).numpy().any()  # outside: empty bins are 0


def multiscale_reference(features_by_level, boxes, box_indices, output_size, strides, sampling_ratio):
    result = []
    for box, index in zip(boxes, box_indices):
        area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
        level = math.floor(4 + math.log2(math.sqrt(area) / 224) + 1e-6) if area > 0 else -math.inf
        level = int(min(max(level, math.log2(strides[0])), math.log2(strides[-1])) - math.log2(strides[0]))
        result.append(roi_align_reference(features_by_level[level], box[None], [index], output_size,
                                          1 / strides[level], sampling_ratio, False)[0])
    return np.stack(result)


@pytest.mark.parametrize("builtins", [False, True])
def test_multiscale_roi_align_assigns_levels_like_torchvision(builtins):
    rng = np.random.default_rng(12)
    strides = (4, 8, 16, 32)
    features = [rng.normal(0, 1, (2, 256 // s, 320 // s, 2)).astype(np.float32) for s in strides]
    sizes = np.array([8, 50, 111, 112, 113, 223, 224, 225, 447, 448, 600, 0, 30, 90, 150, 250])
    corner = rng.uniform(0, 60, (len(sizes), 2))
    boxes = np.concatenate([corner, corner + sizes[:, None] * [1.0, 1.0]], axis=1).astype(np.float32)
    indices = rng.integers(0, 2, len(boxes))
    with builtins_only(builtins):
        result = multiscale_roi_align(features, boxes, indices, (3, 3), strides).numpy()
    np.testing.assert_allclose(result, multiscale_reference(features, boxes, indices, (3, 3), strides, 2),
                               atol=1e-4)
    with pytest.raises(ConfigError, match="consecutive powers of two"):
        multiscale_roi_align(features[:2], boxes, indices, 3, (4, 16))


def test_roi_pool_in_graph_with_unknown_roi_count():
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 2]), tf.TensorSpec([None, 4]),
                                  tf.TensorSpec([None], tf.int32)])
    def pool(features, boxes, box_indices):
        return roi_pool(features, boxes, box_indices, (2, 3), 0.5)

    rng = np.random.default_rng(4)
    features = rng.normal(0, 1, (2, 7, 8, 2)).astype(np.float32)
    boxes = mixed_boxes(rng, 9, 14, 16)
    indices = rng.integers(0, 2, 9).astype(np.int32)
    np.testing.assert_array_equal(pool(features, boxes, indices).numpy(),
                                  roi_pool_reference(features, boxes, indices, (2, 3), 0.5))
    assert pool(features, boxes[:0], indices[:0]).shape == (0, 2, 3, 2)


@pytest.mark.parametrize("count", [0, 1, 3, 40])
def test_builtins_twin_in_litert_with_fewer_bins_than_pieces(count):
    """The TFLite graph of the twin (GATHER + MUL + SUM in GATHER_PIECES pieces of bins, several of them empty when
    there are fewer bins than pieces) run by LiteRT equals the torchvision reference on two FPN levels."""
    from ai_edge_litert.interpreter import Interpreter

    from kdet.export.tflite import function_flatbuffer
    from kdet.ops.roi_align import GATHER_PIECES

    rng = np.random.default_rng(count)
    levels = [rng.normal(0, 1, (1, 32 // s, 32 // s, 3)).astype(np.float32) for s in (1, 2)]
    corner = rng.uniform(0, 100, (count, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(1, 120, (count, 2))], axis=1).astype(np.float32)
    assert count * 2 * 2 < GATHER_PIECES or count == 40  # 0, 1, 3 RoIs of 2x2 bins: some pieces are empty

    def pool(fine, coarse, rois):
        return {"y0": multiscale_roi_align([fine, coarse], rois, tf.zeros(tf.shape(rois)[:1], tf.int32), 2, (4, 8),
                                           2)}

    specs = [tf.TensorSpec([1, None, None, 3], tf.float32, name=f"x{i}") for i in range(2)]
    with builtins_only():
        flatbuffer = function_flatbuffer(pool, specs + [tf.TensorSpec([None, 4], tf.float32, name="x2")],
                                         tf.Module())
    runner = Interpreter(model_content=flatbuffer).get_signature_runner("serving_default")
    got = runner(x0=levels[0], x1=levels[1], x2=boxes)["y0"]
    assert got.shape == (count, 2, 2, 3)
    if count:
        expected = multiscale_reference(levels, boxes, np.zeros(count, np.int32), (2, 2), (4, 8), 2)
        np.testing.assert_allclose(got, expected, atol=1e-4)
