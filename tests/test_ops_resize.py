"""Exact-2x nearest resampling twins (kdet.ops.resize) against numpy, and the FPN graph they give TFLite: no
RESIZE_NEAREST_NEIGHBOR or MAX_POOL_2D (XNNPACK takes neither), same values as the default ops."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.necks.fpn import FPN
from kdet.ops import builtins_only, subsample_2x, upsample_nearest, upsample_nearest_2x


def torch_nearest(x, size):
    """torch F.interpolate(mode="nearest") in numpy: source index floor(i * in / out)."""
    rows = np.floor(np.arange(size[0]) * x.shape[1] / size[0]).astype(int)
    cols = np.floor(np.arange(size[1]) * x.shape[2] / size[1]).astype(int)
    return x[:, rows][:, :, cols]


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 1, 1, 3), (1, 8, 2, 1)])
def test_upsample_2x_is_torch_nearest(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = torch_nearest(x, (2 * shape[1], 2 * shape[2]))
    np.testing.assert_array_equal(upsample_nearest_2x(tf.constant(x)).numpy(), expected)
    with builtins_only():
        np.testing.assert_array_equal(upsample_nearest(tf.constant(x), (2 * shape[1], 2 * shape[2])).numpy(), expected)


@pytest.mark.parametrize("shape", [(2, 6, 4, 3), (1, 7, 5, 2), (1, 1, 1, 4), (1, 2, 9, 1)])
def test_subsample_2x_is_strided_slice(shape):
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(subsample_2x(tf.constant(x)).numpy(), x[:, ::2, ::2])


def test_subsample_2x_refuses_unknown_sizes():
    function = tf.function(subsample_2x, input_signature=[tf.TensorSpec([1, None, 4, 2])])
    with pytest.raises(ValueError, match="static height"):
        function.get_concrete_function()


def test_twin_only_for_an_exact_2x_ratio_under_builtins_only():
    def op_types(size):
        function = tf.function(lambda x: upsample_nearest(x, size))
        return {op.type for op in function.get_concrete_function(tf.TensorSpec([1, 4, 5, 2])).graph.get_operations()}
    assert "ResizeNearestNeighbor" in op_types((8, 10))
    with builtins_only():
        assert "DepthToSpace" in op_types((8, 10)) and "ResizeNearestNeighbor" not in op_types((8, 10))
        assert "ResizeNearestNeighbor" in op_types((7, 10))  # ratio not 2: the general rule
    x = np.arange(40, dtype=np.float32).reshape(1, 4, 5, 2)
    with builtins_only():
        np.testing.assert_array_equal(upsample_nearest(tf.constant(x), (7, 10)).numpy(), torch_nearest(x, (7, 10)))


@pytest.mark.slow
@pytest.mark.parametrize("extra_block,size", [("maxpool", (64, 96)), ("maxpool", (96, 160)), ("p6p7", (64, 64))])
def test_fpn_tflite_graph_has_no_resize_or_pool_and_matches_tf(extra_block, size, tmp_path):
    """All levels 2x apart: the twins everywhere; 96x160 gives an odd C5 (3x5 -> P6 2x3 through the padding)."""
    from ai_edge_litert.interpreter import Interpreter
    levels = (2, 3, 4, 5) if extra_block == "maxpool" else (3, 4, 5)
    rng = np.random.default_rng(2)
    shapes = {level: (1, -(-size[0] // 2 ** level), -(-size[1] // 2 ** level), 3 + level) for level in levels}
    features = {f"C{level}": rng.normal(size=shape).astype(np.float32) for level, shape in shapes.items()}
    fpn = FPN(levels, 8, extra_block)
    expected = {k: v.numpy() for k, v in fpn(features).items()}
    specs = [{k: tf.TensorSpec(v.shape, name=k) for k, v in features.items()}]
    archive = keras.export.ExportArchive()  # freezes the Keras variables (a tf.Module's concrete function did not)
    archive.track(fpn)
    with builtins_only():  # traced when written
        archive.add_endpoint("serving_default", lambda c: fpn(c), input_signature=specs)
        archive.write_out(str(tmp_path), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert(), num_threads=1)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not ops & {"RESIZE_NEAREST_NEIGHBOR", "MAX_POOL_2D"}, ops
    result = interpreter.get_signature_runner()(**features)
    assert sorted(result) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(result[key], value, atol=1e-5, err_msg=key)
