"""SSDLite's feature extractor (Sandler et al. 2018, "MobileNetV2", section 6.2): MobileNetV2 from
`keras.applications` (random init) + four cheap extra blocks, as torchvision's ssdlite320 does with MobileNetV3.

Outputs six maps: the expansion layer of block 13 (stride 16, before its depthwise conv, as the paper attaches the
first SSDLite layer), the last 1x1 conv (stride 32), then four extra blocks of 1x1 conv (half width) ->
depthwise 3x3 stride 2 -> 1x1 conv, each with BatchNorm + ReLU6.

MobileNetV2 is built for any input size ((None, None, 3)): its stride-2 depthwise convs then pad (0, 1), so after the
first conv ("same", ceil(size / 2)) each stride-2 step gives floor(size / 2); the extra blocks pad (1, 1), ceil.
(keras.applications picks (1, 1) padding for odd sizes only when the size is fixed at construction; with sizes that
are multiples of 32 both give the same maps.)
"""
import keras

SSDLITE_EXTRA_WIDTHS = (512, 256, 256, 128)
# BatchNorm momentum of every layer, MobileNetV2's included. keras.applications builds MobileNetV2 with 0.999, right
# for ImageNet-length schedules; after a CPU budget of ~300 steps its moving statistics are still 0.999^300 = 74 %
# their initial (0, 1), so inference mode sees other activations than training did: measured on BCCD, an SSDLite
# trained 327 steps scored mAP@0.5 0.0006. 0.97 is torchvision's ssdlite320 (torch momentum 0.03).
BN_MOMENTUM = 0.97
C4_LAYER = "block_13_expand_relu"
C5_LAYER = "out_relu"


def _conv_bn_relu6(filters, kernel_size, strides=1, depthwise=False, name=None):
    if depthwise:
        conv = [keras.layers.ZeroPadding2D(1, name=f"{name}_pad"),
                keras.layers.DepthwiseConv2D(3, strides, padding="valid", use_bias=False, name=name)]
    else:
        conv = [keras.layers.Conv2D(filters, kernel_size, use_bias=False, name=name)]
    return conv + [keras.layers.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM, name=f"{name}_bn"),
                   keras.layers.ReLU(6.0)]


class MobileNetSSDLiteFeatures(keras.layers.Layer):
    """Args:
        alpha: MobileNetV2 width multiplier (1.0; 0.35 for tiny test models).
        extra_widths: output channels of the four extra blocks.

    call(images [B, H, W, 3] in [-1, 1], any H, W) -> list of 6 maps, sizes `feature_sizes((H, W))`.
    """

    def __init__(self, alpha=1.0, extra_widths=SSDLITE_EXTRA_WIDTHS, **kwargs):
        super().__init__(**kwargs)
        self.alpha = float(alpha)
        self.extra_widths = tuple(int(w) for w in extra_widths)
        mobilenet = keras.applications.MobileNetV2(input_shape=(None, None, 3), alpha=self.alpha,
                                                   include_top=False, weights=None)
        self.mobilenet = keras.Model(mobilenet.input, [mobilenet.get_layer(C4_LAYER).output,
                                                       mobilenet.get_layer(C5_LAYER).output], name="mobilenet_v2")
        for layer in self.mobilenet.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = BN_MOMENTUM
        self.extras = []
        for i, width in enumerate(self.extra_widths):
            self.extras.append(_conv_bn_relu6(width // 2, 1, name=f"extra{i}_reduce")
                               + _conv_bn_relu6(width // 2, 3, 2, depthwise=True, name=f"extra{i}_depthwise")
                               + _conv_bn_relu6(width, 1, name=f"extra{i}_expand"))
        self.out_channels = [int(o.shape[-1]) for o in self.mobilenet.outputs] + list(self.extra_widths)

    @staticmethod
    def feature_sizes(image_size, num_extras=4):
        """(h, w) of the six maps: c4 = floor(floor(floor(ceil(size / 2) / 2) / 2) / 2) (stride 16), c5 = floor(c4 / 2),
        then ceil(x / 2) per extra block. image_size: ints or scalar int tensors (sizes of the same kind)."""
        c4 = [-(-s // 2) // 2 // 2 // 2 for s in image_size]
        sizes = [tuple(c4), tuple(s // 2 for s in c4)]
        for _ in range(num_extras):
            sizes.append(tuple(-(-s // 2) for s in sizes[-1]))
        return sizes

    def call(self, x, training=False):
        c4, x = self.mobilenet(x, training=training)
        outputs = [c4, x]
        for block in self.extras:
            for layer in block:
                x = layer(x, training=training) if isinstance(layer, keras.layers.BatchNormalization) else layer(x)
            outputs.append(x)
        return outputs

    def get_config(self):
        return dict(super().get_config(), alpha=self.alpha, extra_widths=list(self.extra_widths))
