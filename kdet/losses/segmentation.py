"""Per-pixel softmax cross-entropy with class weights, pixel weights and an ignore label, and the class weights.

    loss = sum_x w(x) * CE(x) / sum_x w(x)     over pixels x whose label is not `ignore_index` (255)
    w(x) = class_weights[label(x)] * pixel_weights(x)

This is torch's `F.cross_entropy(logits, labels, weight=class_weights, ignore_index=255)` (mean reduction divides by
the summed weights, not the pixel count), extended by the pixel weight map of U-Net. A batch whose pixels are all
ignored gives 0, not NaN.

Class weights from the training masks (FCN trains unweighted; SegNet and many followers balance the classes):
    "inverse": w_c = 1 / (K * f_c), f_c = pixels of c / all labelled pixels, K = number of classes present,
               so that the expected weight of a labelled pixel is 1;
    "median":  w_c = median_k(g_k) / g_c, g_c = pixels of c / pixels of the images that contain c
               (median frequency balancing, Eigen & Fergus 2015, used by SegNet).
Classes that never occur get weight 1 (they have no pixel to weigh).
"""
import numpy as np
import tensorflow as tf

from kdet.errors import ConfigError, DataError

WEIGHTING_METHODS = ("inverse", "median")


def pixel_cross_entropy(labels, logits, class_weights=None, pixel_weights=None, ignore_index=255):
    """Weighted mean softmax cross-entropy over the labelled pixels.

    Args:
        labels: int [B, H, W] or [B, H, W, 1] class ids in 0..C-1, or `ignore_index`.
        logits: float [B, H, W, C].
        class_weights: optional float [C].
        pixel_weights: optional float [B, H, W] (U-Net's w(x)).
    Returns:
        float32 scalar.
    """
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 4:
        labels = labels[..., 0]
    labels = tf.cast(labels, tf.int32)
    logits = tf.cast(logits, tf.float32)
    valid = tf.not_equal(labels, ignore_index)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))  # any class; the pixel's weight is 0 below
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
    weights = tf.cast(valid, tf.float32)
    if class_weights is not None:
        weights *= tf.gather(tf.cast(class_weights, tf.float32), safe_labels)
    if pixel_weights is not None:
        weights *= tf.cast(pixel_weights, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(weights * per_pixel), tf.reduce_sum(weights))


def class_pixel_counts(masks, num_classes, ignore_index=255):
    """Count labelled pixels per class over an iterable of masks.

    masks: iterable of int [H, W] (or [H, W, 1]) arrays, or of (name, array) pairs so that an error names the file.
    Returns (pixels [C] int64: pixels of each class, image_pixels [C] int64: labelled pixels of the images that
    contain the class). A class id outside 0..C-1 that is not `ignore_index` raises DataError naming the mask.
    """
    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for index, item in enumerate(masks):
        name, mask = item if isinstance(item, tuple) else (f"mask {index}", item)
        values = np.asarray(mask).reshape(-1)
        values = values[values != ignore_index].astype(np.int64)
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            bad = values[(values < 0) | (values >= num_classes)][0]
            raise DataError(name, f"class id {bad} is not in the {num_classes} classes (0..{num_classes - 1}) "
                                  f"nor the ignore value {ignore_index}")
        counts = np.bincount(values, minlength=num_classes)
        pixels += counts
        image_pixels[counts > 0] += values.size
    return pixels, image_pixels


def class_weights_from_counts(pixels, image_pixels=None, method="median"):
    """float32 [C] class weights from `class_pixel_counts` (see the module docstring for the two methods)."""
    if method not in WEIGHTING_METHODS:
        raise ConfigError(f"class weighting method {method!r}; choose one of {', '.join(WEIGHTING_METHODS)}")
    pixels = np.asarray(pixels, np.float64)
    present = pixels > 0
    weights = np.ones(len(pixels), np.float64)
    if not present.any():
        return weights.astype(np.float32)
    if method == "inverse":
        frequency = pixels[present] / pixels.sum()
        weights[present] = 1.0 / (present.sum() * frequency)
    else:
        if image_pixels is None:
            raise ConfigError("median frequency weights need image_pixels (see class_pixel_counts)")
        frequency = pixels[present] / np.asarray(image_pixels, np.float64)[present]
        weights[present] = np.median(frequency) / frequency
    return weights.astype(np.float32)


def class_weights_from_masks(masks, num_classes, method="median", ignore_index=255):
    """float32 [C] weights from the training masks (an iterable as in `class_pixel_counts`)."""
    pixels, image_pixels = class_pixel_counts(masks, num_classes, ignore_index)
    return class_weights_from_counts(pixels, image_pixels, method)
