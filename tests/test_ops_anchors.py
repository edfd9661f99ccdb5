"""kdet.ops.anchors against a loop reference written from torchvision's AnchorGenerator description."""
import math

import numpy as np
import pytest
import tensorflow as tf

from kdet.errors import ConfigError
from kdet.ops import anchors, base_anchors, multilevel_anchors, num_anchors_per_location


def anchors_reference(feature_size, stride, sizes, ratios):
    """Loop order: rows, columns, ratios, sizes. Half sizes rounded half-to-even, like torch.round."""
    stride_y, stride_x = stride if isinstance(stride, tuple) else (stride, stride)
    cell = []
    for ratio in ratios:
        for size in sizes:
            h_ratio = np.sqrt(np.float32(ratio))
            h = h_ratio * np.float32(size)
            w = (np.float32(1) / h_ratio) * np.float32(size)
            cell.append([np.round(-h / 2), np.round(-w / 2), np.round(h / 2), np.round(w / 2)])
    out = []
    for i in range(feature_size[0]):
        for j in range(feature_size[1]):
            for y1, x1, y2, x2 in cell:
                out.append([y1 + i * stride_y, x1 + j * stride_x, y2 + i * stride_y, x2 + j * stride_x])
    return np.array(out, np.float32).reshape(-1, 4)


def test_base_anchors_hand_values():
    # ratio 1: 32x32 square; ratio 2 (h/w): h = 32 sqrt 2 = 45.25 -> half 22.63 -> 23, w half 11.31 -> 11
    np.testing.assert_array_equal(base_anchors((32,), (1.0, 2.0)), [[-16, -16, 16, 16], [-23, -11, 23, 11]])
    # rounding half to even: size 5, ratio 1 -> half 2.5 -> 2
    np.testing.assert_array_equal(base_anchors((5,), (1.0,)), [[-2, -2, 2, 2]])


@pytest.mark.parametrize("feature_size,stride,sizes,ratios", [
    ((3, 4), 16, (128, 256, 512), (0.5, 1.0, 2.0)),
    ((5, 2), (8, 12), (20,), (0.25, 1.0, 3.0, 0.7)),
    ((1, 1), 32, (33, 65), (1.0,)),
])
def test_single_level_matches_reference(feature_size, stride, sizes, ratios):
    result = anchors(feature_size, stride, sizes, ratios).numpy()
    np.testing.assert_array_equal(result, anchors_reference(feature_size, stride, sizes, ratios))


def test_anchor_index_is_location_major():
    result = anchors((2, 3), 10, (8, 16), (0.5, 1.0, 2.0)).numpy().reshape(2, 3, 6, 4)
    centres_y = (result[..., 0] + result[..., 2]) / 2
    centres_x = (result[..., 1] + result[..., 3]) / 2
    np.testing.assert_array_equal(centres_y[1, 2], np.full(6, 10.0))
    np.testing.assert_array_equal(centres_x[1, 2], np.full(6, 20.0))
    heights = result[0, 0, :, 2] - result[0, 0, :, 0]
    widths = result[0, 0, :, 3] - result[0, 0, :, 1]
    # ratios outer, sizes inner: (0.5, 8), (0.5, 16), (1, 8), ...
    np.testing.assert_allclose(heights / widths, [0.5, 0.5, 1, 1, 2, 2], rtol=0.2)
    np.testing.assert_allclose(np.sqrt(heights * widths), [8, 16, 8, 16, 8, 16], rtol=0.1)


def test_multilevel_concatenates_levels_with_torchvision_strides():
    image_size, strides = (100, 130), (8, 16, 32)
    sizes, ratios = ((24, 40), (64,), (100,)), (0.5, 1.0, 2.0)
    result = multilevel_anchors(image_size, strides, sizes, ratios).numpy()
    parts = []
    for stride, level_sizes in zip(strides, sizes):
        feature = (math.ceil(100 / stride), math.ceil(130 / stride))
        parts.append(anchors_reference(feature, (100 // feature[0], 130 // feature[1]), level_sizes, ratios))
    np.testing.assert_array_equal(result, np.concatenate(parts))
    # 100 / 32 -> 4 rows, so torchvision's stride there is 100 // 4 = 25, not 32
    assert (100 // math.ceil(100 / 32)) == 25
    assert num_anchors_per_location(sizes, ratios) == [6, 3, 3]


def test_multilevel_per_level_ratios_and_explicit_feature_sizes():
    result = multilevel_anchors((64, 64), (16, 32), ((32,), (64,)), ((1.0,), (0.5, 2.0)),
                                feature_sizes=[(4, 4), (2, 2)]).numpy()
    expected = np.concatenate([anchors_reference((4, 4), 16, (32,), (1.0,)),
                               anchors_reference((2, 2), 32, (64,), (0.5, 2.0))])
    np.testing.assert_array_equal(result, expected)
    with pytest.raises(ConfigError, match="sizes_per_level"):
        multilevel_anchors((64, 64), (16, 32), ((32,),), (1.0,))


def test_anchors_with_dynamic_feature_size_in_graph():
    @tf.function(input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)])
    def grid(height, width):
        return anchors((height, width), 16, (32, 64), (0.5, 1.0))

    np.testing.assert_array_equal(grid(3, 5).numpy(), anchors_reference((3, 5), 16, (32, 64), (0.5, 1.0)))
