"""Max pooling that remembers where each maximum was, and the max-unpooling that puts values back (SegNet).

Both paths use one argmax encoding, TensorFlow's `max_pool_with_argmax(include_batch_in_index=True)`: the flat
index ((b * H + y) * W + x) * C + c of the maximum in the input [B, H, W, C], int32. So the pooling of one path
can be unpooled by the other. The TF path is `tf.nn.max_pool_with_argmax` + scatter; with
`builtins_only_enabled()` (TFLite has no MaxPoolWithArgmax builtin) the twin uses space_to_depth / argmax /
one_hot / depth_to_space (notes snippet 4). Windows are pool_size x pool_size with stride pool_size, no padding
(rows / columns past the last full window are dropped, as padding="VALID").

Ties: the first maximum of the window in row-major order wins (top-left before top-right before bottom-left),
which is what the TF kernel does and what tf.argmax does on the space_to_depth slots; tests pin it.
"""
import tensorflow as tf

from kdet.ops.mode import builtins_only_enabled


def _static_or_dynamic_shape(x):
    dynamic = tf.shape(x)
    return [dim if dim is not None else dynamic[i] for i, dim in enumerate(x.shape)]


def _window_slots(x, pool_size):
    """[B, H, W, C] -> [B, H//k, W//k, k*k, C] window elements in row-major order (VALID crop first)."""
    batch, height, width, channels = _static_or_dynamic_shape(x)
    out_h, out_w = height // pool_size, width // pool_size
    x = x[:, :out_h * pool_size, :out_w * pool_size, :]
    return tf.reshape(tf.nn.space_to_depth(x, pool_size), [batch, out_h, out_w, pool_size * pool_size, channels])


def max_pool_with_argmax(x, pool_size=2):
    """Max pooling with the position of each maximum.

    Args:
        x: [B, H, W, C] float.
        pool_size: window side and stride.
    Returns:
        (values [B, H//k, W//k, C], argmax [B, H//k, W//k, C] int32 flat input index, see the module docstring).
    """
    x = tf.convert_to_tensor(x)
    if not builtins_only_enabled():
        values, argmax = tf.nn.max_pool_with_argmax(x, pool_size, pool_size, "VALID", output_dtype=tf.int32,
                                                    include_batch_in_index=True)
        return values, argmax
    batch, height, width, channels = _static_or_dynamic_shape(x)
    slots = _window_slots(x, pool_size)
    values = tf.reduce_max(slots, axis=3)
    slot = tf.argmax(slots, axis=3, output_type=tf.int32)  # first maximum on ties
    out_h, out_w = height // pool_size, width // pool_size
    b = tf.range(batch)[:, None, None, None]
    i = tf.range(out_h)[None, :, None, None]
    j = tf.range(out_w)[None, None, :, None]
    c = tf.range(channels)[None, None, None, :]
    y = i * pool_size + slot // pool_size
    x_pos = j * pool_size + slot % pool_size
    return values, ((b * height + y) * width + x_pos) * channels + c


def max_unpool(values, argmax, output_shape, pool_size=2):
    """Place each pooled value at its argmax position; every other position is 0.

    Args:
        values: [B, h, w, C] pooled values (or decoder features of that shape).
        argmax: [B, h, w, C] int flat indices from `max_pool_with_argmax`.
        output_shape: [B, H, W, C] of the tensor that was pooled (list or int tensor).
        pool_size: the window side used to pool (only the builtins twin needs it).
    Returns:
        [B, H, W, C] with values.dtype.
    """
    values = tf.convert_to_tensor(values)
    argmax = tf.cast(argmax, tf.int32)
    output_shape = tf.cast(tf.convert_to_tensor(output_shape), tf.int32)
    if not builtins_only_enabled():
        flat = tf.scatter_nd(tf.reshape(argmax, [-1, 1]), tf.reshape(values, [-1]), [tf.reduce_prod(output_shape)])
        return tf.reshape(flat, output_shape)
    # Twin: recover each maximum's slot in its window from the flat index, one_hot it, depth_to_space back.
    batch, out_h, out_w, channels = _static_or_dynamic_shape(values)
    height, width = output_shape[1], output_shape[2]
    y = (argmax // (width * channels)) % height
    x = (argmax // channels) % width
    slot = (y % pool_size) * pool_size + x % pool_size
    spread = tf.one_hot(slot, pool_size * pool_size, axis=3, dtype=values.dtype) * values[:, :, :, None, :]
    spread = tf.reshape(spread, [batch, out_h, out_w, pool_size * pool_size * channels])
    unpooled = tf.nn.depth_to_space(spread, pool_size)
    # Rows / columns that no full window covered stay 0, as in the scatter.
    return tf.pad(unpooled, [[0, 0], [0, height - out_h * pool_size], [0, width - out_w * pool_size], [0, 0]])
