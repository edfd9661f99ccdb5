"""ResNet + three up-sampling stages to stride 4: CenterNet's ResNet trunk (Zhou et al. 2019, "Objects as Points",
after Xiao et al. 2018, "Simple Baselines"; reference: xingyizhou/CenterNet src/lib/models/networks/resnet_dcn.py).

Each stage is 3x3 conv (deformable, DCNv2, with bias, as the paper's ResNet-DCN; or a plain 3x3 conv) -> BN -> ReLU
-> 4x4 stride-2 transposed conv (no bias, initialised bilinear per channel) -> BN -> ReLU, with widths 256, 128, 64,
on C5 (stride 32) -> stride 4. The reference's `fill_up_weights` writes the bilinear kernel only into output channel
0 (torch's ConvTranspose2d layout [in, out, k, k]: w[c, 0] for every input c) and leaves the rest at torch's default
init; kdet starts every channel as a bilinear upsampling of itself (kdet.layers.upsampling.BilinearInitializer).

The CenterNet trunk interface (shared with the DLA-34 and Hourglass-104 trunks):
    trunk(x normalised [B, H, W, 3], training) -> list of stride-4 maps [B, H/4, W/4, out_channels]
for H, W multiples of 32 (the model pads its input to them); this trunk returns one map.
"""
import keras

from kdet.backbones.resnet import ResNet, batch_norm
from kdet.layers.deform_conv import DeformConv2D
from kdet.layers.upsampling import TransposedConvUpsampling2D

DECONV_FILTERS = (256, 128, 64)


class ResNetDeconv(keras.layers.Layer):
    """Args:
        depth: ResNet depth, 18 / 34 / 50 / 101 (kdet.backbones.resnet.ResNet, torchvision's layout).
        base_width: ResNet stem width (64; smaller for tests).
        deconv_filters: widths of the three up-sampling stages ((256, 128, 64)).
        deformable: the 3x3 conv before each transposed conv is a DCNv2 (True, the paper's ResNet-DCN) or a
            plain conv (False).
        frozen_stages, frozen_bn: passed to the ResNet.

    call(x [B, H, W, 3] normalised, H and W multiples of 32) -> [[B, H / 4, W / 4, deconv_filters[-1]]].
    """

    def __init__(self, depth=18, base_width=64, deconv_filters=DECONV_FILTERS, deformable=True, frozen_stages=0,
                 frozen_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.depth, self.base_width = int(depth), int(base_width)
        self.deconv_filters = tuple(int(f) for f in deconv_filters)
        if len(self.deconv_filters) != 3:
            raise ValueError(f"deconv_filters needs 3 widths (stride 32 -> 4), got {deconv_filters}")
        self.deformable = bool(deformable)
        self.frozen_stages, self.frozen_bn = int(frozen_stages), bool(frozen_bn)
        self.resnet = ResNet(self.depth, self.base_width, self.frozen_stages, self.frozen_bn, name="resnet")
        self.stages = []
        for i, filters in enumerate(self.deconv_filters):
            self.stages.append([
                self._conv3x3(filters, f"deconv{i}_conv"), batch_norm(f"deconv{i}_conv_bn"), keras.layers.ReLU(),
                TransposedConvUpsampling2D(filters, factor=2, initializer="bilinear", use_bias=False,
                                           name=f"deconv{i}_up"),
                batch_norm(f"deconv{i}_up_bn"), keras.layers.ReLU()])
        self.out_channels = self.deconv_filters[-1]

    def _conv3x3(self, filters, name):
        if self.deformable:  # the reference's DCN(inplanes, planes, 3, stride 1, padding 1, deformable_groups 1)
            return DeformConv2D(filters, kernel_size=3, strides=1, padding="same", dilation_rate=1, groups=1,
                                offset_groups=1, use_bias=True, modulated=True, name=name)
        return keras.layers.Conv2D(filters, 3, padding="same", use_bias=True, name=name)

    def call(self, x, training=False):
        x = self.resnet(x, training=training)["C5"]
        for stage in self.stages:
            for layer in stage:
                x = layer(x, training=training) if isinstance(layer, keras.layers.BatchNormalization) else layer(x)
        return [x]

    def get_config(self):
        return dict(super().get_config(), depth=self.depth, base_width=self.base_width,
                    deconv_filters=list(self.deconv_filters), deformable=self.deformable,
                    frozen_stages=self.frozen_stages, frozen_bn=self.frozen_bn)
