"""CenterNet's three heads and its decoding (Zhou et al. 2019, "Objects as Points"; reference: xingyizhou/CenterNet
src/lib/models/networks/msra_resnet.py heads, src/lib/models/decode.py _nms / _topk / ctdet_decode).

Each head is a 3x3 conv (head_conv channels, bias) + ReLU + a 1x1 conv, on the stride-R feature map:
  heatmap  C channels, logits (sigmoid at decode and in the loss); the 1x1's bias starts at -2.19 = logit(0.1) so
           the focal loss does not start swamped by the many background cells (the paper's init)
  size     2 channels (h, w) of the box in output cells
  offset   2 channels (y, x) sub-cell position of the centre, p / R - floor(p / R)
The heatmap convs start as torch's default Conv2d init (uniform, variance 1 / (3 fan_in), as the reference's), the
size / offset convs as the reference's `fill_fc_weights`: normal(std 0.001), bias 0.

Decoding is builtins-only TFLite (MAX_POOL_2D, TOPK_V2, GATHER, FLOOR_DIV / FLOOR_MOD): a cell is a peak when its
logit is >= the 3x3 max-pool of the logits around it (>= its 8 neighbours; pooling the logits instead of the
probabilities keeps peaks apart where float32 sigmoids would tie at 1.0), the top `max_detections` peaks over all
classes and cells are kept, and each is a box centred at (cell + offset) R with size (h, w) R. No NMS.
"""
import functools

import keras
import tensorflow as tf

from kdet.ops.box_ops import clip_boxes

HEATMAP_PRIOR_BIAS = -2.19
TORCH_CONV_INIT = functools.partial(keras.initializers.VarianceScaling,
                                    1.0 / 3.0, mode="fan_in", distribution="uniform")
SMALL_INIT = functools.partial(keras.initializers.RandomNormal, stddev=0.001)  # the size / offset branches


class CenterNetHead(keras.layers.Layer):
    """Args:
        num_classes: C heatmap channels.
        head_conv: channels of each head's 3x3 conv (64 for the ResNet trunks, 256 for DLA-34 / Hourglass in the
            reference); 0 = a single 1x1 conv per head.
        heatmap_bias: initial bias of the heatmap's last conv (-2.19).

    call(feature [B, h, w, D]) -> {"heatmap": [B, h, w, C] logits, "size": [B, h, w, 2], "offset": [B, h, w, 2]}.
    """

    def __init__(self, num_classes, head_conv=64, heatmap_bias=HEATMAP_PRIOR_BIAS, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.head_conv = int(head_conv)
        self.heatmap_bias = float(heatmap_bias)
        self.heatmap = self._branch("heatmap", self.num_classes, TORCH_CONV_INIT,
                                    keras.initializers.Constant(self.heatmap_bias))
        self.size = self._branch("size", 2, SMALL_INIT, "zeros")
        self.offset = self._branch("offset", 2, SMALL_INIT, "zeros")

    def _branch(self, name, outputs, kernel_init, last_bias_init):
        """kernel_init: an initializer factory, called once per layer (an unseeded Keras initializer instance gives
        the same values at every call of one shape: a shared one made the size and offset branches equal)."""
        layers = []
        if self.head_conv > 0:
            layers.append(keras.layers.Conv2D(self.head_conv, 3, padding="same", activation="relu",
                                              kernel_initializer=kernel_init(), name=f"{name}_conv"))
        layers.append(keras.layers.Conv2D(outputs, 1, kernel_initializer=kernel_init(),
                                          bias_initializer=last_bias_init, name=f"{name}_out"))
        return layers

    def build(self, input_shape):
        for branch in (self.heatmap, self.size, self.offset):
            shape = input_shape
            for layer in branch:
                layer.build(shape)
                shape = layer.compute_output_shape(shape)

    def call(self, feature):
        outputs = {}
        for name, branch in (("heatmap", self.heatmap), ("size", self.size), ("offset", self.offset)):
            x = feature
            for layer in branch:
                x = layer(x)
            outputs[name] = x
        return outputs

    def get_config(self):
        return dict(super().get_config(), num_classes=self.num_classes, head_conv=self.head_conv,
                    heatmap_bias=self.heatmap_bias)


def centernet_decode(heatmap_logits, size, offset, image_size, stride=4, max_detections=100, score_threshold=0.0):
    """Peaks of the heatmap -> kdet's detection dict.

    heatmap_logits [B, h, w, C], size [B, h, w, 2] (h, w) cells, offset [B, h, w, 2] (y, x) cells;
    image_size: (H, W) of the input (ints or scalar tensors), boxes are clipped to it; stride: R.
    Returns {"boxes": [B, K, 4] yxyx input pixels, "scores": [B, K] sigmoid of the peak, "classes": [B, K] int32,
    "num_detections": [B] int32}, K = max_detections, peaks sorted by score; only scores > score_threshold count
    (non-peaks score 0, so a map with fewer than K peaks reports fewer); rows >= num_detections are 0.
    """
    logits = tf.cast(heatmap_logits, tf.float32)
    shape = tf.shape(logits)
    batch, width, classes = shape[0], shape[2], shape[3]
    pooled = tf.nn.max_pool2d(logits, 3, 1, "SAME")
    scores = tf.where(logits >= pooled, tf.sigmoid(logits), 0.0)
    flat = tf.reshape(scores, [batch, -1])
    cells = shape[1] * width
    # K zeros appended when the map may hold fewer than K (cell, class) pairs, so top_k always has K entries. Only
    # then: the int8 converter quantises a zeros constant concatenated to the float decode (a type mismatch).
    if flat.shape[1] is None or flat.shape[1] < max_detections:
        flat = tf.pad(flat, [[0, 0], [0, max_detections]])
    top_scores, top = tf.math.top_k(flat, k=max_detections)
    cell = tf.minimum(top // classes, cells - 1)
    label = top % classes
    y = tf.cast(cell // width, tf.float32)
    x = tf.cast(cell % width, tf.float32)
    size = tf.gather(tf.reshape(tf.cast(size, tf.float32), [batch, cells, 2]), cell, batch_dims=1)
    offset = tf.gather(tf.reshape(tf.cast(offset, tf.float32), [batch, cells, 2]), cell, batch_dims=1)
    center_y, center_x = (y + offset[..., 0]) * stride, (x + offset[..., 1]) * stride
    half_h, half_w = size[..., 0] * (stride / 2.0), size[..., 1] * (stride / 2.0)
    boxes = tf.stack([center_y - half_h, center_x - half_w, center_y + half_h, center_x + half_w], axis=-1)
    boxes = clip_boxes(boxes, *image_size)
    keep = top_scores > score_threshold
    return {"boxes": tf.where(keep[..., None], boxes, 0.0),
            "scores": tf.where(keep, top_scores, 0.0),
            "classes": tf.where(keep, label, 0),
            "num_detections": tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)}
