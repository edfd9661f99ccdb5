"""Deformable convolution (DCNv1 / DCNv2) with torchvision.ops.deform_conv2d semantics, on NHWC tensors.

torchvision's kernel (csrc/ops/cpu/deform_conv2d_kernel.cpp), for output cell (oy, ox), kernel tap (i, j),
k = i * kw + j, and input channel c of offset group g = c // (Cin / offset_groups):
  * it samples the input at y = oy * stride_h - pad_h + i * dilation_h + offset[g, k, 0] and
    x = ox * stride_w - pad_w + j * dilation_w + offset[g, k, 1] (offset channel (g * kh * kw + k) * 2 + {0: y, 1: x});
  * bilinearly, where a corner outside the map reads 0, and a sample at y <= -1, y >= H (or the same for x) is 0;
  * times mask[g, k] (channel g * kh * kw + k) when a mask is given (DCNv2 modulation);
  * and the columns [Ho * Wo, kh * kw * Cin] then meet the weight in one matmul (per weight group).

Here the input is padded by one zero row / column on each side and the sample clamped into [-1, H] x [-1, W]:
every corner then lies in the padded map and the zero border gives exactly the rules above (a clamped sample
reads only zeros), with no validity masks. The mask is folded into the four bilinear weights (small tensors) so the
big [B, Ho, Wo, kh * kw, Cin] columns are formed once from four gathers. Everything is PAD, GATHER, FLOOR,
MINIMUM, MAXIMUM, CAST, arithmetic and FULLY_CONNECTED / BATCH_MATMUL, i.e. TFLite builtins, so this one
formulation serves both TensorFlow and `builtins_only()` traces, and tf2onnx maps it to ONNX Gather / MatMul.

Under XLA (`model.compile(jit_compile=True)`, or a tf.function with jit_compile=True around the model) the four
gathers and the bilinear sum fuse into one loop, which measured faster on CPU (benchmarks/bench_deform_conv.py).
The op does not force XLA itself: tf2onnx cannot convert an XLA-compiled function call inside the graph.
"""
import tensorflow as tf

from kdet.errors import ConfigError
from kdet.ops.images import image_hw


def _pair(value, name):
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"deform_conv2d: {name} must be an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _output_size(size, pad, dilation, kernel, stride):
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def _clamp_int(values, high):
    """int32 values clamped to [0, high] with selects."""
    values = tf.where(values < 0, tf.zeros_like(values), values)
    return tf.where(values > high, tf.fill(tf.shape(values), tf.cast(high, values.dtype)), values)


def _sample_columns(inputs, ys, xs, weights_of, offset_groups):
    """Bilinear samples with zeros outside the map, torchvision's rule.

    inputs: [B, H, W, C]; ys, xs: [B, Ho, Wo, K, G] sample positions in input cells (any real value);
    weights_of: callable (w00, w01, w10, w11) -> the same four [B, Ho, Wo, K, G] weights, scaled (the mask).
    Returns [B, Ho, Wo, K, C] with channel c read at the position of its offset group c // (C / G).
    """
    height, width = image_hw(inputs)
    channels = inputs.shape[-1]
    padded = tf.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])  # zeros: the corners outside the map
    padded_w = width + 2
    plane = (height + 2) * padded_w
    ys = tf.clip_by_value(ys, -1.0, tf.cast(height, ys.dtype))  # beyond -1 / H: reads only zeros, as torchvision
    xs = tf.clip_by_value(xs, -1.0, tf.cast(width, xs.dtype))
    y_low, x_low = tf.floor(ys), tf.floor(xs)
    ly, lx = ys - y_low, xs - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    w00, w01, w10, w11 = weights_of(hy * hx, hy * lx, ly * hx, ly * lx)
    # rows / cols in the padded map; at y == H the high corner would be H + 2, outside: clamp it (weight is 0)
    # Clamped again as integers: in an int8 TFLite model the float clip above is approximate, and a gather index
    # one past the padded map would fail at run time. Selects, not min / max: the converter would fuse an integer
    # clip to [0, 6] into RELU6, which TFLite has no int32 kernel for.
    row_low = _clamp_int(tf.cast(y_low, tf.int32) + 1, height + 1)
    col_low = _clamp_int(tf.cast(x_low, tf.int32) + 1, width + 1)
    row_high = tf.minimum(row_low + 1, height + 1)
    col_high = tf.minimum(col_low + 1, width + 1)
    batch = tf.shape(inputs)[0]
    base = tf.reshape(tf.range(batch) * plane, [-1, 1, 1, 1, 1]) * offset_groups
    group = tf.range(offset_groups)
    flat = tf.reshape(padded, [-1, channels // offset_groups])  # [B * Hp * Wp * G, C / G]

    taps = ys.shape[3]
    # Gathers and products on [N = B * Ho * Wo, K, G, ...]: no tensor above 5-D, which TFLite's int8 kernels
    # (and its calibrator) need.
    def read(rows, cols):
        index = base + (rows * padded_w + cols) * offset_groups + group  # [B, Ho, Wo, K, G]
        return tf.gather(flat, tf.reshape(index, [-1, taps, offset_groups]))  # [N, K, G, C/G]

    def flat_weight(weight):
        return tf.reshape(weight, [-1, taps, offset_groups, 1])

    values = (read(row_low, col_low) * flat_weight(w00) + read(row_low, col_high) * flat_weight(w01)
              + read(row_high, col_low) * flat_weight(w10) + read(row_high, col_high) * flat_weight(w11))
    shape = tf.shape(ys)
    return tf.reshape(values, tf.concat([shape[:4], [channels]], axis=0))


def _matmul_columns(columns, weight, groups):
    """columns [B, Ho, Wo, K, Cin] x weight [kh, kw, Cin / groups, Cout] -> [B, Ho, Wo, Cout]."""
    kernel_h, kernel_w, group_in, out_channels = weight.shape
    taps = kernel_h * kernel_w
    shape = tf.shape(columns)
    if groups == 1:
        flat = tf.reshape(columns, [-1, taps * group_in])
        out = tf.matmul(flat, tf.reshape(weight, [taps * group_in, out_channels]))
    else:
        group_out = out_channels // groups
        flat = tf.transpose(tf.reshape(columns, [-1, taps, groups, group_in]), [2, 0, 1, 3])
        flat = tf.reshape(flat, [groups, -1, taps * group_in])  # [groups, N, K * Cin_g]
        kernel = tf.reshape(weight, [taps, group_in, groups, group_out])
        kernel = tf.reshape(tf.transpose(kernel, [2, 0, 1, 3]), [groups, taps * group_in, group_out])
        out = tf.transpose(tf.matmul(flat, kernel), [1, 0, 2])  # [N, groups, Cout_g]
    return tf.reshape(out, tf.concat([shape[:3], [out_channels]], axis=0))


def deform_conv2d(inputs, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """torchvision.ops.deform_conv2d on NHWC tensors.

    Args:
        inputs: [B, H, W, Cin] float.
        offset: [B, Ho, Wo, 2 * G * kh * kw], G = offset_groups (dividing Cin); channel (g * kh * kw + k) * 2 is the
            y offset and + 1 the x offset of kernel tap k = i * kw + j, in input cells (torchvision's order).
        weight: [kh, kw, Cin / groups, Cout] (Keras Conv2D layout); groups = Cin / weight.shape[2].
        bias: [Cout] or None.
        stride, padding, dilation: int or (h, w); padding is zeros on each side, as torch's Conv2d.
        mask: None (DCNv1) or [B, Ho, Wo, G * kh * kw], channel g * kh * kw + k scales tap k of group g (DCNv2).
    Returns:
        [B, Ho, Wo, Cout], Ho = (H + 2 * pad_h - dilation_h * (kh - 1) - 1) // stride_h + 1 (same for Wo).
    """
    inputs = tf.convert_to_tensor(inputs)
    dtype = inputs.dtype
    offset = tf.cast(offset, dtype)
    weight = tf.cast(weight, dtype)
    stride_h, stride_w = _pair(stride, "stride")
    pad_h, pad_w = _pair(padding, "padding")
    dil_h, dil_w = _pair(dilation, "dilation")
    if inputs.shape.rank != 4 or weight.shape.rank != 4:
        raise ConfigError(f"deform_conv2d: inputs must be [B, H, W, C] and weight [kh, kw, Cin/groups, Cout], got "
                          f"{inputs.shape} and {weight.shape}")
    if offset.shape.rank != 4 or (mask is not None and tf.convert_to_tensor(mask).shape.rank != 4):
        raise ConfigError(f"deform_conv2d: offset (and mask) must be [B, Ho, Wo, channels], got {offset.shape}")
    kernel_h, kernel_w, group_in, out_channels = weight.shape
    channels = inputs.shape[-1]
    taps = kernel_h * kernel_w
    if channels is None or channels % group_in or out_channels % (channels // group_in):
        raise ConfigError(f"deform_conv2d: weight {weight.shape} does not fit {channels} input channels in groups")
    groups = channels // group_in
    if offset.shape[-1] is None or offset.shape[-1] % (2 * taps):
        raise ConfigError(f"deform_conv2d: offset has {offset.shape[-1]} channels, not a multiple of 2 * {taps}")
    offset_groups = offset.shape[-1] // (2 * taps)
    if channels % offset_groups:
        raise ConfigError(f"deform_conv2d: {channels} input channels do not split into {offset_groups} offset groups")
    if mask is not None:
        mask = tf.cast(mask, dtype)
        if mask.shape[-1] != offset_groups * taps:
            raise ConfigError(f"deform_conv2d: mask has {mask.shape[-1]} channels, expected {offset_groups * taps}")

    height, width = image_hw(inputs)
    out_h = _output_size(height, pad_h, dil_h, kernel_h, stride_h)
    out_w = _output_size(width, pad_w, dil_w, kernel_w, stride_w)
    for name, tensor in (("offset", offset), ("mask", mask)):
        static = () if tensor is None else (tensor.shape[0], tensor.shape[1], tensor.shape[2])
        for got, want in zip(static, (inputs.shape[0], out_h, out_w)):
            if isinstance(want, int) and got is not None and got != want:
                raise ConfigError(f"deform_conv2d: {name} is {tensor.shape}, expected [{inputs.shape[0]}, {out_h}, "
                                  f"{out_w}, ...] for inputs {inputs.shape} (batch, output height, output width)")
    batch = tf.shape(inputs)[0]  # not -1: an offset of the wrong size must fail, not become another batch size
    # [B, Ho, Wo, K, G]: the y and x offsets per kernel tap, then per group (the order of the columns' channels);
    # split before the reshape so that no tensor is above 5-D (TFLite int8)
    def per_tap(channels_of_group):  # [B, Ho, Wo, G * K] -> [B, Ho, Wo, K, G]
        return tf.transpose(tf.reshape(channels_of_group, [batch, out_h, out_w, offset_groups, taps]),
                            [0, 1, 2, 4, 3])

    offset_y, offset_x = per_tap(offset[..., 0::2]), per_tap(offset[..., 1::2])
    tap_y = tf.repeat(tf.range(kernel_h) * dil_h, kernel_w)  # [K]
    tap_x = tf.tile(tf.range(kernel_w) * dil_w, [kernel_h])
    grid_y = tf.range(out_h) * stride_h - pad_h  # [Ho]
    grid_x = tf.range(out_w) * stride_w - pad_w
    ys = tf.cast(grid_y[:, None, None, None] + tap_y[None, None, :, None], dtype) + offset_y
    xs = tf.cast(grid_x[None, :, None, None] + tap_x[None, None, :, None], dtype) + offset_x

    if mask is None:
        weights_of = lambda *corner_weights: corner_weights
    else:
        scale = per_tap(mask)
        weights_of = lambda *corner_weights: [w * scale for w in corner_weights]
    columns = _sample_columns(inputs, ys, xs, weights_of, offset_groups)
    out = _matmul_columns(columns, weight, groups)
    if bias is not None:
        out = out + tf.cast(bias, dtype)
    return out
