"""DeformConv2D: a DCNv2 layer (modulated deformable convolution, Zhu et al. 2019) over kdet.ops.deform_conv2d.

As the DCNv2 `DCN` module the CenterNet reference uses (and torchvision's deform_conv2d with a mask): one ordinary
conv with the layer's own kernel size, stride, padding and dilation reads the input and predicts, per output cell,
2 * offset_groups * kh * kw offsets (torchvision's order: tap by tap, y then x) followed by offset_groups * kh * kw
mask logits; the mask is their sigmoid. That conv's kernel and bias start at zero, so a fresh layer samples the
regular grid with every tap scaled by sigmoid(0) = 0.5: its output is 0.5 * conv(x, kernel) + bias, half a plain
conv, exactly the reference's initial state (with modulated=False, DCNv1: offsets only, no mask, a plain conv).
DCNv2's conv_offset_mask output (o1, o2, mask chunks with offset = cat(o1, o2)) has this very channel layout.

Padding is symmetric zeros as torch's Conv2d: "same" is dilation * (k - 1) // 2 per side (output ceil(H / stride)
for odd kernels), "valid" is 0, or an int / pair. The layer computes in float32 whatever the global policy (sample
positions in bfloat16 would be a cell off at 256 pixels), like kdet's RoIAlign.
"""
import keras
import tensorflow as tf

from kdet.errors import ConfigError
from kdet.ops.deform_conv import deform_conv2d


def _pair(value):
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


@keras.saving.register_keras_serializable(package="kdet")
class DeformConv2D(keras.layers.Layer):
    """call(inputs [B, H, W, Cin]) -> [B, Ho, Wo, filters].

    Args:
        filters: output channels (divisible by groups).
        kernel_size, strides, dilation_rate: int or pair.
        padding: "same", "valid", int or pair (symmetric zeros, see the module docstring).
        groups: weight groups (Cin and filters divisible by it), as Conv2D's groups.
        offset_groups: channel groups with their own offsets (and mask), torchvision's offset_groups / DCN's
            deformable_groups; Cin must be divisible by it.
        use_bias: a bias [filters] (added after the modulation).
        modulated: DCNv2 (offsets and a sigmoid mask) when True, DCNv1 (offsets only) when False.
        kernel_initializer, bias_initializer: of the deformable conv's kernel [kh, kw, Cin / groups, filters] and
            bias; the offset / mask conv always starts at zero.
    """

    def __init__(self, filters, kernel_size=3, strides=1, padding="same", dilation_rate=1, groups=1, offset_groups=1,
                 use_bias=True, modulated=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size)
        self.strides = _pair(strides)
        self.dilation_rate = _pair(dilation_rate)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ConfigError(f"DeformConv2D: padding must be 'same', 'valid', an int or a pair, got {padding!r}")
            self.padding = padding
        else:
            self.padding = _pair(padding)
        self.groups = int(groups)
        self.offset_groups = int(offset_groups)
        self.use_bias = bool(use_bias)
        self.modulated = bool(modulated)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        if self.filters % self.groups:
            raise ConfigError(f"DeformConv2D: filters {self.filters} not divisible by groups {self.groups}")

    @property
    def pads(self):
        """(pad_h, pad_w) zeros on each side."""
        if self.padding == "same":
            return tuple(d * (k - 1) // 2 for d, k in zip(self.dilation_rate, self.kernel_size))
        if self.padding == "valid":
            return 0, 0
        return self.padding

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % self.groups or channels % self.offset_groups:
            raise ConfigError(f"DeformConv2D: {channels} input channels do not split into groups {self.groups} "
                              f"and offset_groups {self.offset_groups}")
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.offset_channels = 2 * self.offset_groups * taps
        predicted = self.offset_channels + (self.offset_groups * taps if self.modulated else 0)
        self.offset_kernel = self.add_weight(name="offset_kernel", shape=(*self.kernel_size, channels, predicted),
                                             initializer="zeros")
        self.offset_bias = self.add_weight(name="offset_bias", shape=(predicted,), initializer="zeros")
        self.kernel = self.add_weight(name="kernel", shape=(*self.kernel_size, channels // self.groups, self.filters),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.filters,),
                                    initializer=self.bias_initializer) if self.use_bias else None

    def offsets_and_mask(self, inputs):
        """inputs [B, H, W, Cin] -> (offset [B, Ho, Wo, 2 * G * kh * kw], mask [B, Ho, Wo, G * kh * kw] or None)."""
        pad_h, pad_w = self.pads
        padded = tf.pad(inputs, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]]) if pad_h or pad_w else inputs
        predicted = tf.nn.conv2d(padded, self.offset_kernel, self.strides, "VALID", dilations=self.dilation_rate)
        predicted = predicted + self.offset_bias
        if not self.modulated:
            return predicted, None
        return predicted[..., :self.offset_channels], tf.sigmoid(predicted[..., self.offset_channels:])

    def call(self, inputs):
        inputs = tf.cast(inputs, self.compute_dtype)
        offset, mask = self.offsets_and_mask(inputs)
        return deform_conv2d(inputs, offset, self.kernel, self.bias, self.strides, self.pads, self.dilation_rate, mask)

    def compute_output_shape(self, input_shape):
        sizes = []
        for size, pad, dilation, kernel, stride in zip(input_shape[1:3], self.pads, self.dilation_rate,
                                                       self.kernel_size, self.strides):
            sizes.append(None if size is None else (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1)
        return (input_shape[0], *sizes, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=list(self.kernel_size), strides=list(self.strides),
                      padding=self.padding if isinstance(self.padding, str) else list(self.padding),
                      dilation_rate=list(self.dilation_rate), groups=self.groups, offset_groups=self.offset_groups,
                      use_bias=self.use_bias, modulated=self.modulated,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                      bias_initializer=keras.initializers.serialize(self.bias_initializer))
        return config
