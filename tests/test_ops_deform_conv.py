"""kdet.ops.deform_conv2d against a plain numpy loop of torchvision's kernel, against torchvision itself
(tests/fixtures/deform_conv_torchvision.npz), and the DeformConv2D layer: a plain conv at zero init, gradients,
a save / load round trip, TFLite builtins-only conversion and ONNX.

deform_conv2d has one formulation (gathers + arithmetic + matmul, all TFLite builtins), so `builtins_only()` does
not change it; the LiteRT test below is what shows it really is builtins only."""
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.layers import DeformConv2D
from kdet.ops import deform_conv2d

FIXTURE = Path(__file__).parent / "fixtures" / "deform_conv_torchvision.npz"


def bilinear_zero_outside(plane, y, x):
    """torchvision's deform_conv2d bilinear_interpolate: corners outside the map read 0; at or beyond -1 / H: 0."""
    height, width = plane.shape
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return 0.0
    y_low, x_low = int(np.floor(y)), int(np.floor(x))
    ly, lx = y - y_low, x - x_low
    total = 0.0
    for row, wy in ((y_low, 1 - ly), (y_low + 1, ly)):
        for col, wx in ((x_low, 1 - lx), (x_low + 1, lx)):
            if 0 <= row < height and 0 <= col < width:
                total += wy * wx * plane[row, col]
    return total


def reference_deform_conv(x, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """Loops over every output cell, kernel tap and channel; x [B, H, W, C], weight [kh, kw, C / groups, Cout]."""
    x, offset, weight = (np.asarray(a, np.float64) for a in (x, offset, weight))
    batch, height, width, channels = x.shape
    kernel_h, kernel_w, group_in, out_channels = weight.shape
    groups, taps = channels // group_in, kernel_h * kernel_w
    offset_groups = offset.shape[-1] // (2 * taps)
    out_h = (height + 2 * padding[0] - dilation[0] * (kernel_h - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel_w - 1) - 1) // stride[1] + 1
    columns = np.zeros((batch, out_h, out_w, kernel_h, kernel_w, channels))
    for b in range(batch):
        for oy in range(out_h):
            for ox in range(out_w):
                for i in range(kernel_h):
                    for j in range(kernel_w):
                        k = i * kernel_w + j
                        for c in range(channels):
                            g = c // (channels // offset_groups)
                            dy, dx = offset[b, oy, ox, (g * taps + k) * 2], offset[b, oy, ox, (g * taps + k) * 2 + 1]
                            y = oy * stride[0] - padding[0] + i * dilation[0] + dy
                            xx = ox * stride[1] - padding[1] + j * dilation[1] + dx
                            value = bilinear_zero_outside(x[b, :, :, c], y, xx)
                            if mask is not None:
                                value *= mask[b, oy, ox, g * taps + k]
                            columns[b, oy, ox, i, j, c] = value
    out = np.zeros((batch, out_h, out_w, out_channels))
    group_out = out_channels // groups
    for gi in range(groups):
        cols = columns[..., gi * group_in:(gi + 1) * group_in]
        out[..., gi * group_out:(gi + 1) * group_out] = np.einsum(
            "bhwijc,ijco->bhwo", cols, weight[..., gi * group_out:(gi + 1) * group_out])
    if bias is not None:
        out += bias
    return out


CASES = {  # name: (x shape, kernel, groups, offset_groups, stride, padding, dilation, with mask, offset scale)
    "plain": ((2, 7, 6, 4), (3, 3), 1, 1, 1, 1, 1, False, 1.5),
    "mask": ((2, 7, 6, 4), (3, 3), 1, 1, 1, 1, 1, True, 1.5),
    "offset_groups": ((1, 6, 7, 6), (3, 3), 1, 3, 1, 1, 1, True, 2.0),
    "groups": ((1, 6, 5, 4), (3, 3), 2, 2, 1, 1, 1, True, 1.0),
    "stride2": ((2, 9, 8, 3), (3, 3), 1, 1, 2, 1, 1, True, 1.5),
    "dilation2": ((1, 9, 9, 2), (3, 3), 1, 1, 1, 2, 2, True, 1.5),
    "no_padding_rect": ((1, 8, 7, 2), (2, 3), 1, 2, (1, 2), (0, 1), (2, 1), False, 1.0),
    "outside": ((1, 5, 6, 2), (3, 3), 1, 1, 1, 1, 1, True, 6.0),  # most samples land beyond the border
}


def make_case(name, seed=0):
    shape, kernel, groups, offset_groups, stride, padding, dilation, with_mask, scale = CASES[name]
    pair = lambda v: (v, v) if isinstance(v, int) else v
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    rng = np.random.default_rng(seed)
    batch, height, width, channels = shape
    out_h = (height + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    taps = kernel[0] * kernel[1]
    args = {
        "inputs": rng.normal(0, 1, shape).astype(np.float32),
        "offset": rng.normal(0, scale, (batch, out_h, out_w, 2 * offset_groups * taps)).astype(np.float32),
        "weight": rng.normal(0, 1, (*kernel, channels // groups, 3 * groups)).astype(np.float32),
        "bias": rng.normal(0, 1, 3 * groups).astype(np.float32),
        "mask": rng.uniform(0, 1, (batch, out_h, out_w, offset_groups * taps)).astype(np.float32) if with_mask
        else None,
    }
    return args, {"stride": stride, "padding": padding, "dilation": dilation}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_numpy_reference(name):
    args, conv = make_case(name)
    expected = reference_deform_conv(args["inputs"], args["offset"], args["weight"], args["bias"], mask=args["mask"],
                                     **conv)
    result = deform_conv2d(**args, **conv).numpy()
    np.testing.assert_allclose(result, expected, atol=2e-5, rtol=1e-5)


def test_outside_case_reaches_beyond_the_map():
    """The "outside" case must exercise the zero rule: many samples beyond -1 / H, some within one cell."""
    args, _ = make_case("outside")
    rows = np.arange(5)[None, :, None, None] - 1 + np.repeat(np.arange(3), 3)[None, None, None, :]
    ys = rows + args["offset"][..., 0::2]
    assert (ys <= -1).mean() > 0.2 and (ys >= 5).mean() > 0.2 and ((ys > -1) & (ys < 0)).any()


def test_samples_on_and_around_the_border():
    """Integer positions, the last row / column, within one cell outside (in-range corners only), at and beyond
    -1 / H (zero): one 1x1 tap of weight 1 reads the sample itself."""
    x = np.arange(1, 13, dtype=np.float32).reshape(1, 3, 4, 1)
    weight = np.ones((1, 1, 1, 1), np.float32)
    points = [(0.0, 0.0), (2.0, 3.0), (-0.5, 1.0), (2.5, 1.0), (1.0, 3.25), (-1.0, 0.0), (3.0, 1.0), (1.0, -1.0),
              (-0.999, -0.999), (2.999, 3.999), (1.3, 2.6), (-7.0, 2.0)]
    for py, px in points:
        offset = np.tile(np.array([py, px], np.float32), [1, 3, 4, 1])  # every output cell, read at cell (0, 0)
        out = deform_conv2d(x, offset, weight)[0, 0, 0, 0].numpy()
        expected = bilinear_zero_outside(x[0, :, :, 0].astype(np.float64), py, px)
        assert out == pytest.approx(expected, abs=1e-5), (py, px)


@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_zero_offsets_and_unit_mask_are_a_plain_conv(stride, dilation):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (2, 10, 9, 5)).astype(np.float32)
    weight = rng.normal(0, 1, (3, 3, 5, 7)).astype(np.float32)
    pad = dilation
    out_h, out_w = (10 + 2 * pad - 2 * dilation - 1) // stride + 1, (9 + 2 * pad - 2 * dilation - 1) // stride + 1
    offset = np.zeros((2, out_h, out_w, 18), np.float32)
    mask = np.ones((2, out_h, out_w, 9), np.float32)
    padded = np.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    expected = tf.nn.conv2d(padded, weight, stride, "VALID", dilations=dilation).numpy()
    for with_mask in (None, mask):
        result = deform_conv2d(x, offset, weight, stride=stride, padding=pad, dilation=dilation, mask=with_mask)
        np.testing.assert_allclose(result.numpy(), expected, atol=1e-5)


def test_integer_offsets_shift_the_conv():
    """An offset of (+1, -2) on every tap is the plain conv of the input shifted by one row and two columns."""
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (1, 8, 8, 2)).astype(np.float32)
    weight = rng.normal(0, 1, (3, 3, 2, 3)).astype(np.float32)
    offset = np.tile(np.array([1.0, -2.0], np.float32), [1, 8, 8, 9])
    # tap (i, j) of output (oy, ox) reads x[oy + i, ox + j - 3] = padded[oy + i + 3, ox + j], zeros outside
    padded = np.pad(x, [[0, 0], [3, 3], [3, 3], [0, 0]])
    expected = tf.nn.conv2d(padded[:, 3:13, 0:10], weight, 1, "VALID").numpy()
    np.testing.assert_allclose(deform_conv2d(x, offset, weight, padding=1).numpy(), expected, atol=1e-5)


def test_matches_torchvision_fixture():
    with np.load(FIXTURE) as data:
        data = dict(data)
    nhwc = lambda a: np.transpose(a, [0, 2, 3, 1])
    for case in range(int(data["count"])):
        stride, padding, dilation = (tuple(int(v) for v in data[f"case{case}_{key}"])
                                     for key in ("stride", "padding", "dilation"))
        mask = data.get(f"case{case}_mask")
        result = deform_conv2d(nhwc(data[f"case{case}_input"]), nhwc(data[f"case{case}_offset"]),
                               np.transpose(data[f"case{case}_weight"], [2, 3, 1, 0]), data[f"case{case}_bias"],
                               stride, padding, dilation, None if mask is None else nhwc(mask))
        np.testing.assert_allclose(result.numpy(), nhwc(data[f"case{case}_out"]), atol=1e-4, err_msg=f"case {case}")


def test_unknown_batch_and_spatial_sizes():
    rng = np.random.default_rng(5)
    weight = tf.constant(rng.normal(0, 1, (3, 3, 4, 2)).astype(np.float32))
    fn = tf.function(lambda x, o, m: deform_conv2d(x, o, weight, padding=1, stride=2, mask=m),
                     input_signature=[tf.TensorSpec([None, None, None, 4]), tf.TensorSpec([None, None, None, 18]),
                                      tf.TensorSpec([None, None, None, 9])])
    for height, width in ((9, 7), (6, 10)):
        x = rng.normal(0, 1, (1, height, width, 4)).astype(np.float32)
        out_h, out_w = (height - 1) // 2 + 1, (width - 1) // 2 + 1
        offset = rng.normal(0, 1, (1, out_h, out_w, 18)).astype(np.float32)
        mask = rng.uniform(0, 1, (1, out_h, out_w, 9)).astype(np.float32)
        expected = reference_deform_conv(x, offset, weight.numpy(), stride=(2, 2), padding=(1, 1), mask=mask)
        np.testing.assert_allclose(fn(x, offset, mask).numpy(), expected, atol=2e-5)


def test_bad_shapes_name_the_problem():
    from kdet.errors import ConfigError
    x = np.zeros((1, 5, 5, 4), np.float32)
    with pytest.raises(ConfigError, match="offset"):
        deform_conv2d(x, np.zeros((1, 5, 5, 17), np.float32), np.zeros((3, 3, 4, 2), np.float32), padding=1)
    with pytest.raises(ConfigError, match="mask"):
        deform_conv2d(x, np.zeros((1, 5, 5, 18), np.float32), np.zeros((3, 3, 4, 2), np.float32), padding=1,
                      mask=np.zeros((1, 5, 5, 8), np.float32))
    with pytest.raises(ConfigError, match="offset is"):  # Ho, Wo = 3, 3 with stride 2
        deform_conv2d(x, np.zeros((1, 5, 5, 18), np.float32), np.zeros((3, 3, 4, 2), np.float32), 2, 1)
    with pytest.raises(ConfigError, match="groups"):
        deform_conv2d(x, np.zeros((1, 5, 5, 18), np.float32), np.zeros((3, 3, 3, 2), np.float32), padding=1)


def test_fresh_layer_is_half_a_plain_conv_and_dcnv1_a_plain_conv():
    """Zero-initialised offset / mask conv: offsets 0, mask sigmoid(0) = 0.5 (DCNv2 reference); DCNv1: no mask."""
    rng = np.random.default_rng(6)
    x = rng.normal(0, 1, (2, 9, 8, 4)).astype(np.float32)
    for strides, dilation in ((1, 1), (2, 1), (1, 2)):
        layer = DeformConv2D(6, 3, strides=strides, dilation_rate=dilation, bias_initializer="ones")
        out = layer(x).numpy()
        padded = np.pad(x, [[0, 0], [dilation, dilation], [dilation, dilation], [0, 0]])
        conv = tf.nn.conv2d(padded, layer.kernel, strides, "VALID", dilations=dilation).numpy()
        np.testing.assert_allclose(out, 0.5 * conv + 1.0, atol=1e-5)
        assert out.shape == (2, -(-9 // strides), -(-8 // strides), 6) == layer.compute_output_shape(x.shape)
    dcn_v1 = DeformConv2D(6, 3, modulated=False, use_bias=False)
    np.testing.assert_allclose(dcn_v1(x).numpy(), tf.nn.conv2d(x, dcn_v1.kernel, 1, "SAME").numpy(), atol=1e-5)


def test_layer_uses_its_predicted_offsets_and_mask():
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (1, 7, 6, 4)).astype(np.float32)
    layer = DeformConv2D(4, 3, strides=2, groups=2, offset_groups=2)
    layer.build(x.shape)
    layer.offset_kernel.assign(rng.normal(0, 0.5, layer.offset_kernel.shape))
    layer.offset_bias.assign(rng.normal(0, 0.5, layer.offset_bias.shape))
    offset, mask = (t.numpy() for t in layer.offsets_and_mask(x))
    assert offset.shape == (1, 4, 3, 36) and mask.shape == (1, 4, 3, 18) and 0 < mask.min() and mask.max() < 1
    expected = reference_deform_conv(x, offset, layer.kernel.numpy(), layer.bias.numpy(), (2, 2), (1, 1),
                                     mask=mask)
    np.testing.assert_allclose(layer(x).numpy(), expected, atol=2e-5)


def test_layer_in_a_model_of_any_input_size():
    rng = np.random.default_rng(12)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, DeformConv2D(2, 3, strides=2, name="dcn")(inputs))
    layer = model.get_layer("dcn")
    layer.offset_kernel.assign(rng.normal(0, 0.3, layer.offset_kernel.shape))
    for height, width in ((9, 12), (16, 7)):
        x = rng.normal(0, 1, (1, height, width, 3)).astype(np.float32)
        offset, mask = (t.numpy() for t in layer.offsets_and_mask(x))
        expected = reference_deform_conv(x, offset, layer.kernel.numpy(), layer.bias.numpy(), (2, 2), (1, 1),
                                         mask=mask)
        np.testing.assert_allclose(model.predict_on_batch(x), expected, atol=2e-5)


def test_fit_step_has_gradients_for_input_kernel_and_offsets(tmp_path):
    rng = np.random.default_rng(8)
    inputs = keras.Input((10, 10, 4))
    outputs = DeformConv2D(5, 3, name="dcn")(inputs)
    model = keras.Model(inputs, outputs)
    layer = model.get_layer("dcn")
    layer.offset_kernel.assign(rng.normal(0, 0.3, layer.offset_kernel.shape))  # off the zero saddle
    x = tf.constant(rng.normal(0, 1, (2, 10, 10, 4)).astype(np.float32))
    target = rng.normal(0, 1, (2, 10, 10, 5)).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_mean((model(x) - target) ** 2)
    grads = tape.gradient(loss, [x, layer.kernel, layer.offset_kernel, layer.offset_bias, layer.bias])
    for grad in grads:
        assert grad is not None and np.isfinite(grad.numpy()).all() and np.abs(grad.numpy()).max() > 1e-6
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    before = layer.offset_bias.numpy().copy()
    history = model.fit(x, target, epochs=3, verbose=0).history["loss"]
    assert history[-1] < history[0] and np.abs(layer.offset_bias.numpy() - before).max() > 0
    path = tmp_path / "dcn.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored(x).numpy(), model(x).numpy(), atol=1e-6)
    assert restored.get_layer("dcn").get_config() == layer.get_config()


def test_layer_converts_to_tflite_builtins_and_agrees():
    """As kdet.export does: a Keras ExportArchive traced under builtins_only(), then TFLITE_BUILTINS only."""
    from ai_edge_litert.interpreter import Interpreter
    from kdet.export.tflite import function_flatbuffer
    rng = np.random.default_rng(9)
    inputs = keras.Input((12, 11, 6), batch_size=1)
    model = keras.Model(inputs, DeformConv2D(4, 3, strides=2, offset_groups=2, name="dcn")(inputs))
    layer = model.get_layer("dcn")
    layer.offset_kernel.assign(rng.normal(0, 0.5, layer.offset_kernel.shape))
    flatbuffer = function_flatbuffer(lambda x: {"y": model(x)}, [tf.TensorSpec((1, 12, 11, 6), tf.float32, name="x")],
                                     model)  # TFLITE_BUILTINS only: fails loudly on any non-builtin op
    interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "GATHER" in ops and "CUSTOM" not in ops and "FLEX" not in " ".join(ops)
    x = rng.normal(0, 2, (1, 12, 11, 6)).astype(np.float32)
    np.testing.assert_allclose(interpreter.get_signature_runner()(x=x)["y"], model(x).numpy(), atol=1e-4)


def test_op_converts_to_onnx_with_dynamic_batch_and_agrees():
    """kdet's ONNX export keeps the TF ops (no builtins twins): the same graph must map to ONNX Gather / MatMul."""
    import onnxruntime
    import tf2onnx

    from kdet.export.onnx import _patch_tf2onnx_for_numpy2

    _patch_tf2onnx_for_numpy2()
    rng = np.random.default_rng(10)
    weight = tf.Variable(rng.normal(0, 1, (3, 3, 2, 4)).astype(np.float32))  # frozen into the graph, as a model's
    spec = [tf.TensorSpec((None, 9, 8, 4), name="x"), tf.TensorSpec((None, 5, 4, 36), name="offset"),
            tf.TensorSpec((None, 5, 4, 18), name="mask")]
    function = tf.function(lambda x, offset, mask: {"y": deform_conv2d(x, offset, weight, None, 2, 1, 1, mask)},
                           input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=17)
    session = onnxruntime.InferenceSession(proto.SerializeToString())
    feed = {"x": rng.normal(0, 1, (2, 9, 8, 4)).astype(np.float32),
            "offset": rng.normal(0, 2, (2, 5, 4, 36)).astype(np.float32),
            "mask": rng.uniform(0, 1, (2, 5, 4, 18)).astype(np.float32)}
    expected = reference_deform_conv(feed["x"], feed["offset"], weight.numpy(), stride=(2, 2), padding=(1, 1),
                                     mask=feed["mask"])
    np.testing.assert_allclose(session.run(None, feed)[0], expected, atol=2e-5)


def test_gradients_match_finite_differences():
    """Input, offset, mask and weight gradients (float64) against central differences, samples off the integer grid
    (where bilinear interpolation has kinks), some in the one-cell border band."""
    rng = np.random.default_rng(11)
    x = tf.constant(rng.normal(0, 1, (1, 3, 4, 2)))
    offset = rng.uniform(-1.6, 1.6, (1, 2, 3, 8))
    offset = tf.constant(np.where(np.abs(offset - np.round(offset)) < 0.05, offset + 0.1, offset))
    mask = tf.constant(rng.uniform(0, 1, (1, 2, 3, 4)))
    weight = tf.constant(rng.normal(0, 1, (2, 2, 2, 2)))
    function = tf.function(lambda a, o, m, w: deform_conv2d(a, o, w, padding=(1, 0), stride=(2, 1), mask=m))
    theoretical, numerical = tf.test.compute_gradient(function, [x, offset, mask, weight], delta=1e-6)
    for name, t, n in zip(("input", "offset", "mask", "weight"), theoretical, numerical):
        assert np.abs(t).max() > 0.1, name
        np.testing.assert_allclose(t, n, atol=1e-6, err_msg=name)
