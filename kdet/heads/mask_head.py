"""Mask R-CNN's mask branch on pooled RoI features (He et al. 2017, Fig. 4 right; torchvision's MaskRCNNHeads and
MaskRCNNPredictor), plus its loss.

    MaskRCNNHeads      four 3x3 convs (256, "same", ReLU) on the 14 x 14 RoI features: mask_fcn1..mask_fcn4
    MaskRCNNPredictor  2x2 stride-2 transposed conv (256) + ReLU -> 28 x 28, then a 1x1 conv to one logit map per
                       predictor column (0 = background, as the box predictor's): conv5_mask, mask_fcn_logits
    mask_loss          mean binary cross-entropy over the foreground RoIs' 28 x 28 pixels, on the logit map of each
                       RoI's ground-truth class only (the paper's L_mask; torchvision's maskrcnn_loss)

The sublayer names are torchvision's (roi_heads.mask_head.{0..3}.0 -> mask_fcn1..4, roi_heads.mask_predictor.
conv5_mask / mask_fcn_logits), so a state dict maps by name. Initialisation as torchvision: kaiming normal
(fan_out, ReLU gain), zero biases.
"""
import functools

import keras
import tensorflow as tf

KAIMING_FAN_OUT = functools.partial(keras.initializers.VarianceScaling,
                                    2.0, mode="fan_out", distribution="untruncated_normal")


def _merge_rois(x):
    """[B, R, h, w, C] -> ([B * R, h, w, C], (B, R))."""
    shape = tf.shape(x)
    return tf.reshape(x, tf.concat([[-1], shape[2:]], axis=0)), shape[:2]


def _split_rois(x, leading):
    return tf.reshape(x, tf.concat([leading, tf.shape(x)[1:]], axis=0))


@keras.saving.register_keras_serializable(package="kdet")
class MaskRCNNHeads(keras.layers.Layer):
    """Args:
        layers: channels of each 3x3 conv (torchvision (256, 256, 256, 256)).
        dilation: dilation of the convs (1).

    call(pooled [B, R, 14, 14, C]) -> [B, R, 14, 14, layers[-1]]. torch names: mask_fcn1..mask_fcn{len(layers)}.
    """

    def __init__(self, layers=(256, 256, 256, 256), dilation=1, **kwargs):
        super().__init__(**kwargs)
        self.layer_widths = tuple(int(width) for width in layers)
        self.dilation = int(dilation)
        self.convs = [keras.layers.Conv2D(width, 3, padding="same", dilation_rate=self.dilation, activation="relu",
                                          kernel_initializer=KAIMING_FAN_OUT(), name=f"mask_fcn{i + 1}")
                      for i, width in enumerate(self.layer_widths)]

    def build(self, input_shape):
        channels = int(input_shape[-1])
        for conv, width in zip(self.convs, self.layer_widths):
            conv.build((None, None, None, channels))
            channels = width

    def call(self, pooled):
        x, leading = _merge_rois(pooled)
        for conv in self.convs:
            x = conv(x)
        return _split_rois(x, leading)

    def get_config(self):
        return dict(super().get_config(), layers=list(self.layer_widths), dilation=self.dilation)


@keras.saving.register_keras_serializable(package="kdet")
class MaskRCNNPredictor(keras.layers.Layer):
    """Args:
        num_outputs: logit maps, one per predictor column (torchvision: num_classes with background, 91 on COCO).
        channels: width of the transposed conv (256).

    call(x [B, R, h, w, C]) -> logits [B, R, 2h, 2w, num_outputs]. torch names: conv5_mask, mask_fcn_logits.
    """

    def __init__(self, num_outputs, channels=256, **kwargs):
        super().__init__(**kwargs)
        self.num_outputs = int(num_outputs)
        self.channels = int(channels)
        self.conv5_mask = keras.layers.Conv2DTranspose(self.channels, 2, strides=2, activation="relu",
                                                       kernel_initializer=KAIMING_FAN_OUT(), name="conv5_mask")
        self.mask_fcn_logits = keras.layers.Conv2D(self.num_outputs, 1, kernel_initializer=KAIMING_FAN_OUT(),
                                                   name="mask_fcn_logits")

    def build(self, input_shape):
        self.conv5_mask.build((None, None, None, int(input_shape[-1])))
        self.mask_fcn_logits.build((None, None, None, self.channels))

    def call(self, x):
        x, leading = _merge_rois(x)
        return _split_rois(self.mask_fcn_logits(self.conv5_mask(x)), leading)

    def upsample(self, x):
        """conv5_mask + ReLU as a 1x1 conv to 4 x channels and DEPTH_TO_SPACE: x [N, h, w, C] -> [N, 2h, 2w, channels].

        The 2 x 2 stride-2 windows do not overlap, so output pixel (2i + a, 2j + b) is x[i, j] @ kernel[a, b] + bias:
        one matmul and a pixel shuffle (which orders channels (a, b, channel), as the kernel is reshaped here). TFLite
        then runs a CONV_2D with fused ReLU instead of TRANSPOSE_CONV; TensorFlow a 1x1 conv instead of
        Conv2DBackpropInput.
        """
        kernel = tf.cast(self.conv5_mask.kernel, x.dtype)  # [2, 2, channels, C]
        matrix = tf.reshape(tf.transpose(kernel, [3, 0, 1, 2]), [1, 1, kernel.shape[3], 4 * self.channels])
        bias = tf.tile(tf.cast(self.conv5_mask.bias, x.dtype), [4])
        return tf.nn.depth_to_space(tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, matrix, 1, "VALID"), bias)), 2)

    def class_logits(self, x, columns):
        """Inference: x [B, R, h, w, C], columns [B, R] int -> [B, R, 2h, 2w] float32, the logit map of each RoI's own
        predictor column only (as class_maps(call(x), columns), without the other num_outputs - 1 maps: the 1x1
        conv becomes one weight column per RoI and a batched matrix-vector product)."""
        merged, leading = _merge_rois(x)
        features = self.upsample(merged)                                     # [N, 2h, 2w, channels]
        flat_columns = tf.reshape(tf.maximum(columns, 0), [-1])                    # [N]
        kernel = tf.cast(self.mask_fcn_logits.kernel[0, 0], features.dtype)        # [channels, num_outputs]
        weights = tf.gather(tf.transpose(kernel), flat_columns)[:, :, None]       # [N, channels, 1]
        bias = tf.gather(tf.cast(self.mask_fcn_logits.bias, tf.float32), flat_columns)  # [N]
        shape = tf.shape(features)
        pixels = tf.reshape(features, tf.stack([shape[0], shape[1] * shape[2], self.channels]))
        logits = tf.cast(tf.matmul(pixels, weights), tf.float32) + bias[:, None, None]  # [N, 4hw, 1]
        return tf.reshape(logits, tf.concat([leading, shape[1:3]], axis=0))

    def get_config(self):
        return dict(super().get_config(), num_outputs=self.num_outputs, channels=self.channels)


def class_maps(mask_logits, columns):
    """mask_logits [B, R, h, w, C + 1], columns [B, R] int (the predictor column of each RoI) -> [B, R, h, w]."""
    maps = tf.gather(tf.transpose(tf.cast(mask_logits, tf.float32), [0, 1, 4, 2, 3]), tf.maximum(columns, 0),
                     batch_dims=2)
    return maps


def mask_loss(mask_logits, roi_labels, targets):
    """torchvision maskrcnn_loss on fixed shapes.

    Args:
        mask_logits: [B, R, 28, 28, C + 1]; roi_labels: [B, R] int, the ground-truth column of a foreground RoI
            (> 0), 0 or -1 for the others (no mask loss); targets: [B, R, 28, 28] 0 / 1.
    Returns:
        mean sigmoid cross-entropy over the foreground RoIs' pixels, on their own column only; 0 without foreground.
    """
    foreground = tf.cast(roi_labels > 0, tf.float32)
    logits = class_maps(mask_logits, roi_labels)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(targets, tf.float32), logits=logits)
    pixels = tf.cast(tf.shape(logits)[2] * tf.shape(logits)[3], tf.float32)
    total = tf.reduce_sum(tf.reduce_sum(cross_entropy, axis=[2, 3]) * foreground)
    return total / tf.maximum(tf.reduce_sum(foreground) * pixels, 1.0)
