"""SSD's per-level prediction convs (torchvision SSDHead / SSDLiteHead).

Unlike RetinaNet's shared subnets, every feature map has its own predictors: a 3x3 conv to A_k * (C + 1) class
logits (column 0 = background, softmax) and one to A_k * 4 box deltas. SSDLite replaces each 3x3 conv by a
depthwise 3x3 + BatchNorm + ReLU6 followed by a 1x1 conv ("separable"), which is what makes it cheap on phones.

Output order: level, then row-major location, then default box, then column, as torchvision's view/permute.
"""
import functools

import keras
import tensorflow as tf

from kdet.backbones.mobilenet_ssdlite import BN_MOMENTUM
from kdet.ops.layout import flatten_locations

# XNNPACK (TFLite's CPU delegate) runs a CONCATENATION of at most 5 inputs; one of SSD's 6 levels ran in TFLite's
# reference kernel and cut the graph (benchmarks/profile_stages.py --tflite). Same values, grouped.
XNNPACK_MAX_CONCAT = 5
# Initializer factories, called once per layer (a shared unseeded instance repeats its values for one shape).
XAVIER = keras.initializers.GlorotUniform  # torchvision SSD: _xavier_init
SSDLITE_INIT = functools.partial(keras.initializers.RandomNormal, stddev=0.03)  # torchvision SSDLite: _normal_init


def grouped_concat(values, axis):
    """tf.concat(values, axis) as nested concatenations of at most XNNPACK_MAX_CONCAT inputs each."""
    while len(values) > XNNPACK_MAX_CONCAT:
        groups = [values[i:i + XNNPACK_MAX_CONCAT] for i in range(0, len(values), XNNPACK_MAX_CONCAT)]
        values = [tf.concat(group, axis=axis) if len(group) > 1 else group[0] for group in groups]
    return tf.concat(values, axis=axis)


class SSDPredictor(keras.layers.Layer):
    """One output per level: call([maps]) -> [B, sum_k h_k * w_k * A_k, num_outputs].

    Args:
        num_anchors: A_k per level.
        num_outputs: columns per default box (C + 1 for classes, 4 for boxes).
        separable: SSDLite's depthwise 3x3 + BN + ReLU6 + 1x1 instead of a 3x3 conv.
    """

    def __init__(self, num_anchors, num_outputs, separable=False, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = tuple(int(a) for a in num_anchors)
        self.num_outputs = int(num_outputs)
        self.separable = bool(separable)
        self.levels = []
        for k, anchors in enumerate(self.num_anchors):
            if self.separable:
                self.levels.append([
                    keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                                 depthwise_initializer=SSDLITE_INIT(), name=f"depthwise{k}"),
                    keras.layers.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM, name=f"bn{k}"),
                    keras.layers.ReLU(6.0),
                    keras.layers.Conv2D(anchors * self.num_outputs, 1, kernel_initializer=SSDLITE_INIT(),
                                        name=f"pointwise{k}")])
            else:
                self.levels.append([keras.layers.Conv2D(anchors * self.num_outputs, 3, padding="same",
                                                        kernel_initializer=XAVIER(), name=f"conv{k}")])

    def call(self, features, training=False):
        if len(features) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} feature maps, got {len(features)}")
        outputs = []
        for x, layers in zip(features, self.levels):
            for layer in layers:
                x = layer(x, training=training) if isinstance(layer, keras.layers.BatchNormalization) else layer(x)
            outputs.append(flatten_locations(x, self.num_outputs))
        return grouped_concat(outputs, axis=1)

    def get_config(self):
        return dict(super().get_config(), num_anchors=list(self.num_anchors), num_outputs=self.num_outputs,
                    separable=self.separable)


class SSDHead(keras.layers.Layer):
    """call([maps]) -> {"cls_logits": [B, N, C + 1] (column 0 background), "box_regression": [B, N, 4]}
    with box deltas (ty, tx, th, tw), coder weights (10, 10, 5, 5)."""

    def __init__(self, num_anchors, num_classes, separable=False, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = tuple(int(a) for a in num_anchors)
        self.num_classes = int(num_classes)
        self.separable = bool(separable)
        self.classification = SSDPredictor(self.num_anchors, self.num_classes + 1, separable, name="classification")
        self.regression = SSDPredictor(self.num_anchors, 4, separable, name="regression")

    def call(self, features, training=False):
        return {"cls_logits": self.classification(features, training=training),
                "box_regression": self.regression(features, training=training)}

    def get_config(self):
        return dict(super().get_config(), num_anchors=list(self.num_anchors), num_classes=self.num_classes,
                    separable=self.separable)
