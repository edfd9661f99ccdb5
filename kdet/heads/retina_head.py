"""RetinaNet's class and box subnets, shared by every pyramid level (torchvision's RetinaNetHead).

Each subnet is `num_convs` 3x3 convs of `channels` + ReLU, then a 3x3 conv to A * K outputs (K = classes for the
class subnet, 4 for the box subnet). The class output's bias starts at -log((1 - pi) / pi), pi = 0.01, so every
anchor starts at probability 0.01 and the flood of easy negatives does not swamp the first steps (the paper's
"prior" initialisation); other convs start at N(0, 0.01), biases 0.

Output order: level by level, then row-major location, then anchor, then class: channel a * K + k at (i, j) of a
level is element ((i * W + j) * A + a, k), the order of torchvision's view/permute and of kdet.ops.anchors.
"""
import math

import functools

import keras
import tensorflow as tf

from kdet.ops.layout import flatten_locations

HEAD_INIT = functools.partial(keras.initializers.RandomNormal, stddev=0.01)


class RetinaSubnet(keras.layers.Layer):
    """num_convs x (3x3 conv + ReLU) then a 3x3 conv to num_anchors * num_outputs.

    call([feature [B, H_l, W_l, C] per level]) -> [B, sum_l H_l * W_l * A, num_outputs].
    torch names: conv.{i}.0 (the 3x3 convs), then cls_logits / bbox_reg (the output conv).
    """

    def __init__(self, num_anchors, num_outputs, channels=256, num_convs=4, bias_init=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = int(num_anchors)
        self.num_outputs = int(num_outputs)
        self.channels = int(channels)
        self.num_convs = int(num_convs)
        self.bias_init = float(bias_init)
        self.convs = [keras.layers.Conv2D(self.channels, 3, padding="same", activation="relu",
                                          kernel_initializer=HEAD_INIT(), name=f"conv{i}") for i in range(num_convs)]
        self.output_conv = keras.layers.Conv2D(
            self.num_anchors * self.num_outputs, 3, padding="same", kernel_initializer=HEAD_INIT(),
            bias_initializer=keras.initializers.Constant(self.bias_init), name="output")

    def call(self, features):
        outputs = []
        for x in features:
            for layer in self.convs:
                x = layer(x)
            outputs.append(flatten_locations(self.output_conv(x), self.num_outputs))
        return tf.concat(outputs, axis=1)

    def get_config(self):
        return dict(super().get_config(), num_anchors=self.num_anchors, num_outputs=self.num_outputs,
                    channels=self.channels, num_convs=self.num_convs, bias_init=self.bias_init)


class RetinaHead(keras.layers.Layer):
    """Args:
        num_anchors: A, anchors per location (9).
        num_classes: K, foreground classes (sigmoid per class, no background column).
        channels: width of the subnets (256).
        num_convs: 3x3 convs per subnet (4).
        prior_probability: pi of the class bias initialisation (0.01).

    call([P3, ..., P7]) -> {"cls_logits": [B, N, K], "box_regression": [B, N, 4]} with N = sum_l H_l * W_l * A;
    box_regression is (ty, tx, th, tw) in kdet's delta order, weights (1, 1, 1, 1).
    """

    def __init__(self, num_anchors, num_classes, channels=256, num_convs=4, prior_probability=0.01, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = int(num_anchors)
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.num_convs = int(num_convs)
        self.prior_probability = float(prior_probability)
        prior_bias = -math.log((1.0 - self.prior_probability) / self.prior_probability)
        self.classification = RetinaSubnet(self.num_anchors, self.num_classes, self.channels, self.num_convs,
                                           bias_init=prior_bias, name="classification")
        self.regression = RetinaSubnet(self.num_anchors, 4, self.channels, self.num_convs, name="regression")

    def call(self, features):
        return {"cls_logits": self.classification(features), "box_regression": self.regression(features)}

    def get_config(self):
        return dict(super().get_config(), num_anchors=self.num_anchors, num_classes=self.num_classes,
                    channels=self.channels, num_convs=self.num_convs, prior_probability=self.prior_probability)
