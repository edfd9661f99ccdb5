"""What every kdet semantic segmentation model shares: targets, the weighted pixel loss, decoding, class weights from
the data, overlap-tile prediction.

Classes: a semantic model predicts `num_classes + 1` channels, channel 0 = background, channel k = class k - 1,
which is the value convention of the masks (VOC SegmentationClass, shapes, nuclei): 0 background, k the k-th class
name, 255 ignore. `num_classes` stays the number of class names, as for the detectors (and the config check).

Keras-native: `model.fit` on `(images, masks)` with masks int [B, H, W] or [B, H, W, 1] at the images' size (or
y = {"segmentation_masks": ..., "masks": [B, N, H, W]} from kdet's own pipeline; U-Net's border weights need the
instance "masks"). Subclasses implement `call(images) -> {"logits": [B, H, W, C]}` at the input size; the base does
the rest, in the train step:
    standardize_targets(y, size)   -> {"segmentation_masks": int32 [B, H, W]} (+ "masks")
    encode_targets(targets, size)  -> {"labels": [B, H, W] int32} (+ "weights" [B, H, W] in U-Net)
    loss_from_targets              -> weighted pixel cross-entropy, ignore 255 (kdet.losses.segmentation), tracked
                                      as "pixel_loss"; pixel accuracy of the labelled pixels as "pixel_accuracy"
    decode(outputs, size)          -> {"masks": [B, H, W] int32 argmax, "probabilities": [B, H, W, C] softmax}
    adapt(dataset)                 -> class_weights "median" / "inverse" counted from the training masks
"""
import keras
import numpy as np
import tensorflow as tf

from kdet.errors import ConfigError
from kdet.losses.segmentation import WEIGHTING_METHODS, class_weights_from_masks, pixel_cross_entropy
from kdet.models.base import DataNeeds, Detector


def semantic_targets(y):
    """Fit targets of a semantic model -> {"segmentation_masks": int32 [B, H, W]} (+ "masks" as given).

    y: a class-id mask tensor [B, H, W] or [B, H, W, 1] (int, or float from Keras' nearest-neighbour Resizing), or a
    dict with "segmentation_masks" (kdet's pipeline) and optionally instance "masks" [B, N, H, W] or a pixel weight
    map "weights" [B, H, W].
    """
    instance_masks = weights = None
    if isinstance(y, dict):
        if "segmentation_masks" not in y:
            raise ValueError("a semantic model trains on y = masks [B, H, W(, 1)] (0 = background, k = class k - 1, "
                             f"255 = ignored) or {{'segmentation_masks': ...}}; got a dict with {sorted(y)}")
        instance_masks, weights = y.get("masks"), y.get("weights")
        y = y["segmentation_masks"]
    masks = tf.convert_to_tensor(y)
    if masks.shape.rank == 4:
        if masks.shape[-1] not in (1, None):
            raise ValueError(f"semantic masks must be [B, H, W] or [B, H, W, 1] class ids, got {masks.shape}")
        masks = masks[..., 0]
    if masks.shape.rank != 3:
        raise ValueError(f"semantic masks must be [B, H, W] or [B, H, W, 1] class ids, got {masks.shape}")
    if masks.dtype.is_floating:
        masks = tf.round(masks)
    targets = {"segmentation_masks": tf.cast(masks, tf.int32)}
    if instance_masks is not None:
        targets["masks"] = instance_masks
    if weights is not None:  # a pixel weight map made ahead of the step (U-Net's, in kdet's pipeline)
        targets["weights"] = tf.cast(weights, tf.float32)
    return targets


class SemanticSegmenter(Detector):
    """Base of FCN, the encoder-decoder (SegNet) and U-Net.

    Args:
        num_classes: foreground classes; the model predicts num_classes + 1 channels (0 = background).
        image_size: (H, W) the model is built and exported at; FCN, SegNet and same-padding U-Net run at any size.
        class_weights: None (plain mean), a list of num_classes + 1 weights, or "inverse" / "median": computed
            from the training masks by `model.adapt(dataset)` before fit (`data_needs.adapt` says so); until then
            they are 1. They are a variable, saved with the model.
        ignore_index: label value that counts nowhere (255).
    """

    task = "semantic"
    loss_names = ("pixel_loss",)
    context_margin = 0  # input pixels each side the network consumes without predicting them (U-Net valid)

    def __init__(self, num_classes, image_size=(128, 128), max_detections=100, class_weights=None, ignore_index=255,
                 **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=max_detections, **kwargs)
        self.num_mask_classes = self.num_classes + 1
        self.ignore_index = int(ignore_index)
        if isinstance(class_weights, str) and class_weights not in WEIGHTING_METHODS:
            raise ConfigError(f"class_weights = {class_weights!r}; give a list of {self.num_mask_classes} weights "
                              f"or one of {', '.join(WEIGHTING_METHODS)}")
        if isinstance(class_weights, (list, tuple)) and len(class_weights) != self.num_mask_classes:
            raise ConfigError(f"class_weights has {len(class_weights)} values; the model has "
                              f"{self.num_mask_classes} classes (background + {self.num_classes})")
        self.class_weights = list(class_weights) if isinstance(class_weights, (list, tuple)) else class_weights
        self.class_weight_vector = None
        if class_weights is not None:
            initial = np.ones(self.num_mask_classes, np.float32) if isinstance(class_weights, str) else \
                np.asarray(class_weights, np.float32)
            # A variable (not a constant) so that weights computed from the data by adapt are saved with the model.
            self.class_weight_vector = self.add_weight(
                shape=(self.num_mask_classes,), initializer=keras.initializers.Constant(initial), trainable=False,
                name="class_weights")
        self.accuracy_tracker = keras.metrics.Mean(name="pixel_accuracy")

    # -- what the training recipe reads ------------------------------------------------------------------------------
    @property
    def data_needs(self):
        return DataNeeds(semantic=True, adapt=isinstance(self.class_weights, str))

    def adapt(self, dataset, steps=None):
        """Set "median" / "inverse" class weights from the training masks (Keras' `adapt` idiom).

        dataset: a tf.data.Dataset (or any iterable) of (images, masks) batches, masks as `fit` takes them (or y
            dicts with "segmentation_masks"); iterated once, or for `steps` batches (needed for a repeating one).
        Returns the weights, float32 [num_classes + 1]. Models with list or no class weights have nothing to adapt.
        """
        if not isinstance(self.class_weights, str):
            return None if self.class_weight_vector is None else self.class_weight_vector.numpy()
        if isinstance(dataset, tf.data.Dataset):
            if steps is not None:
                dataset = dataset.take(int(steps))
            elif dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
                raise ValueError("adapt() iterates the dataset once: give a finite dataset or steps=N for a "
                                 "repeating one")
        weights = class_weights_from_masks(_masks_of(dataset), self.num_mask_classes, self.class_weights,
                                           self.ignore_index)
        self.class_weight_vector.assign(weights)
        return weights

    # -- training ----------------------------------------------------------------------------------------------------
    def standardize_targets(self, y, image_size):
        """y = masks [B, H, W(, 1)] or {"segmentation_masks", ("masks")} -> {"segmentation_masks": int32 [B, H, W]}."""
        return semantic_targets(y)

    def encode_targets(self, targets, image_size):
        """{"labels": int32 [B, H, W]} (255 = ignore / padding); the masks must have the images' size."""
        labels = targets["segmentation_masks"]
        static = tuple(labels.shape[1:3])
        if all(isinstance(s, int) for s in (*static, *image_size)) and static != tuple(image_size):
            raise ValueError(f"masks are {static[0]}x{static[1]} but the images {image_size[0]}x{image_size[1]}: "
                             "resize both the same way (masks with nearest-neighbour interpolation)")
        return {"labels": labels}

    def loss_from_targets(self, y, y_pred, images, training=True):
        labels, logits = y["labels"], y_pred["logits"]
        pixel_weights = y.get("weights")
        # A pixel weight map (U-Net's w(x)) already holds the class term w_c: applying class_weights again would
        # weigh by w_c (w_c + border) instead of the paper's w_c + border.
        class_weights = self.class_weight_vector if pixel_weights is None else None
        loss = pixel_cross_entropy(labels, logits, class_weights=class_weights, pixel_weights=pixel_weights,
                                   ignore_index=self.ignore_index)
        self.track_loss("pixel_loss", loss)
        valid = tf.not_equal(labels, self.ignore_index)
        correct = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
        self.accuracy_tracker.update_state(tf.cast(correct, tf.float32), sample_weight=tf.cast(valid, tf.float32))
        return loss

    @property
    def metrics(self):
        return super().metrics + [self.accuracy_tracker]

    # -- inference ---------------------------------------------------------------------------------------------------
    def decode(self, outputs, image_size):
        """{"logits": [B, H, W, C]} at the input's size -> {"masks": int32 [B, H, W], "probabilities": [B, H, W, C]}."""
        probabilities = tf.nn.softmax(tf.cast(outputs["logits"], tf.float32), axis=-1)
        return {"masks": tf.argmax(probabilities, axis=-1, output_type=tf.int32), "probabilities": probabilities}

    def logits_from_context(self, windows):
        """windows [B, H + 2m, W + 2m, 3] raw images holding `context_margin` = m pixels of real context on each
        side -> logits [B, H, W, C] of the central H x W (H, W = image_size). Models without a margin just run."""
        return self(windows, training=False)["logits"]

    def get_config(self):
        return dict(super().get_config(), class_weights=self.class_weights, ignore_index=self.ignore_index)


def _masks_of(dataset):
    """(name, int32 [H, W] mask) of every image of every batch of (images, y) / y elements."""
    for b, element in enumerate(dataset):
        y = element[1] if isinstance(element, (tuple, list)) else element
        masks = np.asarray(semantic_targets(y)["segmentation_masks"])
        for i, mask in enumerate(masks):
            yield f"batch {b} image {i}", mask


def predict_tiled(model, image, overlap=0, batch_size=4):
    """Overlap-tile prediction (U-Net, section 2) of an image of any size with a model of fixed `image_size`.

    The image is cut into output tiles of the model's size (stepping by size - 2 * overlap and keeping each tile's
    centre, so tile seams see context on both sides); each tile's input carries `model.context_margin` pixels of
    the real neighbouring image, and where a tile reaches past the image border the missing context is the image
    mirrored (numpy "reflect"), as in the paper.

    Args:
        model: a SemanticSegmenter.
        image: uint8 / float 0..255 [H, W, 3], any H, W.
        overlap: pixels cut from each side of a tile's output (0 = plain tiling).
    Returns:
        {"masks": int32 [H, W], "probabilities": float32 [H, W, C]}.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ConfigError(f"predict_tiled takes one [H, W, 3] image, got shape {image.shape}")
    height, width = image.shape[:2]
    tile_h, tile_w = model.image_size
    step_h, step_w = tile_h - 2 * overlap, tile_w - 2 * overlap
    if step_h <= 0 or step_w <= 0:
        raise ConfigError(f"overlap {overlap} leaves nothing of a {tile_h}x{tile_w} tile")
    margin = model.context_margin
    rows = -(-height // step_h)
    cols = -(-width // step_w)
    # Padded so that every window [y * step - overlap - margin, ... + tile + 2 * margin) exists.
    before = overlap + margin
    after_h = rows * step_h + overlap + margin - height
    after_w = cols * step_w + overlap + margin - width
    padded = np.pad(image, [[before, after_h], [before, after_w], [0, 0]], mode="reflect")
    origins = [(r * step_h, c * step_w) for r in range(rows) for c in range(cols)]
    logits = None
    run = tf.function(model.logits_from_context, reduce_retracing=True)
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        windows = np.stack([padded[y:y + tile_h + 2 * margin, x:x + tile_w + 2 * margin] for y, x in chunk])
        out = run(tf.constant(windows)).numpy()
        if logits is None:
            logits = np.zeros((rows * step_h, cols * step_w, out.shape[-1]), np.float32)
        for (y, x), tile in zip(chunk, out):
            logits[y:y + step_h, x:x + step_w] = tile[overlap:overlap + step_h, overlap:overlap + step_w]
    logits = logits[:height, :width]
    probabilities = tf.nn.softmax(logits, axis=-1).numpy()
    return {"masks": probabilities.argmax(-1).astype(np.int32), "probabilities": probabilities}
