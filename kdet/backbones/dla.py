"""DLA-34 (Yu et al. 2018, "Deep Layer Aggregation") and CenterNet's DLA-34 trunk to stride 4.

Built as CenterNet's src/lib/models/networks/pose_dla_dcn.py builds it (the ucbdrive/dla DLA with BasicBlocks):
  base_layer  7x7 conv 3 -> c0, stride 1, BN, ReLU
  level0      levels[0] 3x3 convs c0 -> c0, stride 1          (stride 1)
  level1      levels[1] 3x3 convs c0 -> c1, the first stride 2 (stride 2)
  level2..5   hierarchical deep aggregation trees (`Tree`) of depth levels[i], c_{i-1} -> c_i, stride 2
              (strides 4..32); levels 3-5 are "level roots": their root also aggregates the tree's down-sampled input.
A Tree of depth 1 is two BasicBlocks and a Root (1x1 conv of the concatenated children, BN, ReLU); of depth d, two
trees of depth d - 1 whose second one carries the first one's output (and the level root's input) to its root.
A stride-2 tree takes its residual as a 2x2 max-pool of its input, projected by 1x1 conv + BN when the width changes.

torch details kept (docs/design.md, "Numerical twins with torchvision"): symmetric conv padding (ZeroPadding2D +
"valid"), BatchNorm epsilon 1e-5 / torch momentum 0.1. Odd sizes, which the reference does not support: the stride-2
convs give ceil(H / 2), and so does the max-pool ("same", padded bottom/right), so every level is ceil(H / 2^i).
Initialisation: He normal (fan out), as kdet's ResNet; the reference keeps torch's default.
"""
import keras
import tensorflow as tf

from kdet.backbones.resnet import batch_norm, conv
from kdet.layers.composite import CompositeLayer
from kdet.necks.dla_up import DLAUp, IDAUp

DLA34_LEVELS = (1, 1, 1, 2, 2, 1)
DLA34_CHANNELS = (16, 32, 64, 128, 256, 512)


def _run(layers, x, training):
    for layer in layers:
        x = layer(x, training=training) if isinstance(layer, keras.layers.BatchNormalization) else layer(x)
    return x


class DLABlock(CompositeLayer):
    """DLA's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + residual); the residual comes from the tree
    (x itself when not given). [B, H, W, Cin] -> [B, ceil(H / s), ceil(W / s), filters]."""

    def __init__(self, filters, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = conv(filters, 3, strides, name="conv1")
        self.bn1 = batch_norm("bn1")
        self.conv2 = conv(filters, 3, name="conv2")
        self.bn2 = batch_norm("bn2")

    def call(self, x, residual=None, training=False):
        residual = x if residual is None else residual
        y = tf.nn.relu(self.bn1(_run(self.conv1, x, training), training=training))
        y = self.bn2(_run(self.conv2, y, training), training=training)
        return tf.nn.relu(y + residual)


class Root(CompositeLayer):
    """relu(bn(conv1x1(concat(children, channels)))): [B, H, W, sum C_i] -> [B, H, W, filters]."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.conv = conv(filters, 1, name="conv")[0]
        self.bn = batch_norm("bn")

    def call(self, children, training=False):
        return tf.nn.relu(self.bn(self.conv(tf.concat(children, axis=-1)), training=training))


class Tree(CompositeLayer):
    """Hierarchical deep aggregation tree of depth `levels`.

    Args:
        levels: depth (1 = two blocks and a root).
        filters: output width.
        in_channels: input width (a 1x1 conv + BN projects a depth-1 tree's residual when it differs).
        strides: 1 or 2 (the first block is strided; the residual is a strides x strides max-pool).
        level_root: the root also aggregates the tree's (down-sampled) input.
    call(x [B, H, W, in_channels], children=None) -> [B, ceil(H / s), ceil(W / s), filters].
    """

    def __init__(self, levels, filters, in_channels, strides=1, level_root=False, **kwargs):
        super().__init__(**kwargs)
        if levels < 1:
            raise ValueError(f"a DLA tree needs levels >= 1, got {levels}")
        self.levels = int(levels)
        self.level_root = bool(level_root)
        if levels == 1:
            self.tree1 = DLABlock(filters, strides, name="tree1")
            self.tree2 = DLABlock(filters, 1, name="tree2")
            self.root = Root(filters, name="root")
        else:
            self.tree1 = Tree(levels - 1, filters, in_channels, strides, name="tree1")
            self.tree2 = Tree(levels - 1, filters, filters, 1, name="tree2")
        self.downsample = (keras.layers.MaxPooling2D(strides, strides, padding="same", name="downsample")
                           if strides > 1 else None)
        # The residual only feeds a depth-1 tree's first block: the reference also builds the projection in deeper
        # trees (levels 3 and 4 of DLA-34: 41,728 parameters) whose residual tree1 ignores; no gradient reaches them,
        # so they are left out here.
        self.project = ([conv(filters, 1, name="project_conv")[0], batch_norm("project_bn")]
                        if in_channels != filters and levels == 1 else None)

    def call(self, x, residual=None, children=None, training=False):
        # `residual` is accepted and ignored, as in the reference: a tree computes its own.
        children = [] if children is None else list(children)
        bottom = self.downsample(x) if self.downsample is not None else x
        if self.level_root:
            children.append(bottom)
        if self.levels > 1:
            x1 = self.tree1(x, training=training)
            return self.tree2(x1, children=children + [x1], training=training)
        residual = _run(self.project, bottom, training) if self.project is not None else bottom
        x1 = self.tree1(x, residual, training=training)
        x2 = self.tree2(x1, training=training)
        return self.root([x2, x1] + children, training=training)


class DLA(CompositeLayer):
    """The DLA classifier's feature extractor (no pooling / fc).

    Args:
        levels: blocks per level, DLA-34: (1, 1, 1, 2, 2, 1) (conv counts of levels 0-1, tree depths of 2-5).
        channels: widths of the 6 levels, DLA-34: (16, 32, 64, 128, 256, 512); narrow ones for tests.
    call(x [B, H, W, 3] normalised) -> list of 6 maps [B, ceil(H / 2^i), ceil(W / 2^i), channels[i]], i = 0..5.
    """

    def __init__(self, levels=DLA34_LEVELS, channels=DLA34_CHANNELS, **kwargs):
        super().__init__(**kwargs)
        if len(levels) != 6 or len(channels) != 6:
            raise ValueError(f"DLA needs 6 levels and 6 channel widths, got levels={levels}, channels={channels}")
        self.levels = tuple(int(v) for v in levels)
        self.channels = tuple(int(c) for c in channels)
        self.base_layer = conv(channels[0], 7, name="base_conv") + [batch_norm("base_bn"), keras.layers.ReLU()]
        self.level0 = self._conv_level(channels[0], levels[0], 1, "level0")
        self.level1 = self._conv_level(channels[1], levels[1], 2, "level1")
        self.trees = [Tree(levels[i], channels[i], channels[i - 1], 2, level_root=i > 2, name=f"level{i}")
                      for i in range(2, 6)]

    @staticmethod
    def _conv_level(filters, convs, strides, name):
        layers = []
        for i in range(convs):
            layers += conv(filters, 3, strides if i == 0 else 1, name=f"{name}_conv{i}")
            layers += [batch_norm(f"{name}_bn{i}"), keras.layers.ReLU()]
        return layers

    def call(self, x, training=False):
        x = _run(self.base_layer, x, training)
        outputs = []
        for level in (self.level0, self.level1):
            x = _run(level, x, training)
            outputs.append(x)
        for tree in self.trees:
            x = tree(x, training=training)
            outputs.append(x)
        return outputs

    def get_config(self):
        return dict(super().get_config(), levels=list(self.levels), channels=list(self.channels))


@keras.saving.register_keras_serializable(package="kdet")
class DLA34Trunk(CompositeLayer):
    """CenterNet's DLA-34 trunk (DLASeg without heads): DLA -> DLA-up from stride 4 -> IDA-up of strides 4, 8, 16.

    Args:
        channels: DLA widths (16, 32, 64, 128, 256, 512); the output width is channels[2].
        levels: DLA block counts (1, 1, 1, 2, 2, 1).
        deformable: DCNv2 3x3 convs in the decoder (the reference), or plain 3x3 convs.
    call(x [B, H, W, 3] normalised, training) -> [feature [B, ceil(H / 4), ceil(W / 4), out_channels]] (a list of
    one, the CenterNet trunk interface). out_channels = channels[2] (64).
    """

    first_level, last_level = 2, 5  # down_ratio 4, last_level 5 as CenterNet's get_pose_net

    def __init__(self, channels=DLA34_CHANNELS, levels=DLA34_LEVELS, deformable=True, **kwargs):
        super().__init__(**kwargs)
        self.channels = tuple(int(c) for c in channels)
        self.levels = tuple(int(v) for v in levels)
        self.deformable = bool(deformable)
        self.base = DLA(self.levels, self.channels, name="base")
        self.dla_up = DLAUp(self.channels[self.first_level:], self.deformable, name="dla_up")
        self.ida_up = IDAUp(self.channels[self.first_level],
                            [2 ** i for i in range(self.last_level - self.first_level)], self.deformable,
                            name="ida_up")
        self.out_channels = self.channels[self.first_level]

    def call(self, x, training=False):
        maps = self.dla_up(self.base(x, training=training)[self.first_level:], training=training)
        count = self.last_level - self.first_level
        y = self.ida_up(maps[:count], start=0, end=count, training=training)
        return [y[-1]]

    def get_config(self):
        return dict(super().get_config(), channels=list(self.channels), levels=list(self.levels),
                    deformable=self.deformable)
