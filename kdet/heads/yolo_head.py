"""YOLO prediction heads (YOLOv1's fully connected head, YOLOv2's convolutional one) and their post-processing.

Output layouts are those of `kdet.ops.yolo_grid` (per cell, y before x, h before w):
  YOLOv1: [B, S, S, num_boxes * 5 + C], boxes (y, x, sqrt h, sqrt w, confidence) then C class probabilities.
  YOLOv2: [B, S, S, A * (5 + C)], per anchor (t_y, t_x, t_h, t_w, t_o, C class logits).
Both last layers are linear, as in the papers.

`grid_nms` turns decoded grid boxes and per-class scores into the fixed-size detection dict with per-image,
per-class NMS in a single loop-free NMS call (see its docstring for why not `kdet.ops.combined_nms`).
"""
import keras
import tensorflow as tf

from kdet.backbones.darknet import DarknetConv
from kdet.ops.nms import batched_nms

DROPPED_SCORE = -1e30


@keras.saving.register_keras_serializable(package="kdet")
class YoloV1Head(keras.layers.Layer):
    """features [B, S, S, C_in] -> [B, S, S, num_boxes * 5 + num_classes].

    The paper's head: flatten, fully connected `fc_units` (leaky ReLU 0.1), dropout 0.5, then a linear fully connected
    layer to S * S * (B * 5 + C) values reshaped to the grid. The FC layers see the whole image, which is how YOLOv1
    uses global context; they also fix the input size.

    Args:
        grid_size: S.
        num_boxes: B, boxes per cell.
        num_classes: C.
        fc_units: widths of the hidden FC layers ((4096,) in the paper).
        dropout: rate after the last hidden layer (0.5 in the paper).
    """

    def __init__(self, grid_size, num_boxes, num_classes, fc_units=(4096,), dropout=0.5, **kwargs):
        super().__init__(**kwargs)
        self.grid_size, self.num_boxes, self.num_classes = int(grid_size), int(num_boxes), int(num_classes)
        self.fc_units, self.dropout_rate = tuple(int(u) for u in fc_units), float(dropout)
        self.depth = self.num_boxes * 5 + self.num_classes
        self.flatten = keras.layers.Flatten()
        self.hidden = [keras.layers.Dense(units, name=f"fc{i + 1}") for i, units in enumerate(self.fc_units)]
        self.act = keras.layers.LeakyReLU(negative_slope=0.1)
        self.dropout = keras.layers.Dropout(self.dropout_rate)
        self.out = keras.layers.Dense(self.grid_size * self.grid_size * self.depth, name="predictions")

    def build(self, input_shape):
        units = 1
        for size in input_shape[1:]:
            units *= size
        for layer in self.hidden:
            layer.build((None, units))
            units = layer.units
        self.out.build((None, units))

    def call(self, features, training=False):
        x = self.flatten(features)
        for layer in self.hidden:
            x = self.act(layer(x))
        x = self.out(self.dropout(x, training=training))
        return tf.reshape(x, [-1, self.grid_size, self.grid_size, self.depth])

    def get_config(self):
        return dict(super().get_config(), grid_size=self.grid_size, num_boxes=self.num_boxes,
                    num_classes=self.num_classes, fc_units=list(self.fc_units), dropout=self.dropout_rate)


@keras.saving.register_keras_serializable(package="kdet")
class YoloV2Head(keras.layers.Layer):
    """features [B, S_h, S_w, C_in] -> [B, S_h, S_w, num_anchors * (5 + num_classes)].

    yolo-voc.cfg's last two layers: a 3x3 conv of `width` filters (BN, leaky) and a linear 1x1 conv that predicts
    every anchor's (t_y, t_x, t_h, t_w, t_o, class logits). Fully convolutional, so any multiple of the stride works.
    """

    def __init__(self, num_anchors, num_classes, width=1024, batch_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors, self.num_classes, self.width = int(num_anchors), int(num_classes), int(width)
        self.batch_norm = bool(batch_norm)
        self.conv = DarknetConv(self.width, 3, batch_norm=self.batch_norm, name="conv")
        self.predict = keras.layers.Conv2D(self.num_anchors * (5 + self.num_classes), 1, name="predictions")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.predict.build(self.conv.compute_output_shape(input_shape))

    def call(self, features, training=False):
        return self.predict(self.conv(features, training=training))

    def get_config(self):
        return dict(super().get_config(), num_anchors=self.num_anchors, num_classes=self.num_classes,
                    width=self.width, batch_norm=self.batch_norm)


def grid_nms(boxes, scores, max_detections, iou_threshold, score_threshold, pre_nms_top_k=1000):
    """Per-image, per-class NMS of grid predictions -> the detection dict, without a loop.

    Same result as `kdet.ops.combined_nms` (per class: NMS, keep scores > score_threshold; per image: the best
    max_detections by score), restricted to each image's `pre_nms_top_k` best (box, class) pairs. All images and
    classes go through one `kdet.ops.batched_nms` with group id image * C + class, so no group can suppress another.
    Why not `combined_nms`: on the TFLite path it loops (WHILE) over (image, class), and TFLite's int8 calibrator
    reads a pass-through loop tensor that the WHILE kernel has freed and segfaults (tensorflow#75140, open; seen
    with every YOLO model here); without a loop the YOLO models quantise to int8 with the NMS inside.

    Args:
        boxes: [B, N, 4] yxyx pixels; scores: [B, N, C] (static C), e.g. objectness * class probability. N may be
            dynamic (a YOLOv2 grid at an input size the trace does not know).
        max_detections: K; iou_threshold: suppress IoU > it within a class; score_threshold: keep scores > it.
        pre_nms_top_k: candidates per image (by score) that enter NMS; bounds the NMS cost at low thresholds.
    Returns:
        {"boxes": [B, K, 4], "scores": [B, K], "classes": [B, K] int32, "num_detections": [B] int32}, sorted by
        descending score, rows past num_detections 0.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    batch = tf.shape(scores)[0]
    num_classes = scores.shape[2]
    pairs = scores.shape[1] * num_classes if scores.shape[1] is not None else tf.shape(scores)[1] * num_classes
    # Static sizes give Python ints (what TFLite and ONNX export see); dynamic ones scalar tensors.
    top = min(int(pre_nms_top_k), pairs) if isinstance(pairs, int) else tf.minimum(int(pre_nms_top_k), pairs)
    candidate_scores, candidates = tf.math.top_k(tf.reshape(scores, [batch, pairs]), k=top)
    candidate_boxes = tf.gather(boxes, candidates // num_classes, batch_dims=1)  # [B, T, 4]
    candidate_classes = candidates % num_classes  # [B, T]
    group = tf.range(batch)[:, None] * num_classes + candidate_classes
    kept = batched_nms(tf.reshape(candidate_boxes, [-1, 4]), tf.reshape(candidate_scores, [-1]),
                       tf.reshape(group, [-1]), iou_threshold)
    kept_mask = tf.scatter_nd(kept[:, None], tf.ones_like(kept, tf.float32), tf.reshape(batch * top, [1]))
    valid = (tf.reshape(kept_mask, [batch, top]) > 0) & (candidate_scores > score_threshold)
    # A finite "dropped" rank: tf2onnx may turn the final tf.where into arithmetic, and -inf * 0 is NaN there.
    ranked = tf.where(valid, candidate_scores, DROPPED_SCORE)
    shortfall = max_detections - top if isinstance(top, int) else tf.maximum(max_detections - top, 0)
    if not isinstance(shortfall, int) or shortfall > 0:  # top_k needs k <= the candidates
        ranked = tf.pad(ranked, [[0, 0], [0, shortfall]], constant_values=DROPPED_SCORE)
        valid = tf.pad(valid, [[0, 0], [0, shortfall]])
    top_scores, slots = tf.math.top_k(ranked, k=max_detections)
    good = tf.gather(valid, slots, batch_dims=1)
    slots = tf.minimum(slots, top - 1)
    return {
        "boxes": tf.where(good[..., None], tf.gather(candidate_boxes, slots, batch_dims=1), 0.0),
        "scores": tf.where(good, top_scores, 0.0),
        "classes": tf.where(good, tf.gather(candidate_classes, slots, batch_dims=1), 0),
        "num_detections": tf.reduce_sum(tf.cast(good, tf.int32), axis=1),
    }
