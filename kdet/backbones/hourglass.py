"""Hourglass-104 (Newell et al. 2016; CornerNet / CenterNet's "large hourglass"), as CenterNet's
src/lib/models/networks/large_hourglass.py builds it.

  pre      7x7 conv 3 -> 128, stride 2, BN, ReLU; residual 128 -> 256, stride 2          (stride 4)
  stack k  hourglass (5 levels down and up, widths (256, 256, 384, 384, 384, 512), residual counts
           (2, 2, 2, 2, 2, 4)), then cnv: 3x3 conv -> 256, BN, ReLU = the stack's output (heads go on it)
  between  inter = residual(relu(bn(1x1(inter)) + bn(1x1(cnv))))   (the next stack's input)
A hourglass level: up1 = modules x residual at this width; low = a stride-2 residual to the next width (CenterNet
down-samples with strided residuals, no max-pool) + modules - 1 residuals, the next level (or, at the bottom, the
last modules count of residuals), modules - 1 residuals and one back to this width, nearest 2x up-sampling; out =
up1 + up. The residual is ResNet's BasicBlock (3x3, 3x3, 1x1 + BN skip when stride or width change).

Intermediate supervision: call returns both stacks' outputs; the model applies its heads to each and sums the
losses. Odd sizes: strided convs give ceil(H / 2); the up-sampled map is cut at the bottom/right to up1's size.
"""
import keras
import tensorflow as tf

from kdet.backbones.resnet import BasicBlock, batch_norm, conv
from kdet.layers.composite import CompositeLayer
from kdet.layers.upsampling import NearestUnpooling2D

HOURGLASS104_DIMS = (256, 256, 384, 384, 384, 512)
HOURGLASS104_MODULES = (2, 2, 2, 2, 2, 4)


def residual(in_channels, filters, strides=1, name=None):
    """large_hourglass.py's `residual` = ResNet's BasicBlock; the skip is a 1x1 conv + BN when shape changes."""
    return BasicBlock(filters, strides, downsample=strides != 1 or in_channels != filters, name=name)


def _run(layers, x, training):
    for layer in layers:
        x = layer(x, training=training) if isinstance(layer, (keras.layers.BatchNormalization, BasicBlock)) \
            else layer(x)
    return x


class HourglassModule(CompositeLayer):
    """One hourglass (CenterNet's kp_module), recursive over len(dims) - 1 levels.

    Args:
        dims: widths from this level down, e.g. (256, 256, 384, 384, 384, 512).
        modules: residuals per level, same length as dims.
    call(x [B, H, W, dims[0]]) -> [B, H, W, dims[0]].
    """

    def __init__(self, dims, modules, **kwargs):
        super().__init__(**kwargs)
        if len(dims) != len(modules) or len(dims) < 2:
            raise ValueError(f"dims and modules need the same length >= 2, got {dims} and {modules}")
        current, lower = int(dims[0]), int(dims[1])
        count = int(modules[0])
        self.up1 = [residual(current, current, name=f"up1_{i}") for i in range(count)]
        self.low1 = [residual(current if i == 0 else lower, lower, 2 if i == 0 else 1, name=f"low1_{i}")
                     for i in range(count)]
        if len(dims) > 2:
            self.low2 = [HourglassModule(dims[1:], modules[1:], name="low2")]
        else:
            self.low2 = [residual(lower, lower, name=f"low2_{i}") for i in range(int(modules[1]))]
        self.low3 = [residual(lower, lower if i < count - 1 else current, name=f"low3_{i}") for i in range(count)]
        self.up2 = NearestUnpooling2D(2, name="up2")

    def call(self, x, training=False):
        up1 = _run(self.up1, x, training)
        low = _run(self.low1, x, training)
        for layer in self.low2:
            low = layer(low, training=training)
        low = _run(self.low3, low, training)
        return up1 + self.up2(low, reference=up1)


@keras.saving.register_keras_serializable(package="kdet")
class Hourglass104Trunk(CompositeLayer):
    """CenterNet's Hourglass-104 without heads (HourglassNet / exkp).

    Args:
        num_stacks: hourglasses in sequence (2 = Hourglass-104).
        dims: hourglass widths per level, (256, 256, 384, 384, 384, 512); the input must be a multiple of
            4 * 2^(len(dims) - 1) = 128 only for the reference - here any size works.
        modules: residuals per level, (2, 2, 2, 2, 2, 4).
        pre_channels: width of the 7x7 stem conv (128).
        cnv_dim: width of each stack's output (256).
    call(x [B, H, W, 3] normalised, training) -> list of num_stacks maps [B, ceil(H / 4), ceil(W / 4), cnv_dim]
    (intermediate supervision: heads go on every one; the last is the prediction). out_channels = cnv_dim.
    """

    def __init__(self, num_stacks=2, dims=HOURGLASS104_DIMS, modules=HOURGLASS104_MODULES, pre_channels=128,
                 cnv_dim=256, **kwargs):
        super().__init__(**kwargs)
        if num_stacks < 1:
            raise ValueError(f"num_stacks must be >= 1, got {num_stacks}")
        self.num_stacks = int(num_stacks)
        self.dims = tuple(int(d) for d in dims)
        self.modules = tuple(int(m) for m in modules)
        self.pre_channels = int(pre_channels)
        self.cnv_dim = int(cnv_dim)
        width = self.dims[0]
        self.pre = conv(self.pre_channels, 7, 2, name="pre_conv") + [batch_norm("pre_bn"), keras.layers.ReLU()] + \
            [residual(self.pre_channels, width, 2, name="pre_residual")]
        self.kps = [HourglassModule(self.dims, self.modules, name=f"kps_{i}") for i in range(self.num_stacks)]
        self.cnvs = [conv(self.cnv_dim, 3, name=f"cnvs_{i}") + [batch_norm(f"cnvs_{i}_bn"), keras.layers.ReLU()]
                     for i in range(self.num_stacks)]
        self.inters = [residual(width, width, name=f"inters_{i}") for i in range(self.num_stacks - 1)]
        self.inters_ = [[conv(width, 1, name=f"inters__{i}")[0], batch_norm(f"inters__{i}_bn")]
                        for i in range(self.num_stacks - 1)]
        self.cnvs_ = [[conv(width, 1, name=f"cnvs__{i}")[0], batch_norm(f"cnvs__{i}_bn")]
                      for i in range(self.num_stacks - 1)]
        self.out_channels = self.cnv_dim

    def call(self, x, training=False):
        inter = _run(self.pre, x, training)
        outputs = []
        for i in range(self.num_stacks):
            cnv = _run(self.cnvs[i], self.kps[i](inter, training=training), training)
            outputs.append(cnv)
            if i < self.num_stacks - 1:
                inter = tf.nn.relu(_run(self.inters_[i], inter, training) + _run(self.cnvs_[i], cnv, training))
                inter = self.inters[i](inter, training=training)
        return outputs

    def get_config(self):
        return dict(super().get_config(), num_stacks=self.num_stacks, dims=list(self.dims),
                    modules=list(self.modules), pre_channels=self.pre_channels, cnv_dim=self.cnv_dim)
