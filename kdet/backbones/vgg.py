"""VGG-16 (Simonyan & Zisserman, 2015): five stages of 3x3 convolutions + ReLU, each closed by a 2x2 max-pool.

The backbone of FCN, SSD and the original Faster R-CNN. It returns every stage's last convolution and its pooled
output by name, so each detector takes what its paper takes:

    FCN          pool3 (stride 8), pool4 (16), pool5 (32), then its own fc6 / fc7 as convolutions
    SSD          conv4_3 (stride 8) and pool5 -> its dilated fc6 / fc7 (added by the SSD model, not here)
    Faster R-CNN conv5_3 (stride 16, pool5 is dropped)

Layer names follow `keras.applications.VGG16` (block1_conv1 ... block5_conv3), so ImageNet weights load by name
where they are available (`load_weights(..., by_name)` or a torchvision state_dict through kdet.convert).
"""
import keras

VGG16_WIDTHS = (64, 128, 256, 512, 512)
VGG16_CONVS = (2, 2, 3, 3, 3)


@keras.saving.register_keras_serializable(package="kdet")
class VGGBackbone(keras.layers.Layer):
    """images [B, H, W, 3] (already normalised) -> dict of named feature maps:

        "conv{i}_{n_i}": [B, H / 2^(i-1), W / 2^(i-1), widths[i-1]]   the last convolution of stage i (pre-pool)
        "pool{i}":       [B, H / 2^i, W / 2^i, widths[i-1]]           stage i after its max-pool
    (sizes round up with pool_padding="same", down with "valid").

    Args:
        widths: channels of the five stages (VGG-16: 64, 128, 256, 512, 512; smaller for fast tests).
        convs_per_stage: 3x3 convolutions per stage (VGG-16: 2, 2, 3, 3, 3).
        batch_norm: conv + BN + ReLU (torchvision's vgg16_bn) instead of conv + bias + ReLU.
        pool_padding: "same" rounds odd sizes up (Caffe's ceil mode, what FCN was trained with, and what keeps
            skip connections alignable for odd input sizes), "valid" rounds down (torchvision's default). A list
            gives one value per stage (SSD uses ceil mode on stage 3 only).
    """

    def __init__(self, widths=VGG16_WIDTHS, convs_per_stage=VGG16_CONVS, batch_norm=False, pool_padding="same",
                 **kwargs):
        super().__init__(**kwargs)
        self.widths = tuple(int(w) for w in widths)
        self.convs_per_stage = tuple(int(n) for n in convs_per_stage)
        if len(self.widths) != len(self.convs_per_stage):
            raise ValueError(f"widths {self.widths} and convs_per_stage {self.convs_per_stage} differ in length")
        self.batch_norm = bool(batch_norm)
        paddings = [pool_padding] * len(self.widths) if isinstance(pool_padding, str) else list(pool_padding)
        if len(paddings) != len(self.widths) or any(p not in ("same", "valid") for p in paddings):
            raise ValueError(f"pool_padding must be 'same', 'valid' or one of them per stage, got {pool_padding!r}")
        self.pool_padding = pool_padding if isinstance(pool_padding, str) else list(paddings)
        self.stages = []
        for i, (width, count) in enumerate(zip(self.widths, self.convs_per_stage), start=1):
            convs = []
            for j in range(1, count + 1):
                conv = keras.layers.Conv2D(width, 3, padding="same", use_bias=not self.batch_norm,
                                           activation=None if self.batch_norm else "relu", name=f"block{i}_conv{j}")
                norm = keras.layers.BatchNormalization(name=f"block{i}_bn{j}") if self.batch_norm else None
                convs.append((conv, norm))
            pool = keras.layers.MaxPooling2D(2, padding=paddings[i - 1], name=f"block{i}_pool")
            self.stages.append((convs, pool))

    def build(self, input_shape):
        shape = tuple(input_shape)
        for convs, pool in self.stages:
            for conv, norm in convs:
                conv.build(shape)
                shape = conv.compute_output_shape(shape)
                if norm is not None:
                    norm.build(shape)
            shape = pool.compute_output_shape(shape)

    def call(self, x, training=False):
        features = {}
        for i, (convs, pool) in enumerate(self.stages, start=1):
            for conv, norm in convs:
                x = conv(x)
                if norm is not None:
                    x = keras.activations.relu(norm(x, training=training))
            features[f"conv{i}_{len(convs)}"] = x
            x = pool(x)
            features[f"pool{i}"] = x
        return features

    def get_config(self):
        return dict(super().get_config(), widths=list(self.widths), convs_per_stage=list(self.convs_per_stage),
                    batch_norm=self.batch_norm, pool_padding=self.pool_padding)
