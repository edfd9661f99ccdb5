"""Classification + localization: the lecture's first detector (one object per image).

A backbone, then two fully connected heads on the flattened features: a C-way class head trained with cross-entropy
and a box head that regresses the box (x, y, w, h) with an L2 loss (smooth-L1 as an option). It answers "what and
where" for a single object; "how many?" is what the detectors after it solve.
"""
import keras
import tensorflow as tf

from kdet.backbones.simple import SimpleBackbone
from kdet.models.base import Detector
from kdet.ops.images import resize_to


@keras.saving.register_keras_serializable(package="kdet")
class ClassLocModel(Detector):
    """Args:
        num_classes: C.
        image_size: (H, W) of the network; inputs of other sizes are resized to it, boxes come back in the input's
            pixels.
        widths: channels of the backbone stages.
        hidden: width of the shared fully connected layer.
        box_loss: "l2" (the lecture's) or "smooth_l1" (Huber, delta 1, on the normalised box).
        box_loss_weight: weight of the box loss against the class loss.
        dropout: dropout rate after the shared fully connected layer.

    call(images [B, H, W, 3]) -> {"class_logits": [B, C], "boxes": [B, 4]} where boxes are (cy, cx, h, w) relative to
    the image, in [0, 1] (the lecture's (x, y, w, h) in kdet's y-first order).
    """

    loss_names = ("class_loss", "box_loss")

    def __init__(self, num_classes, image_size=(128, 128), max_detections=1, widths=(16, 32, 64, 128, 128), hidden=128,
                 box_loss="l2", box_loss_weight=20.0, dropout=0.3, **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=1, **kwargs)
        if box_loss not in ("l2", "smooth_l1"):
            raise ValueError(f"box_loss must be 'l2' or 'smooth_l1', got {box_loss!r}")
        self.widths = tuple(int(w) for w in widths)
        self.hidden = int(hidden)
        self.box_loss = box_loss
        self.box_loss_weight = float(box_loss_weight)
        self.dropout_rate = float(dropout)
        self.backbone = SimpleBackbone(self.widths, convs_per_stage=1, name="backbone")
        self.flatten = keras.layers.Flatten()  # keeps where things are; a global pool would throw it away
        self.fc = keras.layers.Dense(self.hidden, activation="relu", name="fc")
        self.dropout = keras.layers.Dropout(dropout)
        self.class_head = keras.layers.Dense(num_classes, name="class_head")
        self.box_head = keras.layers.Dense(4, activation="sigmoid", name="box_head")
        self.box_loss_fn = (keras.losses.MeanSquaredError(reduction=None) if box_loss == "l2"
                            else keras.losses.Huber(delta=1.0, reduction=None))
        self.iou_tracker = keras.metrics.Mean(name="iou")

    def call(self, images, training=False):
        # The fully connected head fixes the network's size: other inputs are resized to it (boxes are relative).
        features = self.backbone(self.normalize(resize_to(images, self.image_size)), training=training)
        x = self.dropout(self.fc(self.flatten(features[f"C{len(self.widths)}"])), training=training)
        return {"class_logits": tf.cast(self.class_head(x), tf.float32), "boxes": tf.cast(self.box_head(x), tf.float32)}

    def encode_targets(self, targets, image_size):
        """The first (only) object of each image: label [B], box (cy, cx, h, w) relative [B, 4], weight [B]."""
        # One padding row so that a batch with no object at all (M = 0) still has a first row, of label -1.
        boxes = tf.pad(targets["boxes"], [[0, 0], [0, 1], [0, 0]])[:, 0]
        labels = tf.pad(targets["labels"], [[0, 0], [0, 1]], constant_values=-1)[:, 0]
        height, width = (tf.cast(s, tf.float32) for s in image_size)
        y1, x1, y2, x2 = tf.unstack(boxes / tf.stack([height, width, height, width]), axis=-1)
        target = tf.stack([(y1 + y2) / 2, (x1 + x2) / 2, y2 - y1, x2 - x1], axis=-1)
        return {"labels": tf.maximum(labels, 0), "boxes": target, "weights": tf.cast(labels >= 0, tf.float32)}

    def loss_from_targets(self, y, y_pred, images, training=True):
        weights = y["weights"]
        normaliser = tf.maximum(tf.reduce_sum(weights), 1.0)
        class_loss = keras.losses.sparse_categorical_crossentropy(y["labels"], y_pred["class_logits"], from_logits=True)
        class_loss = tf.reduce_sum(class_loss * weights) / normaliser
        box_loss = tf.reduce_sum(self.box_loss_fn(y["boxes"], y_pred["boxes"]) * weights) / normaliser
        self.track_loss("class_loss", class_loss)
        self.track_loss("box_loss", box_loss)
        iou = _paired_iou(_to_yxyx(y["boxes"]), _to_yxyx(y_pred["boxes"]))
        self.iou_tracker.update_state(iou, sample_weight=weights)
        return class_loss + self.box_loss_weight * box_loss

    @property
    def metrics(self):
        return super().metrics + [self.iou_tracker]

    def decode(self, outputs, image_size):
        probabilities = tf.nn.softmax(outputs["class_logits"], axis=-1)
        height, width = (tf.cast(s, tf.float32) for s in image_size)
        boxes = _to_yxyx(outputs["boxes"]) * tf.stack([height, width, height, width])
        batch = tf.shape(boxes)[0]
        return {
            "boxes": boxes[:, None, :],
            "scores": tf.reduce_max(probabilities, axis=-1)[:, None],
            "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int32)[:, None],
            "num_detections": tf.ones([batch], tf.int32),
        }

    def get_config(self):
        config = super().get_config()
        config.update(widths=list(self.widths), hidden=self.hidden, box_loss=self.box_loss,
                      box_loss_weight=self.box_loss_weight, dropout=self.dropout_rate)
        config.pop("max_detections")
        return config


def _to_yxyx(center_boxes):
    """(cy, cx, h, w) -> (y1, x1, y2, x2), any units."""
    cy, cx, h, w = tf.unstack(center_boxes, axis=-1)
    return tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def _paired_iou(a, b):
    """IoU of a[i] with b[i]: [B, 4] yxyx x2 -> [B] (the lecture's localization metric)."""
    ih = tf.maximum(tf.minimum(a[:, 2], b[:, 2]) - tf.maximum(a[:, 0], b[:, 0]), 0.0)
    iw = tf.maximum(tf.minimum(a[:, 3], b[:, 3]) - tf.maximum(a[:, 1], b[:, 1]), 0.0)
    inter = ih * iw
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / tf.maximum(area_a + area_b - inter, 1e-9)
