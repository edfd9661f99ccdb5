"""kdet.ops max_pool_with_argmax / max_unpool: numpy reference, ties, and the TF path equal to the builtins twin."""
import numpy as np
import pytest
import tensorflow as tf

from kdet.ops import builtins_only, max_pool_with_argmax, max_unpool


def pool_reference(x, k):
    """Windows k x k, stride k, VALID; the first maximum in row-major window order wins."""
    batch, height, width, channels = x.shape
    out_h, out_w = height // k, width // k
    values = np.zeros((batch, out_h, out_w, channels), x.dtype)
    argmax = np.zeros((batch, out_h, out_w, channels), np.int64)
    for b in range(batch):
        for i in range(out_h):
            for j in range(out_w):
                for c in range(channels):
                    window = x[b, i * k:(i + 1) * k, j * k:(j + 1) * k, c]
                    dy, dx = divmod(int(np.argmax(window)), k)
                    values[b, i, j, c] = window[dy, dx]
                    argmax[b, i, j, c] = ((b * height + i * k + dy) * width + j * k + dx) * channels + c
    return values, argmax


def unpool_reference(values, argmax, shape):
    out = np.zeros(int(np.prod(shape)), values.dtype)
    out[argmax.ravel()] = values.ravel()
    return out.reshape(shape)


def run(builtins, function, *args, **kwargs):
    with builtins_only(builtins):
        result = function(*args, **kwargs)
    return tuple(r.numpy() for r in result) if isinstance(result, tuple) else result.numpy()


@pytest.mark.parametrize("seed,shape,k,ties", [
    (0, (2, 8, 6, 3), 2, False), (1, (1, 7, 9, 2), 2, False), (2, (3, 9, 6, 1), 3, False),
    (3, (2, 6, 8, 4), 2, True), (4, (1, 5, 5, 2), 2, True), (5, (2, 9, 12, 3), 3, True)])
@pytest.mark.parametrize("builtins", [False, True])
def test_pool_and_unpool_equal_reference(seed, shape, k, ties, builtins):
    rng = np.random.default_rng(seed)
    x = (rng.integers(0, 3, shape) if ties else rng.normal(0, 1, shape)).astype(np.float32)
    ref_values, ref_argmax = pool_reference(x, k)
    values, argmax = run(builtins, max_pool_with_argmax, x, k)
    assert argmax.dtype == np.int32
    np.testing.assert_array_equal(values, ref_values)
    np.testing.assert_array_equal(argmax, ref_argmax)
    unpooled = run(builtins, max_unpool, values, argmax, shape, k)
    np.testing.assert_array_equal(unpooled, unpool_reference(ref_values, ref_argmax, shape))


def test_lecture_example_and_tie_rule():
    # lecture: the 2x2 input [[1, 2], [3, 4]] goes back to the remembered positions of a 4x4 map
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 0, 2] = x[0, 1, 1] = x[0, 3, 0] = x[0, 3, 3] = 9.0
    for builtins in (False, True):
        _, argmax = run(builtins, max_pool_with_argmax, x)
        out = run(builtins, max_unpool, np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1), argmax, x.shape)
        np.testing.assert_array_equal(out[0, :, :, 0], [[0, 0, 2, 0], [0, 1, 0, 0], [0, 0, 0, 0], [3, 0, 0, 4]])
    # all-equal window: the top-left element wins on both paths
    flat = np.ones((1, 2, 2, 1), np.float32)
    for builtins in (False, True):
        assert run(builtins, max_pool_with_argmax, flat)[1].item() == 0
    # top-right and bottom-left tie: top-right (earlier in row-major order) wins
    tie = np.array([[0, 5], [5, 0]], np.float32).reshape(1, 2, 2, 1)
    for builtins in (False, True):
        assert run(builtins, max_pool_with_argmax, tie)[1].item() == 1


def test_paths_are_interchangeable_and_work_in_a_graph():
    rng = np.random.default_rng(9)
    x = rng.normal(0, 1, (2, 10, 14, 5)).astype(np.float32)
    tf_values, tf_argmax = run(False, max_pool_with_argmax, x)
    twin_values, twin_argmax = run(True, max_pool_with_argmax, x)
    np.testing.assert_array_equal(tf_values, twin_values)
    np.testing.assert_array_equal(tf_argmax, twin_argmax)
    decoder = rng.normal(0, 1, tf_values.shape).astype(np.float32)  # unpool other values through the indices
    np.testing.assert_array_equal(run(True, max_unpool, decoder, tf_argmax, x.shape),
                                  run(False, max_unpool, decoder, twin_argmax, x.shape))

    for builtins in (False, True):
        @tf.function(input_signature=[tf.TensorSpec([None, 10, 14, 5])])
        def round_trip(images):
            with builtins_only(builtins):
                values, argmax = max_pool_with_argmax(images)
                return max_unpool(values, argmax, tf.shape(images))

        np.testing.assert_array_equal(round_trip(x).numpy(), unpool_reference(tf_values, tf_argmax, x.shape))
        assert round_trip(x[:1]).shape == (1, 10, 14, 5)


@pytest.mark.parametrize("shape,k", [((2, 9, 11, 3), 2), ((1, 9, 12, 2), 3)])
def test_tflite_twins_equal_default_ops_with_ties_and_use_no_division_or_scatter(shape, k):
    """Converted with TFLITE_BUILTINS only, the pool + unpool twins give the default ops' argmax and unpooled map
    (ties, odd sizes, decoder values that are not the pooled ones), and the graph is the scatter-free,
    division-free formulation (TFLite's int32 FLOOR_DIV / FLOOR_MOD and ARG_MAX made the earlier twins slow)."""
    from ai_edge_litert.interpreter import Interpreter

    def pool_unpool(x, decoder):
        _, argmax = max_pool_with_argmax(x, k)
        return {"argmax": argmax, "unpooled": max_unpool(decoder, argmax, shape, k)}

    pooled = (shape[0], shape[1] // k, shape[2] // k, shape[3])
    module = tf.Module()
    module.run = tf.function(pool_unpool, input_signature=[tf.TensorSpec(shape), tf.TensorSpec(pooled)])
    with builtins_only():
        concrete = module.run.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert(), num_threads=1)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not ops & {"FLOOR_DIV", "FLOOR_MOD", "ARG_MAX", "ONE_HOT", "SCATTER_ND", "GATHER", "GATHER_ND"}, ops
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, shape).astype(np.float32)  # many ties
    decoder = rng.normal(0, 1, pooled).astype(np.float32)
    result = interpreter.get_signature_runner()(x=x, decoder=decoder)
    expected = {key: value.numpy() for key, value in pool_unpool(x, decoder).items()}  # the default TF ops
    np.testing.assert_array_equal(result["argmax"], expected["argmax"])
    np.testing.assert_array_equal(result["unpooled"], expected["unpooled"])
