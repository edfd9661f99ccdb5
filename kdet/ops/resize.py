"""Nearest-neighbour resampling by exact factors of 2, with twins that TFLite's XNNPACK delegate runs.

    upsample_nearest(x, size)   torch's F.interpolate(size=size, mode="nearest"): source index floor(i * in / out)
    upsample_nearest_2x(x)      the same for size = 2 * (h, w): CONCATENATION + DEPTH_TO_SPACE
    subsample_2x(x)             x[:, ::2, ::2] (a 1x1 stride-2 max-pool): PAD + SPACE_TO_DEPTH + SLICE

XNNPACK takes neither RESIZE_NEAREST_NEIGHBOR nor a 1x1 MAX_POOL_2D with stride 2 (its delegate's CheckPoolingParams
refuses a stride larger than the filter) nor a STRIDED_SLICE with stride 2 (benchmarks/profile_tflite.py delegation()):
each of them cut the FPN's TFLite graph into separate partitions with copies between them. The twins give the same
values exactly (they only move elements) and run in one partition; `upsample_nearest` chooses the twin while
`builtins_only()` is active and the shapes are static, the 2x ratio exact.
"""
import tensorflow as tf

from kdet.ops.mode import builtins_only_enabled


def upsample_nearest_2x(x):
    """x [B, h, w, C] -> [B, 2h, 2w, C], out[:, 2i + a, 2j + b] = x[:, i, j] for a, b in {0, 1}.

    DEPTH_TO_SPACE(2) puts channel block (a * 2 + b) of [B, h, w, 4C] at offset (a, b): four copies of x fill all four.
    """
    return tf.nn.depth_to_space(tf.concat([x, x, x, x], axis=-1), 2)


def subsample_2x(x):
    """x [B, H, W, C] (H, W, C static) -> x[:, ::2, ::2]: [B, ceil(H / 2), ceil(W / 2), C].

    Odd H or W are padded by one row / column (dropped again: only even offsets are kept); SPACE_TO_DEPTH(2) puts the
    element at offset (0, 0) of each 2x2 block in the first C channels.
    """
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    if height is None or width is None or channels is None:
        raise ValueError(f"subsample_2x needs static height, width and channels, got shape {x.shape}")
    if height % 2 or width % 2:
        x = tf.pad(x, [[0, 0], [0, height % 2], [0, width % 2], [0, 0]])
    return tf.nn.space_to_depth(x, 2)[..., :channels]


def upsample_nearest(x, size):
    """x [B, h, w, C] -> [B, size[0], size[1], C] with torch's "nearest" indexing (floor(i * h / H)).

    size: (H, W) Python ints or an int32 tensor [2]. ResizeNearestNeighbor(half_pixel_centers=False) is that rule
    (TF's default nearest resize uses half-pixel centres and picks other rows for odd sizes); under `builtins_only()`
    with static h, w and size exactly twice them, `upsample_nearest_2x` gives the same values with delegated ops.
    """
    static = isinstance(size, (tuple, list)) and all(isinstance(s, int) for s in size)
    if static and builtins_only_enabled() and x.shape[1] is not None and x.shape[2] is not None \
            and tuple(size) == (2 * x.shape[1], 2 * x.shape[2]):
        return upsample_nearest_2x(x)
    return tf.raw_ops.ResizeNearestNeighbor(images=x, size=size, align_corners=False, half_pixel_centers=False)
