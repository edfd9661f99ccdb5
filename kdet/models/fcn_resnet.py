"""torchvision's FCN-ResNet (fcn_resnet50 / fcn_resnet101): a dilated ResNet (output stride 8) + FCN head.

Not the paper's skip architecture (kdet.models.fcn) but what torchvision ships as "FCN": the last two ResNet stages
dilate instead of downsampling, one head (3x3 conv 2048 -> 512 + BN + ReLU + dropout 0.1 + 1x1 conv to the classes)
scores layer4 at stride 8, and the scores are resized bilinearly (align_corners=False) to the input. An auxiliary
head on layer3 (1024 -> 256 -> classes) adds half its loss during training, as torchvision's reference recipe.

Built as a numerical twin: weights map one to one from a torchvision state dict through
`load_state_dict(model, state)` (kdet.convert.torchvision, `fcn_resnet_table`), and normalisation is
torchvision's ImageNet mean / std (kdet.ops.images.normalize_imagenet), inside the model. Any input size.
"""
import keras
import tensorflow as tf

from kdet.backbones.resnet import BN_EPSILON, BN_MOMENTUM
from kdet.backbones.resnet_dilated import DilatedResNet
from kdet.losses.segmentation import pixel_cross_entropy
from kdet.models.segmentation_base import SemanticSegmenter
from kdet.ops.images import normalize_imagenet


class FCNHead(keras.layers.Layer):
    """torchvision.models.segmentation.fcn.FCNHead: [B, h, w, C_in] -> [B, h, w, classes]."""

    def __init__(self, in_channels, classes, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(in_channels // 4, 3, padding="same", use_bias=False, name="conv")
        self.bn = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="bn")
        self.dropout = keras.layers.Dropout(dropout)
        self.classifier = keras.layers.Conv2D(classes, 1, name="classifier")

    def call(self, x, training=False):
        x = tf.nn.relu(self.bn(self.conv(x), training=training))
        return self.classifier(self.dropout(x, training=training))


@keras.saving.register_keras_serializable(package="kdet")
class FCNResNet(SemanticSegmenter):
    """Args:
        num_classes: foreground classes (torchvision's num_classes = this + 1: 21 for VOC).
        image_size: (H, W), any sizes.
        depth: 50 or 101.
        aux_loss: add the layer3 auxiliary head (weight `aux_weight`) during training.
        base_width: 64 = torchvision; smaller for quick tests.
        class_weights, ignore_index: see SemanticSegmenter.

    call(images [B, H, W, 3] 0..255) -> {"logits": [B, H, W, C]} (+ "aux_logits" when aux_loss).
    """

    loss_names = ("pixel_loss", "aux_loss")

    def __init__(self, num_classes, image_size=(520, 520), max_detections=100, depth=50, aux_loss=True,
                 aux_weight=0.5, base_width=64, class_weights=None, ignore_index=255, **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=max_detections,
                         class_weights=class_weights, ignore_index=ignore_index, **kwargs)
        self.depth, self.aux_loss, self.aux_weight = int(depth), bool(aux_loss), float(aux_weight)
        self.base_width = int(base_width)
        self.backbone = DilatedResNet(self.depth, (False, True, True), base_width=self.base_width, name="backbone")
        channels = self.base_width * 32  # layer4 output: 2048 for torchvision's widths
        self.classifier = FCNHead(channels, self.num_mask_classes, name="classifier")
        self.aux_classifier = FCNHead(channels // 2, self.num_mask_classes, name="aux_classifier") \
            if self.aux_loss else None

    def normalize(self, images):
        """torchvision's preset: (x / 255 - mean) / std."""
        return normalize_imagenet(images, self.compute_dtype)

    def call(self, images, training=False):
        size = tf.shape(images)[1:3]
        features = self.backbone(self.normalize(images), training=training)
        outputs = {"logits": tf.cast(tf.image.resize(self.classifier(features["C5"], training=training), size,
                                                     method="bilinear"), tf.float32)}
        if self.aux_classifier is not None:
            aux = self.aux_classifier(features["C4"], training=training)
            outputs["aux_logits"] = tf.cast(tf.image.resize(aux, size, method="bilinear"), tf.float32)
        return outputs

    def loss_from_targets(self, y, y_pred, images, training=True):
        loss = super().loss_from_targets(y, {"logits": y_pred["logits"]}, images, training)
        if "aux_logits" not in y_pred:
            return loss
        aux = pixel_cross_entropy(y["labels"], y_pred["aux_logits"], class_weights=self.class_weight_vector,
                                  ignore_index=self.ignore_index)
        self.track_loss("aux_loss", aux)
        return loss + self.aux_weight * aux

    def get_config(self):
        return dict(super().get_config(), depth=self.depth, aux_loss=self.aux_loss, aux_weight=self.aux_weight,
                    base_width=self.base_width)

