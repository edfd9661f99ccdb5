"""Tensor layout helpers shared by the dense heads.

    flatten_locations(x, columns)   [B, H, W, A * columns] -> [B, H * W * A, columns] (columns None: [B, H * W * A])

TFLite's XNNPACK delegate takes a RESHAPE only when its target shape is a constant: `tf.shape(x)[0]` in the target
shape becomes SHAPE + STRIDED_SLICE + PACK in an export with a dynamic batch, none of them delegated, and cuts the
graph at every head output. With static H, W and channels the target shape here is a constant with batch -1.
"""
import tensorflow as tf


def flatten_locations(x, columns=None):
    """x [B, H, W, A * columns] -> [B, H * W * A, columns], row-major (location, anchor, column) order; columns None:
    x [B, H, W, A] -> [B, H * W * A].

    The target shape is a constant (batch -1) when H, W and the channels are static, else read from tf.shape(x).
    """
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    tail = [] if columns is None else [columns]
    if height is None or width is None or channels is None:
        return tf.reshape(x, [tf.shape(x)[0], -1, *tail])
    if columns is not None and channels % columns:
        raise ValueError(f"flatten_locations: {channels} channels are not a multiple of columns={columns}")
    return tf.reshape(x, [-1, height * width * channels // (columns or 1), *tail])
