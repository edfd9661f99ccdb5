"""Fully convolutional networks (Long, Shelhamer & Darrell, CVPR 2015): FCN-32s, FCN-16s and FCN-8s on VGG-16.

VGG-16's fully connected layers become convolutions (fc6: 7x7, fc7: 1x1), a 1x1 "score" layer predicts the classes
at stride 32, and upsampling brings the scores back to the input size. The three variants differ in the skips:

    FCN-32s   score_fr (stride 32)                                          -> upsample x32
    FCN-16s   upsample x2 (score_fr) + score_pool4 (stride 16)              -> upsample x16
    FCN-8s    upsample x2 (FCN-16s fusion) + score_pool3 (stride 8)         -> upsample x8

As in the paper: the x2 upsamplings are transposed convolutions initialised to bilinear and learned, the final
upsampling is fixed bilinear (a frozen transposed convolution), the skip scorers start at zero (so FCN-16s starts
as FCN-32s), and fc6 / fc7 have dropout 0.5.

Odd sizes: the paper pads the input by 100 pixels and crops with offsets. Here pooling rounds up ("same", Caffe's
ceil mode) and every upsampled map is cut to the size of the map it is fused with, top-left aligned, which is where
both sides' pixel (0, 0) lies. Any input size works; the logits always have the input's size.
"""
import keras
import tensorflow as tf

from kdet.backbones.vgg import VGG16_CONVS, VGG16_WIDTHS, VGGBackbone
from kdet.errors import ConfigError
from kdet.layers.upsampling import TransposedConvUpsampling2D
from kdet.models.segmentation_base import SemanticSegmenter

VARIANTS = {"32s": 32, "16s": 16, "8s": 8}  # variant -> stride of the finest fused scores = final upsampling


@keras.saving.register_keras_serializable(package="kdet")
class FCN(SemanticSegmenter):
    """Args:
        num_classes: foreground classes (the model predicts num_classes + 1, 0 = background).
        image_size: (H, W), any sizes.
        variant: "32s", "16s" or "8s".
        widths, convs_per_stage, batch_norm: the VGG backbone (VGG-16 by default; narrower for tests / CPU runs).
        fc_width: channels of fc6 / fc7 (4096 in the paper).
        fc_kernel: fc6's kernel (7 in the paper: VGG's 7x7x512 -> 4096 fully connected layer as a convolution).
        dropout: after fc6 and fc7.
        class_weights, ignore_index: see SemanticSegmenter.

    call(images [B, H, W, 3]) -> {"logits": [B, H, W, num_classes + 1]}.
    """

    def __init__(self, num_classes, image_size=(224, 224), max_detections=100, variant="8s", widths=VGG16_WIDTHS,
                 convs_per_stage=VGG16_CONVS, batch_norm=False, fc_width=4096, fc_kernel=7, dropout=0.5,
                 class_weights=None, ignore_index=255, **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=max_detections,
                         class_weights=class_weights, ignore_index=ignore_index, **kwargs)
        if variant not in VARIANTS:
            raise ConfigError(f"FCN variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if len(widths) != 5:
            raise ConfigError(f"FCN needs the five VGG stages (pool3, pool4, pool5); widths has {len(widths)}")
        self.variant = variant
        self.widths = tuple(int(w) for w in widths)
        self.convs_per_stage = tuple(int(c) for c in convs_per_stage)
        self.batch_norm = bool(batch_norm)
        self.fc_width = int(fc_width)
        self.fc_kernel = int(fc_kernel)
        self.dropout = float(dropout)
        classes = self.num_mask_classes
        self.backbone = VGGBackbone(self.widths, self.convs_per_stage, batch_norm=self.batch_norm,
                                    pool_padding="same", name="backbone")
        self.fc6 = keras.layers.Conv2D(self.fc_width, self.fc_kernel, padding="same", activation="relu", name="fc6")
        self.drop6 = keras.layers.Dropout(self.dropout, name="drop6")
        self.fc7 = keras.layers.Conv2D(self.fc_width, 1, activation="relu", name="fc7")
        self.drop7 = keras.layers.Dropout(self.dropout, name="drop7")
        self.score_fr = keras.layers.Conv2D(classes, 1, name="score_fr")
        if variant in ("16s", "8s"):
            self.upscore2 = TransposedConvUpsampling2D(classes, 2, name="upscore2")
            self.score_pool4 = keras.layers.Conv2D(classes, 1, kernel_initializer="zeros", name="score_pool4")
        if variant == "8s":
            self.upscore_pool4 = TransposedConvUpsampling2D(classes, 2, name="upscore_pool4")
            self.score_pool3 = keras.layers.Conv2D(classes, 1, kernel_initializer="zeros", name="score_pool3")
        self.upscore = TransposedConvUpsampling2D(classes, VARIANTS[variant], trainable=False,
                                                  name=f"upscore{VARIANTS[variant]}")

    def call(self, images, training=False):
        features = self.backbone(self.normalize(images), training=training)
        x = self.drop6(self.fc6(features["pool5"]), training=training)
        x = self.drop7(self.fc7(x), training=training)
        scores = self.score_fr(x)                                                   # stride 32
        if self.variant in ("16s", "8s"):
            pool4 = features["pool4"]
            scores = self.upscore2(scores, reference=pool4) + self.score_pool4(pool4)  # stride 16
        if self.variant == "8s":
            pool3 = features["pool3"]
            scores = self.upscore_pool4(scores, reference=pool3) + self.score_pool3(pool3)  # stride 8
        logits = self.upscore(scores, reference=images)
        return {"logits": tf.cast(logits, tf.float32)}

    def skip_shapes(self, images):
        """Shapes of the maps FCN fuses, for inspection: {"pool3", "pool4", "pool5", "logits"} -> TensorShape."""
        features = self.backbone(self.normalize(images))
        shapes = {name: features[name].shape for name in ("pool3", "pool4", "pool5")}
        shapes["logits"] = self(images)["logits"].shape
        return shapes

    def get_config(self):
        return dict(super().get_config(), variant=self.variant, widths=list(self.widths),
                    convs_per_stage=list(self.convs_per_stage), batch_norm=self.batch_norm, fc_width=self.fc_width,
                    fc_kernel=self.fc_kernel, dropout=self.dropout)
