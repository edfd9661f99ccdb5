"""Upsampling layers of the lecture's "Pooling and UnPooling" slides, for FCN / encoder-decoder / U-Net decoders.

    NearestUnpooling2D       every value copied into its k x k block          [[1,2],[3,4]] -> [[1,1,2,2],[1,1,2,2],...]
    BedOfNailsUnpooling2D    the value at the block's top-left, zeros elsewhere  -> [[1,0,2,0],[0,0,0,0],...]
    MaxUnpooling2D           the value back where the matching max-pool found its maximum (kdet.layers.unpooling)
    BilinearUpsampling2D     bilinear interpolation (half-pixel centres, as tf.image.resize / torch align_corners=False)
    TransposedConvUpsampling2D  learnable stride-k transposed convolution, initialised to bilinear (FCN's "deconv")

Every layer takes an optional `reference` tensor: the output is then cut (or zero-padded, bottom/right) to the
reference's height and width. A stride-2 pooling of an odd size rounds, so a decoder upsamples back to the size of the
encoder feature it mirrors, not to 2x its input.

All of them are TFLite builtins (RESHAPE / BROADCAST_TO / DEPTH_TO_SPACE / RESIZE_BILINEAR / TRANSPOSE_CONV), so no
builtins-only twin is needed here; max-unpooling has its twin in kdet.ops.unpool.
"""
import keras
import numpy as np
import tensorflow as tf

from kdet.ops.mode import builtins_only_enabled
from kdet.ops.resize import upsample_nearest_2x


def _pair(value):
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _spatial(x):
    """(height, width) of [B, H, W, C]: static ints when known, else scalar tensors."""
    dynamic = tf.shape(x)
    return tuple(x.shape[i] if x.shape[i] is not None else dynamic[i] for i in (1, 2))


def fit_to(x, height, width):
    """[B, h, w, C] -> [B, height, width, C]: zero-pad bottom/right where smaller, cut bottom/right where larger.

    Top-left alignment is right for kdet's pooling: a stride-k pool with "same" padding (or VALID) pads/drops at the
    bottom/right, so upsampled pixel (0, 0) lies over input pixel (0, 0) either way.
    """
    h, w = _spatial(x)
    if isinstance(h, int) and isinstance(height, int) and isinstance(w, int) and isinstance(width, int):
        if h < height or w < width:
            x = tf.pad(x, [[0, 0], [0, max(height - h, 0)], [0, max(width - w, 0)], [0, 0]])
        return x[:, :height, :width, :]
    x = tf.pad(x, [[0, 0], [0, tf.maximum(height - h, 0)], [0, tf.maximum(width - w, 0)], [0, 0]])
    return x[:, :height, :width, :]


def _fit_reference(x, reference):
    if reference is None:
        return x
    height, width = _spatial(reference)
    return fit_to(x, height, width)


def _upsampled_shape(layer, input_shape, reference_shape):
    batch, height, width, channels = input_shape
    if reference_shape is not None:
        return (batch, reference_shape[1], reference_shape[2], channels)
    fy, fx = layer.size
    return (batch, None if height is None else height * fy, None if width is None else width * fx, channels)


class _Upsampling(keras.layers.Layer):
    """Shared plumbing: `size` (factor k or (ky, kx)), call(x, reference=None), config round trip."""

    def __init__(self, size=2, **kwargs):
        super().__init__(**kwargs)
        self.size = _pair(size)

    def call(self, inputs, reference=None):
        return _fit_reference(self.upsample(inputs), reference)

    def compute_output_shape(self, inputs_shape, reference_shape=None):
        return _upsampled_shape(self, inputs_shape, reference_shape)

    def get_config(self):
        return dict(super().get_config(), size=list(self.size))


@keras.saving.register_keras_serializable(package="kdet")
class NearestUnpooling2D(_Upsampling):
    """x [B, h, w, C] -> [B, h * ky, w * kx, C]: out[i, j] = x[i // ky, j // kx] (nearest neighbour)."""

    def upsample(self, x):
        fy, fx = self.size
        if (fy, fx) == (2, 2) and builtins_only_enabled():
            return upsample_nearest_2x(x)  # XNNPACK takes it; it refuses RESIZE_NEAREST_NEIGHBOR (kdet.ops.resize)
        height, width = (x.shape[i] if x.shape[i] is not None else tf.shape(x)[i] for i in (1, 2))
        # ResizeNearestNeighbor without corner alignment or half-pixel centres reads x[floor(i * h / H)], which is
        # x[i // ky] for H = h * ky: one RESIZE_NEAREST_NEIGHBOR builtin. (A broadcast over two new block axes was a
        # 6-D STRIDED_SLICE, which TF Lite's kernels refuse when int8 calibration runs the unoptimised graph.)
        return tf.raw_ops.ResizeNearestNeighbor(images=x, size=tf.stack([height * fy, width * fx]),
                                                align_corners=False, half_pixel_centers=False)


@keras.saving.register_keras_serializable(package="kdet")
class BedOfNailsUnpooling2D(_Upsampling):
    """x [B, h, w, C] -> [B, h * ky, w * kx, C]: out[i * ky, j * kx] = x[i, j], every other position 0.

    The value goes to the top-left of its block (the lecture's "bed of nails"); max-unpooling is the variant that
    remembers which position of the block held the maximum instead.
    """

    def upsample(self, x):
        fy, fx = self.size
        batch, height, width, channels = (x.shape[i] if x.shape[i] is not None else tf.shape(x)[i] for i in range(4))
        # Slot 0 of depth_to_space's (dy, dx, c) channel order is the block's top-left.
        zeros = tf.zeros_like(x)
        slots = tf.stack([x] + [zeros] * (fy * fx - 1), axis=3)
        return _depth_to_space(tf.reshape(slots, [batch, height, width, fy * fx * channels]), fy, fx)


def _depth_to_space(x, fy, fx):
    if fy == fx:
        return tf.nn.depth_to_space(x, fy)
    # Rectangular blocks: the same (dy, dx, c) order by hand.
    batch, height, width = (x.shape[i] if x.shape[i] is not None else tf.shape(x)[i] for i in range(3))
    channels = x.shape[-1] // (fy * fx)
    x = tf.reshape(x, [batch, height, width, fy, fx, channels])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [batch, height * fy, width * fx, channels])


@keras.saving.register_keras_serializable(package="kdet")
class BilinearUpsampling2D(_Upsampling):
    """x [B, h, w, C] -> bilinear resize to [B, h * ky, w * kx, C], or straight to the reference's size.

    Half-pixel centres (tf.image.resize, torch `align_corners=False`): input pixel i sits at output coordinate
    (i + 0.5) * k - 0.5. Resizing to the reference directly (not 2x then cut) keeps that geometry exact for odd sizes.
    """

    def call(self, inputs, reference=None):
        if reference is None:
            height, width = _spatial(inputs)
            return self._resize(inputs, height * self.size[0], width * self.size[1])
        return self._resize(inputs, *_spatial(reference))

    def _resize(self, x, height, width):
        static = isinstance(height, int) and isinstance(width, int)
        resized = tf.image.resize(x, (height, width) if static else tf.stack([height, width]), method="bilinear")
        return tf.cast(resized, x.dtype)


def bilinear_kernel(factor, in_channels, out_channels=None):
    """The transposed-convolution kernel that upsamples by `factor` bilinearly (FCN's `get_upsampling_weight`).

    Returns float32 [K, K, out_channels, in_channels] (Keras Conv2DTranspose layout), K = 2 * factor - factor % 2,
    with the 2-D tent filter on the diagonal (channel c -> channel c) and zeros elsewhere: each channel is upsampled
    on its own. With stride `factor` and padding "same" it reproduces `tf.image.resize(..., "bilinear")` away from
    the border (the resize clamps at the edge, the transposed convolution sees zeros).
    """
    out_channels = in_channels if out_channels is None else out_channels
    size = 2 * factor - factor % 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1.0 - np.abs(np.arange(size) - centre) / factor
    tent = np.outer(taps, taps).astype(np.float32)
    kernel = np.zeros((size, size, out_channels, in_channels), np.float32)
    for c in range(min(in_channels, out_channels)):
        kernel[:, :, c, c] = tent
    return kernel


@keras.saving.register_keras_serializable(package="kdet")
class BilinearInitializer(keras.initializers.Initializer):
    """Initialises a Conv2DTranspose kernel [K, K, out, in] to `bilinear_kernel` for factor `factor`."""

    def __init__(self, factor):
        self.factor = int(factor)

    def __call__(self, shape, dtype=None):
        size, _, out_channels, in_channels = shape
        expected = 2 * self.factor - self.factor % 2
        if size != expected:
            raise ValueError(f"a bilinear kernel for factor {self.factor} is {expected} wide, the layer's is {size}")
        return keras.ops.convert_to_tensor(bilinear_kernel(self.factor, in_channels, out_channels), dtype=dtype)

    def get_config(self):
        return {"factor": self.factor}


@keras.saving.register_keras_serializable(package="kdet")
class TransposedConvUpsampling2D(keras.layers.Layer):
    """Learnable upsampling: Conv2DTranspose(filters, kernel 2k - k % 2, stride k, "same"), bilinear at init.

    Args:
        filters: output channels (= input channels for a bilinear start; extra outputs start at 0).
        factor: k, the upsampling factor.
        initializer: "bilinear" (FCN) or any Keras initializer name.
        trainable: False freezes it as a fixed bilinear upsampler (FCN's final upsampling layers).
        use_bias: FCN's deconvolutions have none.
    call(x [B, h, w, C_in], reference=None) -> [B, h * k, w * k, filters], or cut / padded to the reference's size.
    """

    def __init__(self, filters, factor=2, initializer="bilinear", use_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.factor = int(factor)
        self.initializer = initializer
        self.use_bias = bool(use_bias)
        kernel_init = BilinearInitializer(self.factor) if initializer == "bilinear" else initializer
        self.deconv = keras.layers.Conv2DTranspose(self.filters, 2 * self.factor - self.factor % 2,
                                                   strides=self.factor, padding="same", use_bias=self.use_bias,
                                                   kernel_initializer=kernel_init, name="deconv")
        self.deconv.trainable = self.trainable  # Layer(trainable=False) was set before this sublayer existed

    def build(self, input_shape):
        self.deconv.build(input_shape)

    def call(self, inputs, reference=None):
        return _fit_reference(self.deconv(inputs), reference)

    def compute_output_shape(self, inputs_shape, reference_shape=None):
        batch, height, width, _ = inputs_shape
        if reference_shape is not None:
            return (batch, reference_shape[1], reference_shape[2], self.filters)
        return (batch, None if height is None else height * self.factor,
                None if width is None else width * self.factor, self.filters)

    def get_config(self):
        return dict(super().get_config(), filters=self.filters, factor=self.factor, initializer=self.initializer,
                    use_bias=self.use_bias)
