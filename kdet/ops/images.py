"""Image tensors: their size at run time and the one ImageNet normalisation every model uses.

`image_hw(images)` gives (H, W) as Python ints when the traced shape knows them (one trace per input size, so
anchors and grids fold to constants and export as constants) and as scalar int32 tensors otherwise (a trace Keras
relaxed to [None, None, None, 3] after seeing several sizes). Code that builds anchors or grids from it must accept
both.
"""
import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # on the 0..1 scale, torchvision's / keras.applications' "torch" mode
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_hw(images):
    """images [B, H, W, C] -> (H, W): ints where the static shape has them, else scalar int32 tensors."""
    static = images.shape
    dynamic = tf.shape(images)
    height = static[1] if static.rank == 4 and static[1] is not None else dynamic[1]
    width = static[2] if static.rank == 4 and static[2] is not None else dynamic[2]
    return height, width


def normalize_imagenet(images, dtype=tf.float32, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """[B, H, W, 3] uint8 or float 0..255 -> (x / 255 - mean) / std in `dtype` (torchvision's transform)."""
    x = tf.cast(images, dtype) / 255.0
    return (x - tf.constant(mean, dtype)) / tf.constant(std, dtype)


def normalize_symmetric(images, dtype=tf.float32):
    """[B, H, W, 3] uint8 or float 0..255 -> x / 127.5 - 1, about [-1, 1] (models trained from scratch)."""
    return tf.cast(images, dtype) / 127.5 - 1.0


def resize_to(images, size):
    """Bilinear resize of [B, H, W, C] to `size` (h, w); no-op when the static shape already is that size.

    For networks with a fully connected head, whose input size is fixed (classification + localization, YOLOv1):
    they run at any input size by resizing to their own, and predict relative coordinates.
    """
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    return tf.image.resize(tf.cast(images, tf.float32), size, method="bilinear")
