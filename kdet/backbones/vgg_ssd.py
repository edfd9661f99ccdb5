"""SSD300's VGG-16 feature extractor (Liu et al. 2016), as torchvision's SSDFeatureExtractorVGG builds it.

On top of kdet's VGG-16 (kdet.backbones.vgg, pool3 in ceil mode so 75 -> 38):
  * conv4_3 (stride 8) goes out through an L2 normalisation over channels with a learned per-channel scale
    (initialised to 20): its activations are much larger than the deeper maps', which would dominate the heads;
  * conv5_3 is followed by a 3x3 stride-1 max-pool (pool5 replaced), fc6 as a 3x3 conv with dilation 6 and fc7
    as a 1x1 conv, both ReLU (the fully connected layers of VGG turned into convolutions, subsampled: "atrous");
  * four extra blocks (1x1 conv then 3x3 conv, ReLU): two with stride 2, two "valid" 3x3.
For a 300 x 300 input the six maps are 38, 19, 10, 5, 3 and 1 cells wide.
"""
import keras
import tensorflow as tf

from kdet.backbones.vgg import VGG16_CONVS, VGG16_WIDTHS, VGGBackbone

SSD300_EXTRA_WIDTHS = ((256, 512), (128, 256), (128, 256), (128, 256))
# torchvision: _xavier_init on fc6 / fc7 and the extra layers (uniform Glorot, bias 0)
EXTRA_INIT = keras.initializers.GlorotUniform  # a class: each layer gets its own instance


class L2Norm(keras.layers.Layer):
    """x / max(||x||_2 over channels, 1e-12) * scale, scale [C] learned (torch F.normalize then scale_weight)."""

    def __init__(self, initial_scale=20.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_scale = float(initial_scale)

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],),
                                     initializer=keras.initializers.Constant(self.initial_scale))

    def call(self, x):
        norm = tf.sqrt(tf.reduce_sum(tf.square(x), axis=-1, keepdims=True))
        return x / tf.maximum(norm, 1e-12) * tf.cast(self.scale, x.dtype)

    def get_config(self):
        return dict(super().get_config(), initial_scale=self.initial_scale)


def _strided(filters, kernel_size, strides, padding, name):
    """A conv + ReLU with torch padding: stride-2 3x3 convs get ZeroPadding2D(1) + "valid"."""
    layers = []
    if padding == 1:
        layers.append(keras.layers.ZeroPadding2D(1, name=f"{name}_pad"))
    layers.append(keras.layers.Conv2D(filters, kernel_size, strides, padding="valid", activation="relu",
                                      kernel_initializer=EXTRA_INIT(), name=name))
    return layers


class SSDVGGFeatures(keras.layers.Layer):
    """Args:
        vgg_widths: the five VGG stage widths (64, 128, 256, 512, 512); smaller values give tiny test models.
        fc_width: channels of fc6 / fc7 (1024).
        extra_widths: (1x1 width, 3x3 width) of each extra block.

    call(images [B, 300, 300, 3] normalised) -> list of 6 maps [B, h_k, w_k, c_k]: L2-normalised conv4_3, fc7,
    then the extras. torchvision names (for kdet.convert.torchvision): backbone.features.* (conv1_1 .. conv4_3),
    backbone.scale_weight, backbone.extra.0.{1,3,5} (conv5_x), backbone.extra.0.7.{1,3} (fc6, fc7),
    backbone.extra.{1..4}.{0,2}.
    """

    def __init__(self, vgg_widths=VGG16_WIDTHS, fc_width=1024, extra_widths=SSD300_EXTRA_WIDTHS, **kwargs):
        super().__init__(**kwargs)
        self.vgg_widths = tuple(int(w) for w in vgg_widths)
        self.fc_width = int(fc_width)
        self.extra_widths = tuple(tuple(int(w) for w in pair) for pair in extra_widths)
        if len(self.extra_widths) != 4:
            raise ValueError(f"SSD300 has 4 extra blocks, got extra_widths={extra_widths}")
        # pool3 in ceil mode (torchvision sets ceil_mode on the third max-pool): 75 -> 38
        self.vgg = VGGBackbone(self.vgg_widths, VGG16_CONVS, pool_padding=["valid", "valid", "same", "valid", "valid"],
                               name="vgg")
        self.l2norm = L2Norm(20.0, name="conv4_3_norm")
        self.pool5 = keras.layers.MaxPooling2D(3, 1, padding="same", name="pool5")  # padding ignored by max: = torch
        self.fc6 = keras.layers.Conv2D(self.fc_width, 3, padding="same", dilation_rate=6, activation="relu",
                                       kernel_initializer=EXTRA_INIT(), name="fc6")
        self.fc7 = keras.layers.Conv2D(self.fc_width, 1, activation="relu", kernel_initializer=EXTRA_INIT(), name="fc7")
        self.extras = []
        for i, (reduce, out) in enumerate(self.extra_widths):
            strided = i < 2
            block = [keras.layers.Conv2D(reduce, 1, activation="relu", kernel_initializer=EXTRA_INIT(),
                                         name=f"conv{8 + i}_1")]
            block += _strided(out, 3, 2 if strided else 1, 1 if strided else 0, f"conv{8 + i}_2")
            self.extras.append(block)
        self.out_channels = [self.vgg_widths[3], self.fc_width] + [out for _, out in self.extra_widths]

    @staticmethod
    def feature_sizes(image_size):
        """(h, w) of the six maps: pools 1, 2, 4 round down, pool3 up; stride-2 extras ceil(x / 2), valid 3x3
        extras x - 2. 300 -> 38, 19, 10, 5, 3, 1.

        image_size: (H, W) ints, or scalar int tensors (then the sizes are tensors; -(-a // b) is ceil for both).
        """
        sizes = []
        for size in image_size:
            conv4 = -(-(size // 2 // 2) // 2)
            fc7 = conv4 // 2
            conv8 = -(-fc7 // 2)
            conv9 = -(-conv8 // 2)
            sizes.append((conv4, fc7, conv8, conv9, conv9 - 2, conv9 - 4))
        static = [s for s in sizes[0] + sizes[1] if isinstance(s, int)]
        if static and min(static) < 1:
            raise ValueError(f"image_size {tuple(image_size)} is too small for SSD300's layers (at least 268)")
        return list(zip(*sizes))

    def call(self, x, training=False):
        features = self.vgg(x, training=training)
        outputs = [self.l2norm(features["conv4_3"])]
        x = self.fc7(self.fc6(self.pool5(features["conv5_3"])))
        outputs.append(x)
        for block in self.extras:
            for layer in block:
                x = layer(x)
            outputs.append(x)
        return outputs

    def get_config(self):
        return dict(super().get_config(), vgg_widths=list(self.vgg_widths), fc_width=self.fc_width,
                    extra_widths=[list(p) for p in self.extra_widths])
