"""Feature Pyramid Network (Lin et al. 2017), as torchvision.ops.FeaturePyramidNetwork builds it.

Lateral 1x1 convs bring every backbone level to `channels`; a top-down pass adds the coarser level, upsampled by
nearest neighbour to the finer level's exact size; a 3x3 conv smooths each sum. Extra coarser levels:
  * "p6p7" (RetinaNet): P6 = 3x3 stride-2 conv of P5 (or of C5), P7 = 3x3 stride-2 conv of ReLU(P6);
  * "maxpool" (Faster R-CNN's "pool" level): P6 = P5 subsampled by a 1x1 stride-2 max-pool;
  * None.
Odd sizes: the stride-2 convs give ceil(H / 2), like the backbone, and the top-down upsampling follows torch's
`F.interpolate(size=..., mode="nearest")` (source index floor(i * in / out)): TF's default nearest resize uses
half-pixel centres and picks a different row for odd sizes, which would break a numerical twin.
"""
import keras
import tensorflow as tf

from kdet.ops.mode import builtins_only_enabled
from kdet.ops.resize import subsample_2x, upsample_nearest

EXTRA_BLOCKS = (None, "p6p7", "maxpool")
# torchvision: nn.init.kaiming_uniform_(w, a=1) = uniform(+-sqrt(3 / fan_in)) = Keras' LeCun uniform.
FPN_INIT = keras.initializers.LecunUniform  # a class: each layer gets its own instance


def upsample_nearest_like(x, reference):
    """x [B, h, w, C] -> [B, H, W, C] with H, W of `reference`, torch "nearest" indexing (floor(i * h / H)).

    kdet.ops.upsample_nearest (a twin XNNPACK delegates for an exact 2x ratio under builtins_only()).
    """
    size = tf.shape(reference)[1:3]
    if reference.shape[1] is not None and reference.shape[2] is not None:
        size = (reference.shape[1], reference.shape[2])
    return upsample_nearest(x, size)


class FPN(keras.layers.Layer):
    """Args:
        input_levels: backbone levels to use, e.g. (3, 4, 5) for C3-C5 (RetinaNet) or (2, 3, 4, 5) (Faster R-CNN).
        channels: output channels of every level (256).
        extra_block: None, "p6p7" or "maxpool" (see the module docstring).
        p6_from: "p5" or "c5": the input of the P6 conv in "p6p7". torchvision's retinanet_resnet50_fpn uses P5
            (its LastLevelP6P7(256, 256)); retinanet_resnet50_fpn_v2 and the paper use C5.

    call({"C2": ..., "C5": ...}) -> {"P<l>": [B, ceil(H / 2^l), ceil(W / 2^l), channels]} for l in input_levels,
    plus P<max+1> (and P<max+2> for "p6p7"). Attribute names mirror torchvision's: inner_blocks (laterals),
    layer_blocks (3x3 outputs), p6, p7.
    """

    def __init__(self, input_levels=(3, 4, 5), channels=256, extra_block="p6p7", p6_from="p5", **kwargs):
        super().__init__(**kwargs)
        if extra_block not in EXTRA_BLOCKS:
            raise ValueError(f"extra_block must be one of {EXTRA_BLOCKS}, got {extra_block!r}")
        if p6_from not in ("p5", "c5"):
            raise ValueError(f"p6_from must be 'p5' or 'c5', got {p6_from!r}")
        self.input_levels = tuple(int(level) for level in input_levels)
        if list(self.input_levels) != list(range(self.input_levels[0], self.input_levels[-1] + 1)):
            raise ValueError(f"input_levels must be consecutive, got {self.input_levels}")
        self.channels = int(channels)
        self.extra_block = extra_block
        self.p6_from = p6_from
        self.inner_blocks = [keras.layers.Conv2D(self.channels, 1, kernel_initializer=FPN_INIT(),
                                                 name=f"inner_{level}") for level in self.input_levels]
        self.layer_blocks = [keras.layers.Conv2D(self.channels, 3, padding="same", kernel_initializer=FPN_INIT(),
                                                 name=f"layer_{level}") for level in self.input_levels]
        self.p6 = self.p7 = self.pool = None
        if extra_block == "p6p7":
            self.p6 = self._strided_conv("p6")
            self.p7 = self._strided_conv("p7")
        elif extra_block == "maxpool":
            self.pool = keras.layers.MaxPooling2D(1, 2, padding="valid")
        last = self.input_levels[-1]
        extra = {"p6p7": 2, "maxpool": 1, None: 0}[extra_block]
        self.output_levels = self.input_levels + tuple(range(last + 1, last + 1 + extra))

    def _strided_conv(self, name):
        """3x3 stride-2 conv with torch's symmetric padding 1: [ZeroPadding2D, Conv2D("valid")]."""
        return [keras.layers.ZeroPadding2D(1, name=f"{name}_pad"),
                keras.layers.Conv2D(self.channels, 3, 2, kernel_initializer=FPN_INIT(), name=name)]

    def call(self, features):
        inputs = [features[f"C{level}"] for level in self.input_levels]
        last_inner = self.inner_blocks[-1](inputs[-1])
        outputs = [self.layer_blocks[-1](last_inner)]
        for i in range(len(inputs) - 2, -1, -1):
            lateral = self.inner_blocks[i](inputs[i])
            last_inner = lateral + upsample_nearest_like(last_inner, lateral)
            outputs.insert(0, self.layer_blocks[i](last_inner))
        if self.extra_block == "p6p7":
            x = outputs[-1] if self.p6_from == "p5" else inputs[-1]
            p6 = self.p6[1](self.p6[0](x))
            p7 = self.p7[1](self.p7[0](tf.nn.relu(p6)))
            outputs += [p6, p7]
        elif self.extra_block == "maxpool":
            outputs.append(self._subsample(outputs[-1]))
        return {f"P{level}": out for level, out in zip(self.output_levels, outputs)}

    def _subsample(self, x):
        """The "maxpool" level, x[:, ::2, ::2]: XNNPACK does not take a 1x1 stride-2 MAX_POOL_2D, so under
        builtins_only() with a static size it is kdet.ops.subsample_2x (same values, delegated ops)."""
        if builtins_only_enabled() and None not in x.shape[1:]:
            return subsample_2x(x)
        return self.pool(x)

    def get_config(self):
        return dict(super().get_config(), input_levels=list(self.input_levels), channels=self.channels,
                    extra_block=self.extra_block, p6_from=self.p6_from)
