"""The second stage of Fast / Faster R-CNN on pooled RoI features: representation, predictor, loss, post-processing.

    TwoFCHead      flatten + fc6 + ReLU + fc7 + ReLU (torchvision's TwoMLPHead, 1024 wide; VGG-16's fc6 / fc7, 4096
                   wide with dropout 0.5, is the same layer with other arguments)
    BoxPredictor   (K + 1)-way class logits (0 = background) and class-specific box deltas (ty, tx, th, tw) per class
    fast_rcnn_loss softmax cross-entropy over the sampled RoIs + smooth-L1 (beta 1/9) on the true class's deltas of the
                   foreground RoIs, divided by the number of sampled RoIs (torchvision's fastrcnn_loss)
    postprocess_detections   softmax, per-class decoding (weights 10, 10, 5, 5), clipping, score threshold 0.05,
                   tiny boxes dropped, per-class NMS 0.5, the best K: the kdet detection dict

Flatten order: kdet flattens pooled features [R, h, w, C] as (h, w, c); torchvision flattens (c, h, w). The weight
converter reorders fc6's input rows, so the layers here stay plain Keras.
"""
import functools

import keras
import tensorflow as tf

from kdet.heads.rpn import SMOOTH_L1_BETA
from kdet.losses.box import box_loss
from kdet.ops import clip_boxes, combined_nms, decode_boxes

# torch nn.Linear's default initialisation, which torchvision's TwoMLPHead and FastRCNNPredictor keep: kernel and
# bias uniform in +-1/sqrt(fan_in). Trained from scratch on BCCD, Detectron's predictor init (normal 0.01 / 0.001,
# zero biases) with Keras' Glorot fc6 / fc7 learnt clearly less per step (benchmarks/bench_learning_efficiency.py).
LINEAR_INIT = functools.partial(keras.initializers.VarianceScaling, 1.0 / 3.0, mode="fan_in", distribution="uniform")


def _linear_bias_init(dense, fan_in):
    """Give `dense` (not yet built) torch nn.Linear's bias initialisation for an input of `fan_in` features."""
    bound = 1.0 / float(fan_in) ** 0.5
    dense.bias_initializer = keras.initializers.RandomUniform(-bound, bound)


@keras.saving.register_keras_serializable(package="kdet")
class TwoFCHead(keras.layers.Layer):
    """Args:
        representation_size: width of fc6 and fc7 (1024 torchvision FPN, 4096 VGG-16).
        dropout: dropout after each ReLU while training (0.5 in VGG-16, 0 in torchvision).

    call(pooled [B, R, h, w, C], training) -> [B, R, representation_size]. torch names: fc6, fc7.
    """

    def __init__(self, representation_size=1024, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.representation_size = int(representation_size)
        self.dropout_rate = float(dropout)
        self.fc6 = keras.layers.Dense(self.representation_size, activation="relu", kernel_initializer=LINEAR_INIT(),
                                      name="fc6")
        self.fc7 = keras.layers.Dense(self.representation_size, activation="relu", kernel_initializer=LINEAR_INIT(),
                                      name="fc7")
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def build(self, input_shape):
        flat = 1
        for size in input_shape[2:]:
            flat *= int(size)
        _linear_bias_init(self.fc6, flat)
        _linear_bias_init(self.fc7, self.representation_size)
        self.fc6.build((None, None, flat))
        self.fc7.build((None, None, self.representation_size))

    def call(self, pooled, training=False):
        shape = tf.shape(pooled)
        flat = pooled.shape[2] * pooled.shape[3] * pooled.shape[4]
        x = tf.reshape(pooled, [shape[0], shape[1], flat])
        x = self.dropout(self.fc6(x), training=training)
        return self.dropout(self.fc7(x), training=training)

    def get_config(self):
        return dict(super().get_config(), representation_size=self.representation_size, dropout=self.dropout_rate)


@keras.saving.register_keras_serializable(package="kdet")
class BoxPredictor(keras.layers.Layer):
    """Args:
        num_classes: K foreground classes; the predictor has K + 1 outputs, 0 = background (torchvision's layout).

    call(x [B, R, D]) -> (class_logits [B, R, K + 1], box_regression [B, R, K + 1, 4] (ty, tx, th, tw)).
    torch names: cls_score, bbox_pred.
    """

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.cls_score = keras.layers.Dense(self.num_classes + 1, kernel_initializer=LINEAR_INIT(), name="cls_score")
        self.bbox_pred = keras.layers.Dense(4 * (self.num_classes + 1), kernel_initializer=LINEAR_INIT(),
                                            name="bbox_pred")

    def build(self, input_shape):
        for dense in (self.cls_score, self.bbox_pred):
            _linear_bias_init(dense, input_shape[-1])
        self.cls_score.build(input_shape)
        self.bbox_pred.build(input_shape)

    def call(self, x):
        shape = tf.shape(x)
        deltas = tf.reshape(self.bbox_pred(x), [shape[0], shape[1], self.num_classes + 1, 4])
        return self.cls_score(x), deltas

    def get_config(self):
        return dict(super().get_config(), num_classes=self.num_classes)


def fast_rcnn_loss(class_logits, box_regression, roi_labels, roi_box_targets):
    """torchvision fastrcnn_loss on fixed-shape tensors.

    Args:
        class_logits: [B, S, K + 1]; box_regression: [B, S, K + 1, 4].
        roi_labels: [B, S] int: class + 1, 0 background, -1 empty slot (ignored); roi_box_targets: [B, S, 4].
    Returns:
        (classification_loss, box_loss): mean cross-entropy over the sampled RoIs, and the smooth-L1 sum over
        foreground RoIs (deltas of their own class) divided by the number of sampled RoIs.
    """
    class_logits = tf.cast(class_logits, tf.float32)
    box_regression = tf.cast(box_regression, tf.float32)
    sampled = roi_labels >= 0
    foreground = roi_labels > 0
    count = tf.maximum(tf.reduce_sum(tf.cast(sampled, tf.float32)), 1.0)
    labels = tf.maximum(roi_labels, 0)
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=class_logits)
    classification_loss = tf.reduce_sum(tf.where(sampled, cross_entropy, 0.0)) / count
    own_class = tf.gather(box_regression, labels, batch_dims=2)  # [B, S, 4]
    box = box_loss(own_class - roi_box_targets, "smooth_l1", SMOOTH_L1_BETA)
    regression_loss = tf.reduce_sum(tf.where(foreground, box, 0.0)) / count
    return classification_loss, regression_loss


def postprocess_detections(class_logits, box_regression, rois, roi_valid, image_size, max_detections,
                           box_weights=(10.0, 10.0, 5.0, 5.0), score_threshold=0.05, nms_threshold=0.5,
                           min_size=1e-2, topk_candidates=1000, class_columns=None):
    """torchvision RoIHeads.postprocess_detections as a fixed-shape detection dict.

    torchvision turns every (RoI, class) pair into a candidate box, keeps those scoring above the threshold, runs
    NMS per class and keeps the best `max_detections`. Here the best `topk_candidates` pairs by score go on (the
    same result unless more pairs than that pass the threshold and one past the cut would have survived NMS into
    the final list), each as one shared box whose score sits in its class column: per-class NMS on shared boxes is
    what ONNX's NonMaxSuppression (through tf2onnx) and the TFLite twin take, and it is K times less work.

    Args:
        class_logits: [B, R, K + 1]; box_regression: [B, R, K + 1, 4]; rois: [B, R, 4] yxyx pixels;
        roi_valid: [B, R] bool (padding RoIs never give a detection).
        image_size: (H, W) the boxes are clipped to.
        max_detections: rows of the output (torchvision detections_per_img, 100).
        score_threshold: keep class probabilities strictly above it; min_size: drop boxes with a side below it.
        topk_candidates: (RoI, class) pairs that enter the NMS.
        class_columns: the predictor column of each output class (default 1..K, every non-background column);
            e.g. the 80 category ids of torchvision's 91-column COCO predictor.
    Returns:
        {"boxes": [B, D, 4] yxyx, "scores": [B, D], "classes": [B, D] int32 0-based, "num_detections": [B]}.
    """
    columns = list(range(1, class_logits.shape[-1])) if class_columns is None else [int(c) for c in class_columns]
    num_classes = len(columns)
    probabilities = tf.gather(tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1), columns, axis=-1)
    probabilities = tf.where(roi_valid[..., None], probabilities, 0.0)
    batch = tf.shape(probabilities)[0]
    flat = tf.reshape(probabilities, [batch, -1])
    k = topk_candidates if rois.shape[1] is None else min(topk_candidates, rois.shape[1] * num_classes)
    top_scores, top = tf.math.top_k(flat, k=k)  # [B, k], by descending score, ties by lower index
    roi_index, class_index = top // num_classes, top % num_classes
    class_deltas = tf.gather(tf.cast(box_regression, tf.float32), columns, axis=2)  # [B, R, K, 4]
    deltas = tf.gather(tf.reshape(class_deltas, [batch, -1, 4]), top, batch_dims=1)
    boxes = clip_boxes(decode_boxes(deltas, tf.gather(rois, roi_index, batch_dims=1), box_weights), *image_size)
    heights, widths = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    keep = (heights >= min_size) & (widths >= min_size)
    scores = tf.one_hot(class_index, num_classes) * tf.where(keep, top_scores, 0.0)[..., None]  # [B, k, K]
    return combined_nms(boxes, scores, max_detections, iou_threshold=nms_threshold, score_threshold=score_threshold)
