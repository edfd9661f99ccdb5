"""Keras layers for SegNet-style pooling indices: MaxPoolingWithArgmax2D and MaxUnpooling2D (over kdet.ops.unpool).

The argmax is the flat input index of TF's max_pool_with_argmax(include_batch_in_index=True), int32, on both the
TF path and the TFLite-builtins twin, so a model can be traced either way.
"""
import keras
import tensorflow as tf

from kdet.ops.unpool import max_pool_with_argmax, max_unpool


@keras.saving.register_keras_serializable(package="kdet")
class MaxPoolingWithArgmax2D(keras.layers.Layer):
    """x [B, H, W, C] -> (values [B, H//k, W//k, C], argmax [B, H//k, W//k, C] int32); window = stride = k."""

    def __init__(self, pool_size=2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)

    def call(self, inputs):
        return max_pool_with_argmax(inputs, self.pool_size)

    def compute_output_spec(self, inputs):
        batch, height, width, channels = inputs.shape
        shape = (batch, None if height is None else height // self.pool_size,
                 None if width is None else width // self.pool_size, channels)
        return keras.KerasTensor(shape, dtype=inputs.dtype), keras.KerasTensor(shape, dtype="int32")

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size)
        return config


@keras.saving.register_keras_serializable(package="kdet")
class MaxUnpooling2D(keras.layers.Layer):
    """call(values, argmax, reference=None) -> values placed at their argmax positions, zeros elsewhere.

    reference: the tensor that was pooled (only its shape is used), which restores odd sizes; without it the
    output is [B, h * k, w * k, C], which is only right if the pooled tensor had exactly that size (the argmax
    indices encode the pooled tensor's width).
    """

    def __init__(self, pool_size=2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)

    def call(self, values, argmax, reference=None):
        if reference is None:
            shape = tf.shape(values) * tf.constant([1, self.pool_size, self.pool_size, 1])
        else:
            shape = tf.concat([tf.shape(values)[:1], tf.shape(reference)[1:3], tf.shape(values)[3:]], axis=0)
        unpooled = max_unpool(values, argmax, shape, self.pool_size)
        static = self._static_shape(values.shape, None if reference is None else reference.shape)
        return tf.ensure_shape(unpooled, static)

    def _static_shape(self, values_shape, reference_shape):
        batch, height, width, channels = values_shape
        if reference_shape is not None:
            height, width = reference_shape[1], reference_shape[2]
        else:
            height = None if height is None else height * self.pool_size
            width = None if width is None else width * self.pool_size
        return (batch, height, width, channels)

    def compute_output_spec(self, values, argmax, reference=None):
        shape = self._static_shape(values.shape, None if reference is None else reference.shape)
        return keras.KerasTensor(shape, dtype=values.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size)
        return config
