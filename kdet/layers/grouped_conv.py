"""GroupedConv2D: a grouped 2-D convolution (ResNeXt's 3x3) that runs on TensorFlow's fast CPU kernel.

Keras' own `Conv2D(groups=g)` sends every grouped convolution through a forced-XLA function, about 10x slower on
CPU than `tf.nn.conv2d` with the same grouped kernel [kh, kw, Cin / g, Cout] (which reaches oneDNN's grouped
kernel); measured in benchmarks/bench_resnext.py. This layer owns that kernel and calls `tf.nn.conv2d` directly.

Exports need no twin: the TFLite converter writes one builtin CONV_2D with the grouped filter (ai-edge-litert runs
it exactly, fp32 and int8, and faster than split + concat), tf2onnx a Conv with group=g, and the SavedModel keeps the
Conv2D op (tests/test_grouped_conv.py checks all three against the TF result).
"""
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="kdet")
class GroupedConv2D(keras.layers.Layer):
    """x [B, H, W, Cin] -> [B, H', W', filters]; no padding of its own ("valid"), as kdet's torch-padded convs.

    Args:
        filters: output channels (a multiple of groups).
        kernel_size, strides: int (square).
        groups: g; Cin must be a multiple of g. Output channel block k reads input channel block k only.
        use_bias, kernel_initializer: as keras.layers.Conv2D. kernel: [kh, kw, Cin / g, filters] (Conv2D's
            layout with groups, so torch's [filters, Cin / g, kh, kw] converts with the usual OIHW -> HWIO).
    """

    def __init__(self, filters, kernel_size, strides=1, groups=1, use_bias=False,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = int(filters), int(kernel_size)
        self.strides, self.groups, self.use_bias = int(strides), int(groups), bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        if self.groups < 1 or self.filters % self.groups:
            raise ValueError(f"GroupedConv2D: filters ({filters}) must be a multiple of groups ({groups})")

    def build(self, input_shape):
        channels = int(input_shape[-1])
        if channels % self.groups:
            raise ValueError(f"GroupedConv2D: input channels ({channels}) must be a multiple of groups "
                             f"({self.groups})")
        k = self.kernel_size
        self.kernel = self.add_weight(name="kernel", shape=(k, k, channels // self.groups, self.filters),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") if self.use_bias \
            else None

    def call(self, x):
        kernel = tf.cast(self.kernel, x.dtype)
        y = tf.nn.conv2d(x, kernel, self.strides, "VALID")
        if self.bias is not None:
            y = tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))
        return y

    def compute_output_shape(self, input_shape):
        def size(n):
            return None if n is None else (n - self.kernel_size) // self.strides + 1
        return (input_shape[0], size(input_shape[1]), size(input_shape[2]), self.filters)

    def get_config(self):
        return dict(super().get_config(), filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                    groups=self.groups, use_bias=self.use_bias,
                    kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
