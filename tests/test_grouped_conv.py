"""GroupedConv2D against a numpy grouped convolution and Keras' Conv2D(groups=), and through every export format."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.layers.grouped_conv import GroupedConv2D


def numpy_grouped_conv(x, kernel, strides, groups):
    """x [B, H, W, Cin], kernel [k, k, Cin / g, Cout] -> "valid" grouped convolution [B, H', W', Cout]."""
    k, _, per_group, out = kernel.shape
    b, h, w, _ = x.shape
    oh, ow = (h - k) // strides + 1, (w - k) // strides + 1
    y = np.zeros((b, oh, ow, out))
    out_per_group = out // groups
    for o in range(out):
        g = o // out_per_group
        xs = x[..., g * per_group:(g + 1) * per_group]
        for i in range(oh):
            for j in range(ow):
                patch = xs[:, i * strides:i * strides + k, j * strides:j * strides + k, :]
                y[:, i, j, o] = np.sum(patch * kernel[..., o], axis=(1, 2, 3))
    return y


@pytest.mark.parametrize("strides", [1, 2])
def test_matches_numpy_and_keras_conv2d_groups(strides):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 11, 8)).astype(np.float32)
    layer = GroupedConv2D(12, 3, strides, groups=4, use_bias=True)
    layer.build(x.shape)
    layer.kernel.assign(rng.normal(size=(3, 3, 2, 12)).astype(np.float32))
    layer.bias.assign(rng.normal(size=12).astype(np.float32))
    expected = numpy_grouped_conv(x, layer.kernel.numpy(), strides, 4) + layer.bias.numpy()
    result = layer(x).numpy()
    assert result.shape == layer.compute_output_shape(x.shape)
    np.testing.assert_allclose(result, expected, atol=1e-4)
    reference = keras.layers.Conv2D(12, 3, strides, groups=4)
    reference.build(x.shape)
    reference.set_weights([layer.kernel.numpy(), layer.bias.numpy()])
    np.testing.assert_allclose(result, reference(x).numpy(), atol=1e-5)


def test_bad_group_counts_are_refused():
    with pytest.raises(ValueError, match="multiple of groups"):
        GroupedConv2D(10, 3, groups=4)
    with pytest.raises(ValueError, match=r"input channels \(6\)"):
        GroupedConv2D(8, 3, groups=4)(np.zeros((1, 5, 5, 6), np.float32))


def test_exports_keep_the_grouped_conv_exact(tmp_path):
    """TFLite builtins (one grouped CONV_2D), ONNX (Conv group=g) and a SavedModel give the TF result."""
    import onnxruntime
    import tf2onnx
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 14, 14, 16)).astype(np.float32)
    layer = GroupedConv2D(32, 3, 2, groups=8, use_bias=True, kernel_initializer="he_normal")
    layer.build(x.shape)
    layer.bias.assign(rng.normal(size=32).astype(np.float32))
    expected = layer(x).numpy()
    function = tf.function(lambda t: layer(t), input_signature=[tf.TensorSpec([1, 14, 14, 16], name="x")])

    module = tf.Module()
    module.layer, module.f = layer, function
    tf.saved_model.save(module, str(tmp_path / "saved"))
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(loaded.f(x).numpy(), expected, atol=1e-5)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert ops.count("CONV_2D") == 1 and set(ops) <= {"CONV_2D", "ADD", "DELEGATE"}, ops
    np.testing.assert_allclose(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), expected,
                               atol=1e-4)

    proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=17)
    assert [a.i for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"] == [8]
    session = onnxruntime.InferenceSession(proto.SerializeToString())
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], expected, atol=1e-4)

