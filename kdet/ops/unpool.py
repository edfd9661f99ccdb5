"""Max pooling that remembers where each maximum was, and the max-unpooling that puts values back (SegNet).

Both paths use one argmax encoding, TensorFlow's `max_pool_with_argmax(include_batch_in_index=True)`: the flat
index ((b * H + y) * W + x) * C + c of the maximum in the input [B, H, W, C], int32. So the pooling of one path
can be unpooled by the other. The TF path is `tf.nn.max_pool_with_argmax` + scatter; with
`builtins_only_enabled()` (TFLite has no MaxPoolWithArgmax builtin) the twins use neither scatter, gather, ARG_MAX
nor integer division (with TFLite's int32 FLOOR_DIV / FLOOR_MOD, ARG_MAX and strided slices the earlier pooling
twin took 2-6x the TF op's time at SegNet's shapes, benchmarks/bench_unpool.py): pooling is MAX_POOL_2D plus one equality select per
window slot (space_to_depth split), unpooling one equality mask per slot and depth_to_space. Windows are
pool_size x pool_size with stride pool_size, no padding (rows / columns past the last full window are dropped, as
padding="VALID").

Ties: the first maximum of the window in row-major order wins (top-left before top-right before bottom-left),
which is what the TF kernel does and what the twin's last-to-first selects give; tests pin it.
"""
import tensorflow as tf

from kdet.ops.mode import builtins_only_enabled


def _static_or_dynamic_shape(x):
    dynamic = tf.shape(x)
    return [dim if dim is not None else dynamic[i] for i, dim in enumerate(x.shape)]


def _window_slots(x, pool_size):
    """[B, H, W, C] -> k * k tensors [B, H//k, W//k, C]: the windows' elements at slot (dy, dx), row-major order.
    space_to_depth + split on its channel axis (a [B, h, w, k*k, C] view sliced per slot was three times slower in
    TFLite); the VALID crop only when the size is not known to be a multiple of k."""
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None or height % pool_size or width % pool_size:
        out_h, out_w = tf.shape(x)[1] // pool_size, tf.shape(x)[2] // pool_size
        x = x[:, :out_h * pool_size, :out_w * pool_size, :]
    return tf.split(tf.nn.space_to_depth(x, pool_size), pool_size * pool_size, axis=3)


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
    return _max_pool_with_argmax_twin(x, pool_size)


def _max_pool_with_argmax_twin(x, pool_size):
    """Builtins-only max_pool_with_argmax without ARG_MAX or integer division: MAX_POOL_2D gives the values; each
    window slot, last to first, that equals its window's maximum selects its index within the window (so the
    first maximum in row-major order is kept); the window's origin is added last."""
    batch, height, width, channels = _static_or_dynamic_shape(x)
    values = tf.nn.max_pool2d(x, pool_size, pool_size, "VALID")
    slots = _window_slots(x, pool_size)
    within = _slot_indices(width, channels, pool_size)
    argmax = within[-1]  # no earlier slot holds the maximum: the last one does
    for slot, index in zip(slots[-2::-1], within[-2::-1]):
        argmax = tf.where(tf.equal(slot, values), index, argmax)
    return values, argmax + _window_origins(batch, height // pool_size, width // pool_size, height, width, channels,
                                            pool_size)


def _slot_indices(width, channels, pool_size):
    """k * k of [C]: flat index (dy * W + dx) * C + c of window slot (dy, dx), row-major, relative to the window's
    top-left element."""
    return [(dy * width + dx) * channels + tf.range(channels) for dy in range(pool_size) for dx in range(pool_size)]


def _window_origins(batch, out_h, out_w, height, width, channels, pool_size):
    """[B, h, w, 1]: flat index ((b * H + i * k) * W + j * k) * C of each window's top-left element (channel 0)."""
    origins = tf.reshape(tf.range(batch) * (height * width * channels), [-1, 1, 1, 1])
    origins = origins + tf.reshape(tf.range(out_h) * (pool_size * width * channels), [1, -1, 1, 1])
    return origins + tf.reshape(tf.range(out_w) * (pool_size * channels), [1, 1, -1, 1])


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
    return _max_unpool_twin(values, argmax, output_shape, pool_size)


def _max_unpool_twin(values, argmax, output_shape, pool_size):
    """Builtins-only max_unpool, scatter- and division-free: each value goes to the window slot (dy, dx) whose
    index its argmax is (one equality mask and select per slot), the k * k slots are stacked on the channel axis
    in row-major order and depth_to_space puts them back into k x k blocks."""
    batch, out_h, out_w, channels = _static_or_dynamic_shape(values)
    height, width = output_shape[1], output_shape[2]
    within = argmax - _window_origins(batch, out_h, out_w, height, width, channels, pool_size)
    zero = tf.zeros([], values.dtype)
    slots = [tf.where(tf.equal(within, index), values, zero) for index in _slot_indices(width, channels, pool_size)]
    unpooled = tf.nn.depth_to_space(tf.concat(slots, axis=3), pool_size)
    # Rows / columns that no full window covered stay 0, as in the scatter.
    return tf.pad(unpooled, [[0, 0], [0, height - out_h * pool_size], [0, width - out_w * pool_size], [0, 0]])
