"""Anchor grids, in the exact order and rounding of torchvision's AnchorGenerator.

A kdet twin of a torchvision detector must see the same anchor at the same index, because the head's output
channel a at location (i, j) is trained against anchor (i * W + j) * A + a. torchvision
(models/detection/anchor_utils.py):
  * base anchors: for each ratio r (outer loop) and each size s (inner loop), h = s * sqrt(r), w = s / sqrt(r),
    box (-w/2, -h/2, w/2, h/2) rounded half-to-even, computed in float32;
  * locations row-major over the feature map, shifted by (j * stride_x, i * stride_y) (top-left corner at the
    origin, not the cell centre);
  * per image, the levels are concatenated in order.
Ratios are height / width. Boxes here are yxyx pixels.
"""
import numpy as np
import tensorflow as tf

from kdet.errors import ConfigError


def _pair(value):
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair, got {value!r}")
        return value[0], value[1]
    return value, value


def base_anchors(sizes, ratios):
    """The A = len(ratios) * len(sizes) anchors centred on the origin, [A, 4] float32 yxyx, torchvision order.

    Computed in numpy float32 with the same operations as torchvision (sqrt, 1/x, *, /2, round-half-even), so the
    values are bit-identical.
    """
    scales = np.asarray(sizes, np.float32)
    aspect = np.asarray(ratios, np.float32)
    h_ratios = np.sqrt(aspect)
    w_ratios = np.float32(1.0) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    xyxy = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2.0)
    xyxy = np.round(xyxy).astype(np.float32)
    return xyxy[:, [1, 0, 3, 2]]


def anchors(feature_size, stride, sizes, ratios):
    """Anchors of one feature level.

    Args:
        feature_size: (H, W) of the feature map (ints or scalar int tensors).
        stride: int or (stride_y, stride_x) in image pixels per feature cell (ints or scalar int tensors).
        sizes: anchor sizes in pixels (sqrt of the area), e.g. (32,) or (128, 256, 512).
        ratios: height / width ratios, e.g. (0.5, 1.0, 2.0).
    Returns:
        [H * W * A, 4] float32 yxyx pixels, A = len(ratios) * len(sizes), index (i * W + j) * A + a.
    """
    height, width = _pair(feature_size)
    stride_y, stride_x = _pair(stride)
    cell = tf.constant(base_anchors(sizes, ratios))  # [A, 4]
    # torchvision builds the shifts in int32 and adds the float base anchors: exact for any realistic image.
    shift_y = tf.range(height, dtype=tf.int32) * tf.cast(stride_y, tf.int32)
    shift_x = tf.range(width, dtype=tf.int32) * tf.cast(stride_x, tf.int32)
    grid_y, grid_x = tf.meshgrid(shift_y, shift_x, indexing="ij")
    grid_y = tf.cast(tf.reshape(grid_y, [-1]), tf.float32)
    grid_x = tf.cast(tf.reshape(grid_x, [-1]), tf.float32)
    shifts = tf.stack([grid_y, grid_x, grid_y, grid_x], axis=1)  # [H*W, 4]
    return tf.reshape(shifts[:, None, :] + cell[None, :, :], [-1, 4])


def _ratios_per_level(ratios, num_levels):
    if len(ratios) > 0 and isinstance(ratios[0], (list, tuple)):
        if len(ratios) != num_levels:
            raise ConfigError(f"anchor ratios: {len(ratios)} levels given, strides give {num_levels}")
        return list(ratios)
    return [ratios] * num_levels


def multilevel_anchors(image_size, strides, sizes_per_level, ratios, feature_sizes=None):
    """Anchors of all levels for one image size, concatenated level by level (torchvision order).

    Like torchvision, the stride used for the shifts is `image_size // feature_size` per axis: it equals the
    nominal stride when the image size is a multiple of it (torchvision pads images to multiples of 32), and is
    what torchvision uses otherwise (e.g. a 13x17 "pool" level of an 800x1088 image has stride 61 x 64).

    Args:
        image_size: (H, W) of the network input in pixels: ints, or scalar int32 tensors when the input's size is
            only known at run time (`kdet.ops.images.image_hw`).
        strides: nominal stride per level, e.g. (4, 8, 16, 32, 64); sets the default feature sizes
            ceil(image_size / stride), which is what stride-2 convolutions with padding produce.
        sizes_per_level: anchor sizes per level, e.g. ((32,), (64,), (128,), (256,), (512,)).
        ratios: height / width ratios shared by all levels, or one sequence per level.
        feature_sizes: optional explicit (H_l, W_l) per level (ints or tensors), to follow a backbone whose sizes
            differ.
    Returns:
        [sum_l H_l * W_l * A_l, 4] float32 yxyx pixels.
    """
    image_h, image_w = image_size
    if len(sizes_per_level) != len(strides):
        raise ConfigError(f"anchor sizes_per_level: {len(sizes_per_level)} levels given, strides give {len(strides)}")
    if feature_sizes is None:
        feature_sizes = [(_ceil_div(image_h, _pair(s)[0]), _ceil_div(image_w, _pair(s)[1])) for s in strides]
    level_ratios = _ratios_per_level(ratios, len(strides))
    per_level = []
    for (feat_h, feat_w), sizes, level_ratio in zip(feature_sizes, sizes_per_level, level_ratios):
        stride = (image_h // feat_h, image_w // feat_w)
        per_level.append(anchors((feat_h, feat_w), stride, sizes, level_ratio))
    return tf.concat(per_level, axis=0)


def _ceil_div(size, stride):
    """ceil(size / stride) for ints or int tensors (-(-a // b) works on both)."""
    return -(-size // stride)


def num_anchors_per_location(sizes_per_level, ratios):
    """A per level: len(sizes) * len(ratios), in level order."""
    level_ratios = _ratios_per_level(ratios, len(sizes_per_level))
    return [len(sizes) * len(level_ratio) for sizes, level_ratio in zip(sizes_per_level, level_ratios)]
