"""Augmentation that keeps boxes and masks consistent with the image, as graph ops for `tf.data`.

Elements are the unbatched dicts of docs/design.md ("Data") (boxes yxyx absolute pixels). Flipping and colour jitter are Keras 3's
own `RandomFlip` (with `bounding_box_format`); Keras carries
"segmentation_masks" through its geometric layers but not per-instance masks, so instance masks ride along as extra
channels of "segmentation_masks" for the flip. Scale jitter with crop/pad and letterboxing are plain TF ops here
(Keras' RandomZoom / RandomCrop neither drop boxes that leave the crop nor transform instance masks), and so is
colour jitter: Keras 3.15's `RandomColorJitter` on 0..255 float images raised the mean brightness from 127 to 171
(measured), so a model trained with it saw other images than it was evaluated on.
"""
import keras
import tensorflow as tf

MIN_BOX_SIZE = 1.0  # px: boxes thinner than this after a crop are dropped (with their label and mask)


def resize_image(element, image_size, mode="stretch"):
    """Resize to `image_size` (H, W) by stretching, or by letterboxing (keep aspect, pad bottom/right).

    Adds element["scale"] = float32 [2] (sy, sx): input-pixel boxes = original boxes * [sy, sx, sy, sx], so
    predictions map back to the original frame by dividing by it.
    """
    image = element["images"]
    height, width = image_size
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    if mode == "letterbox":
        s = tf.minimum(height / size[0], width / size[1])
        scale = tf.stack([s, s])
    else:
        scale = tf.stack([height / size[0], width / size[1]])
    new_size = tf.cast(tf.round(size * scale), tf.int32)
    new_size = tf.minimum(new_size, [height, width])
    out = dict(element)
    out["images"] = tf.image.pad_to_bounding_box(tf.image.resize(image, new_size), 0, 0, height, width)
    boxes = element["bounding_boxes"]["boxes"] * tf.tile(scale, [2])
    out["bounding_boxes"] = {"boxes": boxes, "labels": element["bounding_boxes"]["labels"]}
    for key in ("masks", "segmentation_masks"):
        if key in element:
            out[key] = _resize_masks(element[key], new_size, height, width, channels_last=key != "masks")
    out["scale"] = scale
    return out


def _resize_masks(masks, new_size, height, width, channels_last):
    """Nearest-neighbour resize + pad of [N, H, W] (channels_last=False) or [H, W, C] masks, dtype kept."""
    dtype = masks.dtype
    m = masks if channels_last else tf.transpose(masks, [1, 2, 0])
    m = _with_spare_channel(m, lambda x: tf.image.pad_to_bounding_box(
        tf.image.resize(x, new_size, method="nearest"), 0, 0, height, width))
    m = tf.cast(m, dtype)
    return m if channels_last else tf.transpose(m, [2, 0, 1])


def _with_spare_channel(x, fn):
    """fn(x) for [H, W, C] x that may have C = 0 (an image without objects): TF's resize and pad need a channel."""
    spare = tf.zeros(tf.concat([tf.shape(x)[:-1], [1]], axis=0), tf.float32)
    return fn(tf.concat([tf.cast(x, tf.float32), spare], axis=-1))[..., :-1]


class Augmenter:
    """Random flip, scale jitter with crop/pad, and colour jitter, applied after `resize_image`.

    Args:
        flip: horizontal flip with probability 0.5.
        scale_jitter: (min, max) zoom factor; the zoomed image is cropped (zoom > 1) or padded (zoom < 1) back to size.
        color_jitter: s, the strength of brightness / contrast / saturation jitter (factors in [1 - s, 1 + s]), 0 = off.
        seed: seed of the random draws.
    """

    def __init__(self, flip=True, scale_jitter=(1.0, 1.0), color_jitter=0.0, seed=None):
        self.scale_jitter = tuple(float(s) for s in scale_jitter)
        self.seed = seed
        self.flip = keras.layers.RandomFlip("horizontal", bounding_box_format="yxyx", seed=seed) if flip else None
        self.color_jitter = float(color_jitter)

    def __call__(self, element):
        if self.flip is not None:
            element = self._flip(element)
        if self.scale_jitter != (1.0, 1.0):
            element = self._scale_jitter(element)
        if self.color_jitter > 0:
            element = dict(element, images=self._color(element["images"]))
        return element

    def _color(self, image):
        """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s]: zero-mean jitter."""
        s = self.color_jitter
        image = image * tf.random.uniform([], 1 - s, 1 + s, seed=self.seed)
        mean = tf.reduce_mean(image, axis=[0, 1, 2], keepdims=True)
        image = (image - mean) * tf.random.uniform([], 1 - s, 1 + s, seed=self.seed) + mean
        gray = tf.reduce_mean(image, axis=-1, keepdims=True)
        image = (image - gray) * tf.random.uniform([], 1 - s, 1 + s, seed=self.seed) + gray
        return tf.clip_by_value(image, 0.0, 255.0)

    def _flip(self, element):
        # Pack semantic + instance masks as channels so one Keras call flips everything with the same draw.
        channels = []
        if "segmentation_masks" in element:
            channels.append(tf.cast(element["segmentation_masks"], tf.float32))
        if "masks" in element:
            channels.append(tf.transpose(tf.cast(element["masks"], tf.float32), [1, 2, 0]))
        inputs = {"images": element["images"], "bounding_boxes": element["bounding_boxes"]}
        if channels:  # + a spare channel: an image without objects has no instance channel, and Keras needs one
            channels.append(tf.zeros_like(element["images"][..., :1]))
            inputs["segmentation_masks"] = tf.concat(channels, axis=-1)
        flipped = self.flip(inputs, training=True)
        out = dict(element, images=flipped["images"],
                   bounding_boxes={"boxes": tf.cast(flipped["bounding_boxes"]["boxes"], tf.float32),
                                   "labels": element["bounding_boxes"]["labels"]})
        if channels:
            packed = flipped["segmentation_masks"]
            start = 0
            if "segmentation_masks" in element:
                out["segmentation_masks"] = tf.cast(packed[..., :1], element["segmentation_masks"].dtype)
                start = 1
            if "masks" in element:
                out["masks"] = tf.cast(tf.transpose(packed[..., start:-1], [2, 0, 1]), element["masks"].dtype)
        return out

    def _scale_jitter(self, element):
        image = element["images"]
        size = tf.shape(image)[:2]
        zoom = tf.random.uniform([], *self.scale_jitter, seed=self.seed)
        new_size = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * zoom), tf.int32), 1)
        # Random offset of the crop window (zoom > 1) or of the image inside the canvas (zoom < 1).
        slack = tf.abs(new_size - size)
        offset = tf.cast(tf.floor(tf.random.uniform([2], seed=self.seed) * tf.cast(slack + 1, tf.float32)), tf.int32)
        offset = tf.minimum(offset, slack)
        shift = tf.cast(tf.where(new_size > size, -offset, offset), tf.float32)  # where the zoomed image's origin lands

        def place(x, method):
            x = tf.image.resize(x, new_size, method=method)
            canvas = tf.maximum(new_size, size)
            pad_offset = tf.where(new_size > size, 0, offset)
            x = tf.image.pad_to_bounding_box(x, pad_offset[0], pad_offset[1], canvas[0], canvas[1])
            crop_offset = tf.where(new_size > size, offset, 0)
            return tf.image.crop_to_bounding_box(x, crop_offset[0], crop_offset[1], size[0], size[1])

        out = dict(element, images=place(image, "bilinear"))
        boxes = element["bounding_boxes"]["boxes"] * zoom + tf.tile(shift, [2])
        limit = tf.tile(tf.cast(size, tf.float32), [2])
        boxes = tf.clip_by_value(boxes, 0.0, limit)
        keep = tf.logical_and(boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIZE, boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIZE)
        out["bounding_boxes"] = {"boxes": tf.boolean_mask(boxes, keep),
                                 "labels": tf.boolean_mask(element["bounding_boxes"]["labels"], keep)}
        if "segmentation_masks" in element:
            seg = element["segmentation_masks"]
            out["segmentation_masks"] = tf.cast(place(tf.cast(seg, tf.float32), "nearest"), seg.dtype)
            # pixels padded in from outside the image are unknown: mark them ignore (255) only when zooming out
            if self.scale_jitter[0] < 1.0:
                valid = place(tf.ones_like(seg[..., :1], tf.float32), "nearest")
                out["segmentation_masks"] = tf.where(valid > 0.5, out["segmentation_masks"],
                                                     tf.cast(255, seg.dtype))
        if "masks" in element:
            masks = tf.transpose(tf.cast(element["masks"], tf.float32), [1, 2, 0])
            masks = tf.transpose(_with_spare_channel(masks, lambda m: place(m, "nearest")), [2, 0, 1])
            out["masks"] = tf.cast(tf.boolean_mask(masks, keep), element["masks"].dtype)
        return out
