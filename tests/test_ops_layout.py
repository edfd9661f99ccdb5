"""flatten_locations against numpy's reshape, static and dynamic shapes; a static trace has no Shape op (TFLite
delegates a RESHAPE only with a constant target shape)."""
import numpy as np
import pytest
import tensorflow as tf

from kdet.ops.layout import flatten_locations


@pytest.mark.parametrize("columns", [None, 1, 4, 3])
def test_matches_numpy_static_and_dynamic(columns):
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 12)).astype(np.float32)
    expected = x.reshape(2, -1) if columns is None else x.reshape(2, -1, columns)
    np.testing.assert_array_equal(flatten_locations(tf.constant(x), columns).numpy(), expected)
    dynamic = tf.function(lambda t: flatten_locations(t, columns), input_signature=[tf.TensorSpec([None] * 4)])
    np.testing.assert_array_equal(dynamic(x).numpy(), expected)


def test_static_sizes_give_a_constant_target_shape_with_any_batch():
    function = tf.function(lambda t: flatten_locations(t, 4))
    graph = function.get_concrete_function(tf.TensorSpec([None, 3, 5, 8])).graph
    assert not {op.type for op in graph.get_operations()} & {"Shape", "Pack", "StridedSlice"}
    assert graph.outputs[0].shape.as_list() == [None, 30, 4]


def test_channels_not_a_multiple_of_columns_are_refused():
    with pytest.raises(ValueError, match="multiple of columns"):
        flatten_locations(tf.zeros([1, 2, 2, 6]), 4)
