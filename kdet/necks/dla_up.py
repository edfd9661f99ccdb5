"""The DLA-up / IDA-up decoder of CenterNet's DLA-34 (Zhou et al. 2019, src/lib/models/networks/pose_dla_dcn.py).

Iterative deep aggregation (IDA, Yu et al. 2018) merges a list of feature maps from fine to coarse: each coarser map
is projected to the output width by a 3x3 (deformable) conv, upsampled to the finer map's stride by a depthwise
transposed conv, added to the finer (already aggregated) map and refined by another 3x3 (deformable) conv. DLA-up
runs IDA repeatedly, from the coarsest pair down to stride 4; CenterNet's DLASeg then runs one more IDA over the
stride 4, 8 and 16 outputs to get one stride-4 map.

Reference details kept here:
  * every 3x3 conv is a DCNv2 (DeformConv2D, bias, offsets and mask from a zero-initialised 3x3 conv) followed by
    BatchNorm (epsilon 1e-5, torch momentum 0.1) and ReLU; `deformable=False` uses a plain 3x3 conv with bias;
  * the up-sampling is torch's ConvTranspose2d(o, o, 2f, stride f, padding f // 2, groups=o, bias=False) with a
    bilinear kernel (`fill_up_weights`). Keras has no grouped transposed conv, so `DepthwiseTransposedConv2D` does
    the same arithmetic with TFLite builtins: bed-of-nails zero insertion, zero padding, a depthwise conv. Same
    parameter count (o * (2f)^2), same bilinear start; its kernel is torch's flipped in both spatial axes.
Odd sizes (the reference needs multiples of 32): every stride-2 step gives ceil(H / 2), so an upsampled map can be one
row/column larger than the finer map it joins; it is cut at the bottom/right (`fit_to`), top-left aligned.
"""
import keras
import numpy as np
import tensorflow as tf

from kdet.backbones.resnet import BN_EPSILON, BN_MOMENTUM
from kdet.layers.composite import CompositeLayer
from kdet.layers.deform_conv import DeformConv2D
from kdet.layers.upsampling import BedOfNailsUnpooling2D, bilinear_kernel, fit_to


@keras.saving.register_keras_serializable(package="kdet")
class DepthwiseBilinearInitializer(keras.initializers.Initializer):
    """A DepthwiseConv2D kernel [K, K, C, 1] with the bilinear tent of factor `factor` in every channel."""

    def __init__(self, factor):
        self.factor = int(factor)

    def __call__(self, shape, dtype=None):
        size, _, channels, multiplier = shape
        tent = bilinear_kernel(self.factor, 1)[:, :, 0, 0]
        if tent.shape[0] != size or multiplier != 1:
            raise ValueError(f"a depthwise bilinear kernel for factor {self.factor} is [{tent.shape[0]}, "
                             f"{tent.shape[0]}, C, 1], the layer's is {list(shape)}")
        kernel = np.broadcast_to(tent[:, :, None, None], (size, size, channels, 1))
        return keras.ops.convert_to_tensor(np.ascontiguousarray(kernel), dtype=dtype)

    def get_config(self):
        return {"factor": self.factor}


@keras.saving.register_keras_serializable(package="kdet")
class DepthwiseTransposedConv2D(keras.layers.Layer):
    """torch's ConvTranspose2d(C, C, 2f, stride=f, padding=f // 2, groups=C, bias=False), bilinear-initialised.

    call(x [B, h, w, C], reference=None) -> [B, h * f, w * f, C] (even f), or cut to the reference's height/width.
    A transposed conv is a correlation of the zero-inserted input (x at every f-th pixel) padded by K - 1 - p before
    and p after (K = 2f, p = f // 2) with the spatially flipped kernel.
    """

    def __init__(self, factor=2, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)
        size, crop = 2 * self.factor, self.factor // 2
        self.nails = BedOfNailsUnpooling2D(self.factor, name="nails")
        self.pad = keras.layers.ZeroPadding2D(((size - 1 - crop, crop), (size - 1 - crop, crop)), name="pad")
        self.depthwise = keras.layers.DepthwiseConv2D(size, padding="valid", use_bias=False, name="depthwise",
                                                      depthwise_initializer=DepthwiseBilinearInitializer(self.factor))

    def build(self, input_shape):
        batch, height, width, channels = input_shape
        up = (batch, None if height is None else height * self.factor,
              None if width is None else width * self.factor, channels)
        self.depthwise.build(self.pad.compute_output_shape(up))

    def call(self, inputs, reference=None):
        y = self.depthwise(self.pad(self.nails(inputs)))
        if reference is None:
            return y
        shape = tf.shape(reference)
        height = reference.shape[1] if reference.shape[1] is not None else shape[1]
        width = reference.shape[2] if reference.shape[2] is not None else shape[2]
        return fit_to(y, height, width)

    def get_config(self):
        return dict(super().get_config(), factor=self.factor)


class DeformConvBlock(CompositeLayer):
    """CenterNet's DeformConv: 3x3 DCNv2 (or plain conv) with bias -> BatchNorm -> ReLU; [B, H, W, Cin] -> Cout."""

    def __init__(self, filters, deformable=True, **kwargs):
        super().__init__(**kwargs)
        if deformable:
            self.conv = DeformConv2D(filters, kernel_size=3, strides=1, padding="same", dilation_rate=1, groups=1,
                                     offset_groups=1, use_bias=True, modulated=True, name="conv")
        else:
            self.conv = keras.layers.Conv2D(filters, 3, padding="same", use_bias=True, name="conv")
        self.bn = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="bn")

    def call(self, x, training=False):
        return tf.nn.relu(self.bn(self.conv(x), training=training))


class IDAUp(CompositeLayer):
    """Iterative deep aggregation to the stride of the first map.

    Args:
        filters: output width o.
        up_factors: f_i of maps 1..n-1 relative to the map before (f_0 unused, as the reference's `up_f`).
        deformable: DCNv2 or plain 3x3 convs.
    call(layers, start, end) -> a copy of `layers` where, for i in start+1..end-1,
        layers[i] = node_i(up_i(proj_i(layers[i])) + layers[i - 1])   (each [B, H_{i-1}, W_{i-1}, o]).
    Attribute names follow the reference (proj_i, up_i, node_i as lists indexed i - 1).
    """

    def __init__(self, filters, up_factors, deformable=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.proj = [DeformConvBlock(filters, deformable, name=f"proj_{i}") for i in range(1, len(up_factors))]
        self.up = [DepthwiseTransposedConv2D(int(f), name=f"up_{i}") for i, f in enumerate(up_factors) if i > 0]
        self.node = [DeformConvBlock(filters, deformable, name=f"node_{i}") for i in range(1, len(up_factors))]

    def call(self, layers, start, end, training=False):
        layers = list(layers)
        for i in range(start + 1, end):
            k = i - start - 1
            up = self.up[k](self.proj[k](layers[i], training=training), reference=layers[i - 1])
            layers[i] = self.node[k](up + layers[i - 1], training=training)
        return layers


class DLAUp(CompositeLayer):
    """DLA-up: IDA from the coarsest pair down to the first level.

    Args:
        channels: widths of the input maps, fine to coarse (DLA-34 from stride 4: (64, 128, 256, 512)).
        deformable: DCNv2 or plain 3x3 convs.
    call(maps [B, H / 2^k, W / 2^k, channels[k]] fine to coarse) -> list fine to coarse of the same widths:
    [stride-4 aggregate, stride-8 aggregate, ..., the coarsest input unchanged].
    """

    def __init__(self, channels, deformable=True, **kwargs):
        super().__init__(**kwargs)
        channels = [int(c) for c in channels]
        self.channels = channels
        scales = np.array([2 ** i for i in range(len(channels))], dtype=int)
        self.ida = []
        for i in range(len(channels) - 1):
            j = -i - 2
            self.ida.append(IDAUp(channels[j], scales[j:] // scales[j], deformable, name=f"ida_{i}"))
            scales[j + 1:] = scales[j]  # the maps after j now are at j's stride (the reference's bookkeeping)

    def call(self, maps, training=False):
        layers = list(maps)
        out = [layers[-1]]
        for i, ida in enumerate(self.ida):
            layers = ida(layers, start=len(layers) - i - 2, end=len(layers), training=training)
            out.insert(0, layers[-1])
        return out
