"""ResNet-18/34/50/101 and ResNeXt-50 32x4d / 101 32x8d built the way torchvision builds them, so torchvision
weights map one to one.

torchvision details that matter for a numerical twin (docs/design.md, "Numerical twins with torchvision"):
  * the stride of a bottleneck block is on its 3x3 conv (ResNet v1.5), not on the first 1x1;
  * torch pads both sides of a strided conv, TF's "same" pads bottom/right only, so every conv and the stem
    max-pool use an explicit ZeroPadding2D + "valid". Zero padding is exact for the max-pool because it follows
    a ReLU (torch pads with -inf, but every input is >= 0);
  * BatchNorm epsilon 1e-5 (Keras defaults to 1e-3), momentum 0.1 in torch = 0.9 in Keras.
Feature sizes are ceil(H / stride) for any input size, as in torchvision.
ResNeXt (Xie et al. 2017) is the bottleneck ResNet with a grouped 3x3 conv (`groups`, `width_per_group`), which
runs as kdet.layers.grouped_conv.GroupedConv2D (Keras' Conv2D(groups=) is ~10x slower on CPU).
"""
import functools

import keras

from kdet.layers.grouped_conv import GroupedConv2D
from kdet.ops.mode import builtins_only_enabled

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
# torchvision's ResNeXt models as ResNet arguments.
RESNEXT = {"resnext50_32x4d": dict(depth=50, groups=32, width_per_group=4),
           "resnext101_32x8d": dict(depth=101, groups=32, width_per_group=8)}
# torchvision initialises convs with kaiming_normal_(mode="fan_out", nonlinearity="relu").
CONV_INIT = functools.partial(keras.initializers.VarianceScaling,
                              2.0, mode="fan_out", distribution="untruncated_normal")


def conv(filters, kernel_size, strides=1, name=None, groups=1):
    """A bias-free conv with torch padding: [ZeroPadding2D(k // 2)] + Conv2D("valid") (GroupedConv2D when
    groups > 1); returns a list of layers."""
    layers = []
    if kernel_size > 1:
        layers.append(keras.layers.ZeroPadding2D(kernel_size // 2, name=None if name is None else f"{name}_pad"))
    if groups > 1:
        layers.append(GroupedConv2D(filters, kernel_size, strides, groups, use_bias=False,
                                    kernel_initializer=CONV_INIT(), name=name))
    else:
        layers.append(keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="valid", use_bias=False,
                                          kernel_initializer=CONV_INIT(), name=name))
    return layers


def strided_pointwise(layer, x, strides):
    """A stride-1 1x1 `layer` (Conv2D, no activation) applied at every `strides`-th pixel as one stride-`strides`
    convolution: [B, H, W, Cin] -> [B, ceil(H / s), ceil(W / s), Cout], equal to layer(x[:, ::s, ::s, :])."""
    x = keras.ops.cast(x, layer.compute_dtype)
    y = keras.ops.conv(x, keras.ops.cast(layer.kernel, layer.compute_dtype), strides=strides, padding="valid")
    return y + keras.ops.cast(layer.bias, y.dtype) if layer.use_bias else y


def batch_norm(name=None, gamma_zero=False):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name,
                                           gamma_initializer="zeros" if gamma_zero else "ones")


class _Block(keras.layers.Layer):
    """Residual block base: runs a list of (layers, bn) pairs and the optional downsample branch."""

    def _run(self, layers, x, training):
        for layer in layers:
            x = layer(x, training=training) if isinstance(layer, keras.layers.BatchNormalization) else layer(x)
        return x

    def _shortcut(self, x, training):
        if self.downsample_conv is None:
            return x
        # A 1x1 conv with stride s reads every s-th pixel: subsample, then a stride-1 1x1 conv (same result).
        # TF 2.21's oneDNN Conv2DBackpropFilter corrupts the heap for some 1x1 stride-2 shapes (e.g. batch 3,
        # 32x40, 8 -> 16 channels: "munmap_chunk(): invalid pointer"); the stride-1 kernel is not affected.
        if self.strides > 1 and builtins_only_enabled():
            # The TFLite trace: one stride-s CONV_2D, which XNNPACK runs. XNNPACK does not take a STRIDED_SLICE
            # with stride 2: it ran in TFLite's reference kernel and split the XNNPACK graph at every downsampling
            # block (benchmarks/profile_stages.py --tflite). Inference only, so the training bug above is moot.
            return self.downsample_bn(strided_pointwise(self.downsample_conv, x, self.strides), training=training)
        if self.strides > 1:
            x = x[:, ::self.strides, ::self.strides, :]
        return self.downsample_bn(self.downsample_conv(x), training=training)


class BasicBlock(_Block):
    """Two 3x3 convs (ResNet-18/34); stride on the first. torch names: conv1, bn1, conv2, bn2, downsample.{0,1}."""

    expansion = 1

    def __init__(self, filters, strides=1, downsample=False, zero_init_residual=False, groups=1, width_per_group=64,
                 **kwargs):
        super().__init__(**kwargs)
        if groups != 1 or width_per_group != 64:
            raise ValueError("BasicBlock (ResNet-18/34) has no groups: ResNeXt needs depth 50 or 101, as in "
                             "torchvision")
        self.conv1 = conv(filters, 3, strides, name="conv1")
        self.bn1 = batch_norm("bn1")
        self.conv2 = conv(filters, 3, name="conv2")
        self.bn2 = batch_norm("bn2", gamma_zero=zero_init_residual)
        self.relu = keras.layers.ReLU()
        self.strides = int(strides)
        self.downsample_conv = conv(filters, 1, name="downsample_conv")[0] if downsample else None
        self.downsample_bn = batch_norm("downsample_bn") if downsample else None

    def call(self, x, training=False):
        y = self.relu(self.bn1(self._run(self.conv1, x, training), training=training))
        y = self.bn2(self._run(self.conv2, y, training), training=training)
        return self.relu(y + self._shortcut(x, training))


class Bottleneck(_Block):
    """1x1 -> 3x3 (stride here, v1.5; grouped in ResNeXt) -> 1x1 x4 (ResNet-50/101). torch names: conv1..3, bn1..3,
    downsample.{0,1}. The inner width is torchvision's int(filters * width_per_group / 64) * groups (= filters for
    ResNet, 2 * filters for ResNeXt-50 32x4d, 4 * filters for ResNeXt-101 32x8d)."""

    expansion = 4

    def __init__(self, filters, strides=1, downsample=False, zero_init_residual=False, groups=1, width_per_group=64,
                 **kwargs):
        super().__init__(**kwargs)
        width = bottleneck_width(filters, groups, width_per_group)
        self.conv1 = conv(width, 1, name="conv1")
        self.bn1 = batch_norm("bn1")
        self.conv2 = conv(width, 3, strides, name="conv2", groups=groups)
        self.bn2 = batch_norm("bn2")
        self.conv3 = conv(filters * 4, 1, name="conv3")
        self.bn3 = batch_norm("bn3", gamma_zero=zero_init_residual)
        self.relu = keras.layers.ReLU()
        self.strides = int(strides)
        self.downsample_conv = conv(filters * 4, 1, name="downsample_conv")[0] if downsample else None
        self.downsample_bn = batch_norm("downsample_bn") if downsample else None

    def call(self, x, training=False):
        y = self.relu(self.bn1(self._run(self.conv1, x, training), training=training))
        y = self.relu(self.bn2(self._run(self.conv2, y, training), training=training))
        y = self.bn3(self._run(self.conv3, y, training), training=training)
        return self.relu(y + self._shortcut(x, training))


def bottleneck_width(filters, groups, width_per_group):
    """torchvision's Bottleneck width: int(planes * width_per_group / 64) * groups (a ValueError if it is 0)."""
    width = int(filters * (width_per_group / 64.0)) * int(groups)
    if width < 1:
        raise ValueError(f"bottleneck width int({filters} * {width_per_group} / 64) * {groups} is 0: raise "
                         "base_width or width_per_group")
    return width


class ResNet(keras.layers.Layer):
    """ResNet feature extractor.

    Args:
        depth: 18, 34, 50 or 101.
        base_width: channels of the stem and of the first stage's 3x3 convs (64 in torchvision); stage i uses
            base_width * 2^i. Smaller values give tiny networks for tests.
        frozen_stages: how many leading stages are frozen (not trainable): 0 = none, 1 = the stem (conv1 + bn1),
            2 = stem + layer1, ..., 5 = everything. torchvision's `trainable_layers=t` is `frozen_stages=5 - t`.
        frozen_bn: keep every BatchNorm in inference mode with fixed statistics and affine terms, as torchvision's
            FrozenBatchNorm2d (the usual choice when fine-tuning with small batches).
        zero_init_residual: start the last BN of each block at gamma 0 (each block starts as the identity).
        groups, width_per_group: ResNeXt's cardinality and per-group width of the bottleneck 3x3 conv (torchvision's
            `groups` / `width_per_group`; 1 / 64 = ResNet). ResNeXt-50 32x4d: depth 50, 32, 4; ResNeXt-101 32x8d:
            depth 101, 32, 8 (`RESNEXT`). Depth 50 / 101 only.

    call(images [B, H, W, 3] normalised) -> {"C2": [B, ceil(H/4), ceil(W/4), c], "C3": .../8, "C4": .../16,
    "C5": .../32}; c = base_width * 2^(i-2) * expansion. Attribute names follow torchvision's (conv1, bn1,
    layer1..layer4, each a list of blocks) so the weight converter can walk them.
    """

    def __init__(self, depth=50, base_width=64, frozen_stages=0, frozen_bn=False, zero_init_residual=False, groups=1,
                 width_per_group=64, **kwargs):
        super().__init__(**kwargs)
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        if not 0 <= frozen_stages <= 5:
            raise ValueError(f"frozen_stages must be in 0..5, got {frozen_stages}")
        self.depth = int(depth)
        self.base_width = int(base_width)
        self.frozen_stages = int(frozen_stages)
        self.frozen_bn = bool(frozen_bn)
        self.zero_init_residual = bool(zero_init_residual)
        self.groups, self.width_per_group = int(groups), int(width_per_group)
        block = Bottleneck if depth >= 50 else BasicBlock
        self.block_type = block
        self.conv1 = conv(self.base_width, 7, 2, name="conv1")
        self.bn1 = batch_norm("bn1")
        self.relu = keras.layers.ReLU()
        self.maxpool = [keras.layers.ZeroPadding2D(1), keras.layers.MaxPooling2D(3, 2, padding="valid")]
        self.stages = []
        in_channels = self.base_width
        for i, count in enumerate(STAGE_BLOCKS[depth]):
            filters = self.base_width * 2 ** i
            strides = 1 if i == 0 else 2
            blocks = []
            for j in range(count):
                first = j == 0
                downsample = first and (strides != 1 or in_channels != filters * block.expansion)
                blocks.append(block(filters, strides if first else 1, downsample, self.zero_init_residual,
                                    self.groups, self.width_per_group, name=f"layer{i + 1}_{j}"))
            in_channels = filters * block.expansion
            self.stages.append(blocks)
        self.out_channels = {f"C{i + 2}": self.base_width * 2 ** i * block.expansion for i in range(4)}
        self._freeze()

    def _freeze(self):
        frozen = ([self.conv1[-1], self.bn1] + [b for s in self.stages for b in s])
        stage_of = [1, 1] + [i + 2 for i, s in enumerate(self.stages) for _ in s]
        for layer, stage in zip(frozen, stage_of):
            if stage <= self.frozen_stages:
                layer.trainable = False
        if self.frozen_bn:
            # Keras 3 runs a BatchNormalization with trainable=False in inference mode: fixed statistics.
            for layer in self._flatten_layers(include_self=False, recursive=True):
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False

    def call(self, x, training=False):
        return run_stem_and_stages(self, x, training)

    def get_config(self):
        return dict(super().get_config(), depth=self.depth, base_width=self.base_width,
                    frozen_stages=self.frozen_stages, frozen_bn=self.frozen_bn,
                    zero_init_residual=self.zero_init_residual, groups=self.groups,
                    width_per_group=self.width_per_group)


def run_stem_and_stages(net, x, training):
    """The forward pass of a ResNet-like layer with torchvision's attributes (conv1 list, bn1, relu, maxpool list,
    stages of blocks): [B, H, W, 3] -> {"C2": stride 4, ..., "C5"}; shared by ResNet and DilatedResNet."""
    for layer in net.conv1:
        x = layer(x)
    x = net.relu(net.bn1(x, training=training))
    for layer in net.maxpool:
        x = layer(x)
    features = {}
    for i, blocks in enumerate(net.stages):
        for block in blocks:
            x = block(x, training=training)
        features[f"C{i + 2}"] = x
    return features
