"""Dilated ResNet (torchvision's `replace_stride_with_dilation`), the backbone of torchvision's FCN / DeepLabV3.

A stage whose stride is replaced by dilation keeps its input resolution; its 3x3 convolutions dilate instead, so
the receptive field still grows as if it had downsampled. torchvision's rule, copied exactly so the weights map one
to one: the first block of a dilated stage uses the previous dilation, the rest the new one (x2 per replaced stage),
and its shortcut's 1x1 convolution no longer strides. With (False, True, True): C2 stride 4, C3 stride 8, C4 and
C5 stride 8 (dilations 2 and 4), the output stride 8 of fcn_resnet50.

Built from kdet.backbones.resnet's pieces (conv / batch_norm / Bottleneck) with the same attribute names as
`ResNet` (conv1, bn1, stages[i][j].conv1..3 / bn1..3 / downsample_*), so `kdet.convert.torchvision.resnet_entries`
maps torchvision weights onto it unchanged.
"""
import keras

from kdet.backbones.resnet import (CONV_INIT, STAGE_BLOCKS, Bottleneck, _Block, batch_norm, conv,
                                   run_stem_and_stages)


def dilated_conv3x3(filters, dilation, name):
    """torch Conv2d(3, padding=dilation, dilation=dilation): symmetric zero padding, then a valid dilated conv."""
    return [keras.layers.ZeroPadding2D(dilation, name=f"{name}_pad"),
            keras.layers.Conv2D(filters, 3, padding="valid", dilation_rate=dilation, use_bias=False,
                                kernel_initializer=CONV_INIT(), name=name)]


class DilatedBottleneck(Bottleneck):
    """torchvision Bottleneck(stride=1, dilation=d): 1x1 -> 3x3 dilated -> 1x1 x4, unstrided 1x1 shortcut. Only the
    layers differ from `Bottleneck` (its `call` runs them)."""

    def __init__(self, filters, dilation, downsample=False, **kwargs):
        _Block.__init__(self, **kwargs)  # not Bottleneck.__init__: it would build a strided conv2 to throw away
        self.conv1 = conv(filters, 1, name="conv1")
        self.bn1 = batch_norm("bn1")
        self.conv2 = dilated_conv3x3(filters, dilation, "conv2")
        self.bn2 = batch_norm("bn2")
        self.conv3 = conv(filters * 4, 1, name="conv3")
        self.bn3 = batch_norm("bn3")
        self.relu = keras.layers.ReLU()
        self.strides = 1
        self.downsample_conv = conv(filters * 4, 1, name="downsample_conv")[0] if downsample else None
        self.downsample_bn = batch_norm("downsample_bn") if downsample else None


@keras.saving.register_keras_serializable(package="kdet")
class DilatedResNet(keras.layers.Layer):
    """ResNet-50/101 whose last stages dilate instead of downsampling.

    Args:
        depth: 50 or 101.
        replace_stride_with_dilation: flags for layer2, layer3, layer4 (torchvision's argument); once a stage
            dilates, the later ones must too (torchvision's models use (F, T, T) and (F, F, T)).
        base_width: 64 in torchvision; smaller for tests.
    call(images [B, H, W, 3] normalised) -> {"C2", "C3", "C4", "C5"} (torchvision's layer1..layer4 outputs).
    """

    def __init__(self, depth=50, replace_stride_with_dilation=(False, True, True), base_width=64, **kwargs):
        super().__init__(**kwargs)
        flags = tuple(bool(f) for f in replace_stride_with_dilation)
        if depth not in (50, 101):
            raise ValueError(f"a dilated ResNet needs Bottleneck blocks: depth 50 or 101, got {depth}")
        if len(flags) != 3 or any(a and not b for a, b in zip(flags, flags[1:])):
            raise ValueError(f"replace_stride_with_dilation must be three flags, False before True, got {flags}")
        self.depth, self.base_width, self.replace_stride_with_dilation = int(depth), int(base_width), flags
        self.conv1 = conv(self.base_width, 7, 2, name="conv1")
        self.bn1 = batch_norm("bn1")
        self.relu = keras.layers.ReLU()
        self.maxpool = [keras.layers.ZeroPadding2D(1), keras.layers.MaxPooling2D(3, 2, padding="valid")]
        self.stages = []
        in_channels, dilation = self.base_width, 1
        for i, count in enumerate(STAGE_BLOCKS[depth]):
            filters = self.base_width * 2 ** i
            dilate = i > 0 and flags[i - 1]
            previous = dilation
            if dilate:
                dilation *= 2
            blocks = []
            for j in range(count):
                downsample = j == 0 and (i > 0 or in_channels != filters * 4)
                name = f"layer{i + 1}_{j}"
                if dilate:
                    blocks.append(DilatedBottleneck(filters, previous if j == 0 else dilation, downsample, name=name))
                else:
                    blocks.append(Bottleneck(filters, 2 if (i > 0 and j == 0) else 1, downsample, name=name))
            in_channels = filters * 4
            self.stages.append(blocks)

    def call(self, x, training=False):
        return run_stem_and_stages(self, x, training)

    def get_config(self):
        return dict(super().get_config(), depth=self.depth, base_width=self.base_width,
                    replace_stride_with_dilation=list(self.replace_stride_with_dilation))
