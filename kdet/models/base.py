"""The model contract every kdet architecture follows (DESIGN.md, "Model contract").

A detector subclasses `Detector` and implements `call` (raw head outputs), `compute_loss` (total loss, parts tracked
as metrics) and `decode` (raw outputs -> the fixed-shape detection dict). Everything else (fit, predict, export,
evaluation) only uses these methods, so a new architecture is one file.
"""
import keras
import tensorflow as tf


class Detector(keras.Model):
    """Base class for kdet models.

    Args:
        num_classes: number of foreground classes (labels 0..num_classes-1).
        image_size: (height, width) the network runs at; the data pipeline resizes to it.
        max_detections: K, the fixed number of rows in the detection dict.

    Subclasses implement:
        call(images, training=False) -> dict of raw head outputs; images: [B, H, W, 3] uint8 or float 0..255.
        compute_loss(x, y, y_pred, sample_weight=None, training=True) -> scalar; y is `encode_targets(batch)`.
        decode(outputs) -> {"boxes": [B, K, 4] yxyx pixels of the network input, "scores": [B, K],
                            "classes": [B, K] int32, "num_detections": [B] int32}; rows >= num_detections are 0.
    and may override encode_targets(batch) -> y, run inside tf.data on a padded batch of element dicts.
    """

    task = "detection"  # or "semantic" (decode returns {"masks": [B, H, W] int32, "probabilities": [B, H, W, C]})
    loss_names = ()     # the loss parts compute_loss tracks; their Mean metrics are made in __init__ (Keras needs all
                        # state before the first call)

    def __init__(self, num_classes, image_size=(128, 128), max_detections=100, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.image_size = tuple(int(s) for s in image_size)
        self.max_detections = int(max_detections)
        self._loss_trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names}

    # -- pieces subclasses use ------------------------------------------------------------------------------------
    def track_loss(self, name, value):
        """Record one loss part (a name in `loss_names`) so `fit` shows it in the progress bar and history."""
        self._loss_trackers[name].update_state(value)

    @property
    def metrics(self):
        return super().metrics + list(self._loss_trackers.values())

    def normalize(self, images):
        """[B, H, W, 3] uint8 or float 0..255 -> float32 scaled to about [-1, 1] (normalisation lives in the model)."""
        return tf.cast(images, self.compute_dtype) / 127.5 - 1.0

    # -- the contract -------------------------------------------------------------------------------------------
    def encode_targets(self, batch):
        """Padded batch of element dicts -> y. Default: the padded boxes/labels (label -1 = padding)."""
        return {"boxes": batch["bounding_boxes"]["boxes"], "labels": batch["bounding_boxes"]["labels"]}

    def detect(self, images):
        """images [B, H, W, 3] at `image_size` -> detection dict (or semantic dict)."""
        return self.decode(self(images, training=False))

    def predict_step(self, data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        if isinstance(x, dict):
            x = x["images"]
        return self.detect(x)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, image_size=list(self.image_size),
                      max_detections=self.max_detections)
        return config
