"""kdet.layers.upsampling (+ the max-unpooling layers it sits beside): every unpooling against a numpy reference."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D
from kdet.layers.upsampling import (BedOfNailsUnpooling2D, BilinearInitializer, BilinearUpsampling2D,
                                    NearestUnpooling2D, TransposedConvUpsampling2D, bilinear_kernel, fit_to)
from kdet.ops import builtins_only


def nearest_reference(x, fy, fx):
    batch, height, width, channels = x.shape
    out = np.zeros((batch, height * fy, width * fx, channels), x.dtype)
    for i in range(height * fy):
        for j in range(width * fx):
            out[:, i, j] = x[:, i // fy, j // fx]
    return out


def bed_of_nails_reference(x, fy, fx):
    batch, height, width, channels = x.shape
    out = np.zeros((batch, height * fy, width * fx, channels), x.dtype)
    for i in range(height):
        for j in range(width):
            out[:, i * fy, j * fx] = x[:, i, j]
    return out


def bilinear_reference(x, out_h, out_w):
    """Half-pixel-centre bilinear resize (torch align_corners=False), loops over output pixels."""
    batch, height, width, channels = x.shape
    out = np.zeros((batch, out_h, out_w, channels), np.float64)

    def source(o, n_in, n_out):
        s = min(max((o + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
        i0 = int(np.floor(s))
        return i0, min(i0 + 1, n_in - 1), s - i0

    for i in range(out_h):
        y0, y1, wy = source(i, height, out_h)
        for j in range(out_w):
            x0, x1, wx = source(j, width, out_w)
            top = x[:, y0, x0] * (1 - wx) + x[:, y0, x1] * wx
            bottom = x[:, y1, x0] * (1 - wx) + x[:, y1, x1] * wx
            out[:, i, j] = top * (1 - wy) + bottom * wy
    return out


def max_pool_unpool_reference(x, k):
    """Pool k x k (first maximum in row-major order wins) and put each maximum back where it was."""
    out = np.zeros_like(x)
    batch, height, width, channels = x.shape
    for b in range(batch):
        for c in range(channels):
            for i in range(height // k):
                for j in range(width // k):
                    window = x[b, i * k:(i + 1) * k, j * k:(j + 1) * k, c]
                    dy, dx = divmod(int(np.argmax(window)), k)
                    out[b, i * k + dy, j * k + dx, c] = window[dy, dx]
    return out


@pytest.mark.parametrize("size", [2, 3, (2, 3)])
def test_nearest_and_bed_of_nails_equal_numpy(size):
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    fy, fx = (size, size) if isinstance(size, int) else size
    np.testing.assert_array_equal(NearestUnpooling2D(size)(x).numpy(), nearest_reference(x, fy, fx))
    np.testing.assert_array_equal(BedOfNailsUnpooling2D(size)(x).numpy(), bed_of_nails_reference(x, fy, fx))


def test_lecture_examples():
    x = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(NearestUnpooling2D(2)(x).numpy()[0, :, :, 0],
                                  [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    np.testing.assert_array_equal(BedOfNailsUnpooling2D(2)(x).numpy()[0, :, :, 0],
                                  [[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("builtins", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_max_unpooling_puts_values_back_where_the_max_was(builtins, ties):
    rng = np.random.default_rng(1)
    x = (rng.integers(0, 3, (2, 8, 10, 3)) if ties else rng.normal(size=(2, 8, 10, 3))).astype(np.float32)
    with builtins_only(builtins):
        values, argmax = MaxPoolingWithArgmax2D(2)(x)
        out = MaxUnpooling2D(2)(values, argmax, x).numpy()
    np.testing.assert_array_equal(out, max_pool_unpool_reference(x, 2))
    if ties:  # an all-equal window sends its value to the top-left, as the reference's argmax does
        flat = np.full((1, 2, 2, 1), 7.0, np.float32)
        with builtins_only(builtins):
            values, argmax = MaxPoolingWithArgmax2D(2)(flat)
            np.testing.assert_array_equal(MaxUnpooling2D(2)(values, argmax, flat).numpy()[0, :, :, 0],
                                          [[7, 0], [0, 0]])


@pytest.mark.parametrize("shape,size,out", [((1, 4, 5, 2), 2, (8, 10)), ((2, 3, 3, 1), 3, (9, 9)),
                                            ((1, 5, 7, 3), 2, (9, 13))])
def test_bilinear_upsampling_equals_numpy(shape, size, out):
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    layer = BilinearUpsampling2D(size)
    if out == (shape[1] * size, shape[2] * size):
        result = layer(x).numpy()
    else:  # straight to an odd reference size
        result = layer(x, reference=np.zeros((1, *out, 1), np.float32)).numpy()
    assert result.shape == (shape[0], *out, shape[3])
    np.testing.assert_allclose(result, bilinear_reference(x, *out), atol=1e-5)


def test_bilinear_kernel_is_the_tent_filter():
    # factor 2: 4 taps 1/4, 3/4, 3/4, 1/4; factor 3: 5 taps 1/3, 2/3, 1, 2/3, 1/3
    np.testing.assert_allclose(bilinear_kernel(2, 1)[:, :, 0, 0], np.outer([.25, .75, .75, .25], [.25, .75, .75, .25]))
    taps = np.array([1, 2, 3, 2, 1]) / 3
    np.testing.assert_allclose(bilinear_kernel(3, 1)[:, :, 0, 0], np.outer(taps, taps), atol=1e-7)
    kernel = bilinear_kernel(2, 3, 4)
    assert kernel.shape == (4, 4, 4, 3)
    assert not kernel[:, :, 0, 1].any() and not kernel[:, :, 3].any()  # channels stay apart; extra outputs start at 0


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_transposed_conv_at_bilinear_init_equals_bilinear_resize_at_the_centre(factor):
    x = np.random.default_rng(factor).normal(size=(2, 6, 7, 3)).astype(np.float32)
    out = TransposedConvUpsampling2D(3, factor)(x).numpy()
    reference = bilinear_reference(x, 6 * factor, 7 * factor)
    assert out.shape == reference.shape
    border = factor  # within half a source pixel of the edge the resize clamps while the convolution sees zeros
    np.testing.assert_allclose(out[:, border:-border, border:-border], reference[:, border:-border, border:-border],
                               atol=1e-5)
    assert np.abs(out[:, 0, 0] - reference[:, 0, 0]).max() > 1e-3  # the border does differ: the check can fail


def test_transposed_conv_learns_and_can_be_frozen():
    x = np.random.default_rng(3).normal(size=(1, 4, 4, 2)).astype(np.float32)
    learnable = TransposedConvUpsampling2D(2, 2)
    frozen = TransposedConvUpsampling2D(2, 2, trainable=False)
    model = keras.Sequential([keras.Input((4, 4, 2)), learnable, frozen])
    assert len(model.trainable_weights) == 1 and len(model.non_trainable_weights) == 1
    assert TransposedConvUpsampling2D(2, 2, initializer="zeros")(x).numpy().max() == 0.0
    with pytest.raises(ValueError, match="bilinear kernel for factor 2 is 4 wide"):
        BilinearInitializer(2)((3, 3, 1, 1))


def test_reference_cuts_or_pads_to_the_skip_size():
    x = np.ones((1, 3, 3, 1), np.float32)
    odd = np.zeros((1, 5, 7, 1), np.float32)
    for layer in (NearestUnpooling2D(2), BedOfNailsUnpooling2D(2), BilinearUpsampling2D(2),
                  TransposedConvUpsampling2D(1, 2)):
        assert layer(x, reference=odd).shape == (1, 5, 7, 1)
    padded = fit_to(np.ones((1, 2, 2, 1), np.float32), 3, 1).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(padded, [[1], [1], [0]])


def test_layers_give_the_same_result_when_the_size_is_unknown_at_trace_time():
    # Models run at any input size: a trace Keras relaxed to [None, None, None, C] must give what a static one gives.
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 4, 2)).astype(np.float32)
    reference = np.zeros((2, 5, 7, 2), np.float32)
    spec = [tf.TensorSpec([None, None, None, 2]), tf.TensorSpec([None, None, None, 2])]
    for layer in (NearestUnpooling2D(2), BedOfNailsUnpooling2D((2, 3)), BilinearUpsampling2D(2),
                  TransposedConvUpsampling2D(2, 2)):
        for ref in (None, reference):
            static = layer(x, reference=ref).numpy()
            dynamic = tf.function(lambda a, r: layer(a, reference=r), input_signature=spec) if ref is not None else \
                tf.function(lambda a: layer(a), input_signature=spec[:1])
            out = dynamic(x, ref).numpy() if ref is not None else dynamic(x).numpy()
            np.testing.assert_allclose(out, static, atol=1e-6, err_msg=type(layer).__name__)


def test_layers_round_trip_and_work_in_a_saved_functional_model(tmp_path):
    inputs = keras.Input((4, 6, 2))
    outputs = [NearestUnpooling2D(2)(inputs), BedOfNailsUnpooling2D((2, 3))(inputs), BilinearUpsampling2D(2)(inputs),
               TransposedConvUpsampling2D(2, 2)(inputs)]
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(4).normal(size=(1, 4, 6, 2)).astype(np.float32)
    path = tmp_path / "up.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(model(x), loaded(x)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    for layer in model.layers[1:]:
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()


def test_upsampling_converts_to_tflite_builtins():
    inputs = keras.Input((4, 6, 2), batch_size=1)
    outputs = keras.layers.Concatenate()([NearestUnpooling2D(2)(inputs), BedOfNailsUnpooling2D(2)(inputs),
                                          BilinearUpsampling2D(2)(inputs), TransposedConvUpsampling2D(2, 2)(inputs)])
    model = keras.Model(inputs, outputs)
    from ai_edge_litert.interpreter import Interpreter
    from kdet.export.tflite import function_flatbuffer
    interpreter = Interpreter(model_content=function_flatbuffer(  # as kdet.export converts: builtins-only trace
        lambda t: {"y": model(t)}, [tf.TensorSpec((1, 4, 6, 2), tf.float32, name="x")], model))
    interpreter.allocate_tensors()
    ops = {op["op_name"] for op in interpreter._get_ops_details()}  # noqa: SLF001
    assert "DEPTH_TO_SPACE" in ops and "RESIZE_NEAREST_NEIGHBOR" not in ops, ops  # the 2x nearest twin (XNNPACK's)
    x = np.random.default_rng(5).normal(size=(1, 4, 6, 2)).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, model(x).numpy(), atol=1e-5)


def test_nearest_unpooling_calibrates_for_int8(tmp_path):
    """int8 calibration runs the unoptimised graph on TF Lite's kernels, which refuse tensors above 5-D: the nearest
    unpooling (Hourglass-104's up-sampling) is one RESIZE_NEAREST_NEIGHBOR, and the int8 model keeps its values."""
    inputs = keras.Input((4, 6, 2), batch_size=1)
    model = keras.Model(inputs, NearestUnpooling2D(2)(keras.layers.Conv2D(3, 1)(inputs)))
    model.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(7)
    samples = rng.normal(size=(8, 1, 4, 6, 2)).astype(np.float32)
    converter.representative_dataset = lambda: ([s] for s in samples)
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], samples[0])
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    expected = model(samples[0]).numpy()
    assert out.shape == expected.shape == (1, 8, 12, 3)
    np.testing.assert_allclose(out, expected, atol=0.05 * np.abs(expected).max())


def test_nearest_unpooling_in_bfloat16():
    x = np.random.default_rng(8).normal(size=(1, 3, 4, 2)).astype(np.float32)
    out = NearestUnpooling2D(2, dtype="mixed_bfloat16")(tf.cast(x, tf.bfloat16))
    assert out.dtype == tf.bfloat16
    np.testing.assert_array_equal(out.numpy().astype(np.float32),
                                  nearest_reference(x.astype(tf.bfloat16.as_numpy_dtype).astype(np.float32), 2, 2))
