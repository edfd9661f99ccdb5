"""The model contract every kdet architecture follows (docs/design.md, "Model contract").

A kdet model is a plain Keras model: `model.fit(dataset)` on `(images, {"boxes": [B, M, 4], "labels": [B, M]})`
(labels padded with -1, boxes in the model's `bounding_box_format` in the images' pixels, the layout Keras' box-aware
preprocessing layers produce), `model.predict(images)` at any input size, `model.save("m.keras")` and
`keras.saving.load_model("m.keras")` after `import kdet`. Target encoding (anchor matching, grid targets) runs inside
the train step, in graph: the user never calls it.

A detector subclasses `Detector` and implements
    call(images, training=False) -> dict of raw head outputs; images [B, H, W, 3] uint8 or float 0..255, any H, W.
    encode_targets(targets, image_size) -> y, in graph. targets = {"boxes": [B, M, 4] float32 yxyx pixels,
        "labels": [B, M] int32 (-1 = padding)} plus "masks" [B, M, H, W] for instance models;
        image_size = (H, W) as ints or scalar tensors (`kdet.ops.images.image_hw`).
    loss_from_targets(y, y_pred, images, training) -> scalar total loss, parts tracked with `track_loss`.
    decode(outputs, image_size) -> {"boxes": [B, K, 4] yxyx pixels of the input, "scores": [B, K],
        "classes": [B, K] int32, "num_detections": [B] int32}; rows >= num_detections are 0.
What a model needs from its training data beyond boxes and labels it declares once in `data_needs` (instance or
semantic masks, multi-scale sizes) and, for statistics of the data (class weights), in `adapt(dataset)`; the one
training recipe (kdet.training) applies both, whatever the model.
"""
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from kdet.ops.box_ops import convert_format
from kdet.ops.images import image_hw, normalize_symmetric


@dataclasses.dataclass(frozen=True)
class DataNeeds:
    """What a model's training data must carry, declared by the model and applied by the training recipe.

    instance_masks: the targets carry "masks" [B, M, H, W] uint8, one per object, next to the boxes.
    semantic: the model trains on a class-id mask per image (y = masks [B, H, W, 1], 0 = background, k = class
        k - 1, 255 = ignored) instead of boxes; with `instance_masks` too, y = {"segmentation_masks", "masks"}.
    multiscale_sizes: square input sizes to train on, a new one drawn every `multiscale_every` batches (YOLOv2);
        empty = train at `image_size`.
    adapt: the model computes statistics of its training data (`model.adapt(dataset)`) before fitting.
    """

    instance_masks: bool = False
    semantic: bool = False
    multiscale_sizes: tuple = ()
    multiscale_every: int = 10
    adapt: bool = False


class Detector(keras.Model):
    """Base class for kdet models.

    Args:
        num_classes: number of foreground classes (labels 0..num_classes-1).
        image_size: (height, width) the model is built and exported at and kdet's data pipeline resizes to; the
            model itself runs at any size.
        max_detections: K, the fixed number of rows in the detection dict.
        bounding_box_format: Keras box format of fit targets and predict outputs ("yxyx", "xyxy", "xywh",
            "center_xywh", "rel_yxyx", ...), in the input images' pixels.
        class_names: names of the classes, saved with the model (and every export) so predictions can be labelled
            without the dataset.
    """

    task = "detection"  # or "semantic" (decode returns {"masks": [B, H, W] int32, "probabilities": [B, H, W, C]})
    loss_names = ()     # the loss parts loss_from_targets tracks; their Mean metrics are made in __init__ (Keras
                        # needs all state before the first call)

    def __init__(self, num_classes, image_size=(128, 128), max_detections=100, bounding_box_format="yxyx",
                 class_names=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.image_size = tuple(int(s) for s in image_size)
        self.max_detections = int(max_detections)
        convert_format(tf.zeros([1, 4]), bounding_box_format, "yxyx", 1, 1)  # a bad name fails here, not in fit
        self.bounding_box_format = bounding_box_format
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes = {self.num_classes}")
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self._loss_trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names}

    # -- what the training recipe reads -------------------------------------------------------------------------------
    @property
    def data_needs(self):
        """The `DataNeeds` of this model (default: boxes and labels only)."""
        return DataNeeds()

    def adapt(self, dataset):
        """Compute statistics of the training data before fit (models whose `data_needs.adapt` is True)."""

    def pipeline_targets(self, y, images):
        """Target work the training recipe may run inside tf.data instead of the train step, with identical results
        (default: none). y and images as `fit` receives them; returns y in a form `compute_loss` also accepts."""
        return y

    # -- pieces subclasses use ----------------------------------------------------------------------------------------
    def track_loss(self, name, value):
        """Record one loss part (a name in `loss_names`) so `fit` shows it in the progress bar and history."""
        self._loss_trackers[name].update_state(value)

    @property
    def metrics(self):
        return super().metrics + list(self._loss_trackers.values())

    def normalize(self, images):
        """[B, H, W, 3] uint8 or float 0..255 -> about [-1, 1] in the compute dtype (normalisation lives in the
        model, so exports take plain images)."""
        return normalize_symmetric(images, self.compute_dtype)

    @staticmethod
    def images_of(x):
        """The image batch of a model input (a tensor, or a dict with "images" and extra inputs)."""
        return x["images"] if isinstance(x, dict) else x

    # -- Keras' hooks -------------------------------------------------------------------------------------------------
    def standardize_targets(self, y, image_size):
        """Keras-layout targets -> kdet's: boxes from `bounding_box_format` to yxyx pixels (float32), labels int32.

        y: {"boxes": [B, M, 4], "labels": [B, M]} (+ "masks"); or a kdet element dict with "bounding_boxes".
        """
        if not isinstance(y, dict):
            raise ValueError(f"{type(self).__name__} trains on y = {{'boxes': [B, M, 4], 'labels': [B, M]}}, "
                             f"got {type(y).__name__}")
        if "bounding_boxes" in y:
            y = dict(y, **y["bounding_boxes"])
        missing = [key for key in ("boxes", "labels") if key not in y]
        if missing:
            raise ValueError(f"fit targets need 'boxes' and 'labels' ({self.bounding_box_format}, labels padded "
                             f"with -1); missing {missing}")
        height, width = image_size
        boxes = tf.cast(y["boxes"], tf.float32)
        if self.bounding_box_format != "yxyx":
            boxes = convert_format(boxes, self.bounding_box_format, "yxyx", height=height, width=width)
        targets = {"boxes": tf.cast(boxes, tf.float32), "labels": tf.cast(y["labels"], tf.int32)}
        if "masks" in y:
            targets["masks"] = y["masks"]
        return targets

    def make_train_function(self, force=False):
        """Keras' train function, with the model's and the optimizer's variables made first.

        Without a distribution strategy Keras 3 (TF backend) defers building to the first train step, so variables
        are created inside the trace and tf.function traces the whole step a second time without variable creation
        (measured on a tiny RetinaNet through the recipe: two traces of one signature). Building here (fit and
        train_on_batch both call this before their first step) leaves one trace per input signature: an unbuilt
        model runs once eagerly at `image_size`, as `kdet.build.build_model` does, then the optimizer is built (unless
        a layer is still unbuilt, e.g. one used in training only: then Keras' own deferred build)."""
        def built():
            return all(layer.built for layer in self._flatten_layers())

        if not built():
            self(tf.zeros([1, *self.image_size, 3]), training=False)
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and not optimizer.built and built():  # else Keras builds both in the trace
            optimizer.build(self.trainable_variables)
        return super().make_train_function(force)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        images = self.images_of(x)
        size = image_hw(images)
        encoded = self.encode_targets(self.standardize_targets(y, size), size)
        return self.loss_from_targets(encoded, y_pred, images, training)

    def detect(self, images):
        """images [B, H, W, 3] 0..255, any size -> detection dict, boxes yxyx in the input's pixels."""
        return self.decode(self(images, training=False), image_hw(self.images_of(images)))

    def predict_step(self, data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        detections = self.detect(x)
        if self.task == "detection" and self.bounding_box_format != "yxyx":
            height, width = image_hw(self.images_of(x))
            detections = dict(detections, boxes=convert_format(detections["boxes"], "yxyx",
                                                               self.bounding_box_format, height=height, width=width))
        return detections

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Keras' `predict`; arrays and tensors (or a dict of them) enter through a plain tf.data pipeline
        (`from_tensor_slices(x).batch(batch_size or 32)`, autotuning and graph rewrites off) instead of Keras' array
        adapter, whose per-call pipeline (batched index slicing, a parallel map traced anew every call, autotuned
        prefetch) cost more CPU than the model's own predict function (SSD300 batch 1: 815-900 against 747-787
        CPU-ms per call) and issue 18 measured `predict` bimodal per call on 2 cores (benchmarks/
        bench_predict_calls.py times both). Outputs are exactly `predict_on_batch`'s, batch by batch; datasets,
        generators, lists and PyDatasets go to Keras unchanged."""
        arrays = isinstance(x, (np.ndarray, tf.Tensor)) or (
            isinstance(x, dict) and all(isinstance(leaf, (np.ndarray, tf.Tensor)) for leaf in x.values()))
        if arrays:
            options = tf.data.Options()
            options.autotune.enabled = False
            options.experimental_optimization.apply_default_optimizations = False
            x = tf.data.Dataset.from_tensor_slices(x).batch(batch_size or 32).with_options(options)
            batch_size = None
        return super().predict(x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks)

    def inference_copy(self, precision="float32", fold_bn=True):
        """A copy of this model for inference (this model is unchanged): BatchNorm folded into the preceding
        convolutions (fold_bn) and / or bfloat16 compute with float32 box coding, anchors and NMS (precision).
        kdet export does this by default; see kdet.models.inference_copy."""
        from kdet.models.inference_copy import inference_model
        return inference_model(self, precision=precision, fold_bn=fold_bn)

    # -- the contract -------------------------------------------------------------------------------------------------
    def encode_targets(self, targets, image_size):
        """Default: the targets as they are ({"boxes": yxyx pixels, "labels"})."""
        return targets

    def loss_from_targets(self, y, y_pred, images, training=True):
        raise NotImplementedError(f"{type(self).__name__} does not define its loss")

    def decode(self, outputs, image_size):
        raise NotImplementedError(f"{type(self).__name__} does not define its decoding")

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, image_size=list(self.image_size),
                      max_detections=self.max_detections, bounding_box_format=self.bounding_box_format,
                      class_names=self.class_names)
        return config
