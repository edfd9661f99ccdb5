"""The SSD paper's training augmentation (Liu et al. 2016, section 2.2 and 3.6), as graph ops for tf.data.

Per image, in the paper's order:
  1. photometric distortions, each with probability 1/2: brightness (+-32), contrast and saturation (x 0.5-1.5),
     hue (+-18 degrees), with contrast either first or last;
  2. "expand" (zoom out, probability 1/2): the image is placed at a random spot of a canvas 1-4 times larger,
     filled with the mean pixel, which creates small objects;
  3. min-IoU crop: a minimum IoU is drawn from {0, 0.1, 0.3, 0.5, 0.7, 0.9, 1 (keep the whole image)}; up to
     `trials` windows with sides 0.3-1 of the canvas and aspect ratio 1/2-2 are drawn and the first one that
     holds the centre of an object, with IoU >= the minimum with one of those objects, is kept (torchvision's
     RandomIoUCrop rule); objects whose centre falls outside are dropped, the rest clipped;
  4. horizontal flip with probability 1/2.
Steps 2-4 compose into one affine map, so the output is sampled once, bilinearly, at the input's size (an
expanded-then-cropped image is never shrunk and re-enlarged). Works on one element ({"images": [H, W, 3],
"bounding_boxes": {"boxes": [N, 4], "labels": [N]}}) or a padded batch of them; dropped objects get label -1 and a
zero box, so shapes never change. Apply it after `make_tf_dataset(..., training=True)`:

    ds = make_tf_dataset(train, model.image_size, 16, training=True).map(SSDAugment())
"""
import tensorflow as tf

MIN_IOU_CHOICES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
SSD_MEAN_PIXEL = (123.0, 117.0, 104.0)  # 0..255, the value of SSD300's normalisation mean


def photometric_distort(image, seed=None):
    """image [H, W, 3] float 0..255 -> same, each distortion applied with probability 1/2 (clipped to 0..255)."""
    coins = tf.random.uniform([6], seed=seed) < 0.5
    x = image / 255.0

    def contrast(y):
        return tf.where(coins[1], tf.image.adjust_contrast(y, tf.random.uniform([], 0.5, 1.5)), y)

    x = tf.where(coins[0], x + tf.random.uniform([], -32.0, 32.0) / 255.0, x)
    x = tf.where(coins[5], contrast(x), x)
    x = tf.clip_by_value(x, 0.0, 1.0)
    x = tf.where(coins[2], tf.image.adjust_saturation(x, tf.random.uniform([], 0.5, 1.5)), x)
    x = tf.where(coins[3], tf.image.adjust_hue(x, tf.random.uniform([], -18.0 / 360, 18.0 / 360)), x)
    x = tf.where(coins[5], x, contrast(x))
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def box_iou_one_to_many(window, boxes):
    """window [T, 4], boxes [N, 4] -> [T, N] IoU (yxyx)."""
    top_left = tf.maximum(window[:, None, :2], boxes[None, :, :2])
    bottom_right = tf.minimum(window[:, None, 2:], boxes[None, :, 2:])
    extent = tf.maximum(bottom_right - top_left, 0.0)
    inter = extent[..., 0] * extent[..., 1]
    area_w = (window[:, 2] - window[:, 0]) * (window[:, 3] - window[:, 1])
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return tf.math.divide_no_nan(inter, area_w[:, None] + area_b[None, :] - inter)


def sample_crop(canvas_size, boxes, valid, min_iou, trials=50, scale=(0.3, 1.0), ratio=(0.5, 2.0), seed=None):
    """The min-IoU crop window in canvas pixels.

    Args:
        canvas_size: [2] float (h, w); boxes: [N, 4] yxyx canvas pixels; valid: [N] bool (real objects).
        min_iou: scalar; >= 1 keeps the whole canvas.
    Returns:
        [4] float window yxyx: the first of `trials` random windows that contains the centre of a valid box with
        IoU >= min_iou with one such box; the whole canvas when min_iou >= 1, there is no object, or no trial
        succeeds.
    """
    height, width = canvas_size[0], canvas_size[1]
    draws = tf.random.uniform([trials, 4], seed=seed)
    h = height * (scale[0] + (scale[1] - scale[0]) * draws[:, 0])
    w = width * (scale[0] + (scale[1] - scale[0]) * draws[:, 1])
    y1 = (height - h) * draws[:, 2]
    x1 = (width - w) * draws[:, 3]
    windows = tf.stack([y1, x1, y1 + h, x1 + w], axis=1)
    aspect_ok = (w / h >= ratio[0]) & (w / h <= ratio[1])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    inside = (centres[None, :, 0] > windows[:, None, 0]) & (centres[None, :, 0] < windows[:, None, 2]) & \
             (centres[None, :, 1] > windows[:, None, 1]) & (centres[None, :, 1] < windows[:, None, 3]) & valid[None]
    iou = tf.where(inside, box_iou_one_to_many(windows, boxes), -1.0)
    good = aspect_ok & tf.reduce_any(inside, axis=1) & (tf.reduce_max(iou, axis=1) >= min_iou)
    first = tf.argmax(tf.cast(good, tf.int32), output_type=tf.int32)
    whole = tf.stack([0.0, 0.0, height, width])
    use_crop = tf.reduce_any(good) & (min_iou < 1.0)
    return tf.where(use_crop, windows[first], whole)


def apply_geometry(image, boxes, labels, offset, window, flip, fill=SSD_MEAN_PIXEL):
    """Place the image at `offset` of a canvas, crop `window`, resize to the image's size, optionally flip.

    Args:
        image: [H, W, 3] float; boxes: [N, 4] yxyx image pixels; labels: [N] (-1 = padding).
        offset: [2] (oy, ox) of the image in canvas pixels; window: [4] yxyx canvas pixels; flip: scalar bool.
        fill: per-channel value of the canvas outside the image.
    Returns:
        (image [H, W, 3], boxes [N, 4], labels [N]): boxes in output pixels; objects whose centre leaves the window
        (and padding) get label -1 and a zero box.
    """
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    scale_y = (window[2] - window[0]) / height
    scale_x = (window[3] - window[1]) / width
    # Output pixel (x, y) (centres at integer + 0.5) -> input pixel index: x_in = sx * x + (wx1 - ox + sx/2 - 1/2)
    x0 = window[1] - offset[1] + 0.5 * scale_x - 0.5
    y0 = window[0] - offset[0] + 0.5 * scale_y - 0.5
    transform = tf.stack([scale_x, 0.0, x0, 0.0, scale_y, y0, 0.0, 0.0])[None]
    mean = tf.constant(fill, tf.float32)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=(image - mean)[None], transforms=transform, output_shape=tf.shape(image)[:2], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")[0] + mean
    canvas_boxes = boxes + tf.concat([offset, offset], axis=0)
    centres = (canvas_boxes[:, :2] + canvas_boxes[:, 2:]) / 2.0
    keep = (labels >= 0) & (centres[:, 0] > window[0]) & (centres[:, 0] < window[2]) & \
           (centres[:, 1] > window[1]) & (centres[:, 1] < window[3])
    scale = tf.stack([scale_y, scale_x, scale_y, scale_x])
    moved = (canvas_boxes - tf.concat([window[:2], window[:2]], axis=0)) / scale
    moved = tf.clip_by_value(moved, 0.0, tf.stack([height, width, height, width]))
    flipped = tf.stack([moved[:, 0], width - moved[:, 3], moved[:, 2], width - moved[:, 1]], axis=1)
    moved = tf.where(flip, flipped, moved)
    out = tf.where(flip, tf.image.flip_left_right(out), out)
    return out, tf.where(keep[:, None], moved, 0.0), tf.where(keep, labels, -1)


class SSDAugment:
    """Callable for `tf.data.Dataset.map` on elements or padded batches (see the module docstring).

    Args:
        photometric: apply the colour distortions.
        max_expand: largest canvas / image ratio (4); expand_probability: 0.5 (0 disables).
        min_ious: the minimum-IoU choices (a value >= 1 means "no crop").
        trials, crop_scale, crop_ratio: the crop sampler (50 trials, sides 0.3-1, aspect 0.5-2).
        flip: random horizontal flip.
        fill: canvas colour (0..255 per channel).
    """

    def __init__(self, photometric=True, max_expand=4.0, expand_probability=0.5, min_ious=MIN_IOU_CHOICES,
                 trials=50, crop_scale=(0.3, 1.0), crop_ratio=(0.5, 2.0), flip=True, fill=SSD_MEAN_PIXEL):
        if max_expand < 1.0:
            raise ValueError(f"max_expand must be >= 1, got {max_expand}")
        self.photometric, self.flip = bool(photometric), bool(flip)
        self.max_expand, self.expand_probability = float(max_expand), float(expand_probability)
        self.min_ious = tuple(float(v) for v in min_ious)
        self.trials, self.crop_scale, self.crop_ratio = int(trials), tuple(crop_scale), tuple(crop_ratio)
        self.fill = tuple(float(v) for v in fill)

    def augment_one(self, image, boxes, labels):
        """[H, W, 3], [N, 4], [N] -> the same shapes."""
        image = tf.cast(image, tf.float32)
        boxes = tf.cast(boxes, tf.float32)
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        if self.photometric:
            image = photometric_distort(image)
        draws = tf.random.uniform([5])
        ratio = tf.where(draws[0] < self.expand_probability, 1.0 + (self.max_expand - 1.0) * draws[1], 1.0)
        canvas = size * ratio
        offset = (canvas - size) * draws[2:4]
        min_iou = tf.gather(tf.constant(self.min_ious), tf.random.uniform([], 0, len(self.min_ious), tf.int32))
        canvas_boxes = boxes + tf.concat([offset, offset], axis=0)
        valid = (labels >= 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        window = sample_crop(canvas, canvas_boxes, valid, min_iou, self.trials, self.crop_scale, self.crop_ratio)
        flip = (draws[4] < 0.5) & self.flip
        return apply_geometry(image, boxes, labels, offset, window, flip, self.fill)

    def __call__(self, element):
        if "masks" in element or "segmentation_masks" in element:
            raise ValueError("SSDAugment moves boxes only; it cannot be used on elements with masks")
        out = dict(element)
        images = element["images"]
        boxes, labels = element["bounding_boxes"]["boxes"], element["bounding_boxes"]["labels"]
        if images.shape.rank == 3:
            image, boxes, labels = self.augment_one(images, boxes, labels)
        else:
            image, boxes, labels = tf.map_fn(lambda args: self.augment_one(*args), (images, boxes, labels),
                                             fn_output_signature=(tf.float32, tf.float32, labels.dtype))
        out["images"] = image
        out["bounding_boxes"] = dict(element["bounding_boxes"], boxes=boxes, labels=labels)
        return out
