"""Box arithmetic on yxyx pixel boxes: area, IoU, clipping, format conversion and the anchor delta coding.

Every function is a pure TensorFlow function (graph-safe, batch dimensions broadcast). Boxes inside kdet are
`[..., 4]` float32 `(y1, x1, y2, x2)` in absolute pixels. Names follow `torchvision.ops` / `BoxCoder`, which use
xyxy; the delta order here is the kdet order `(ty, tx, th, tw)`.
"""
import math

import tensorflow as tf
from keras.utils import bounding_boxes as keras_bounding_boxes

from kdet.errors import ConfigError

DEFAULT_BBOX_XFORM_CLIP = math.log(1000.0 / 16)  # torchvision BoxCoder: caps exp() so huge deltas stay finite


def split_coordinates(boxes):
    """[..., 4] -> four [...] tensors. Slices rather than tf.unstack: TFLite's UNPACK kernel rejects empty tensors,
    and zero boxes (an image without proposals, an empty FPN level) must still run there."""
    return tuple(boxes[..., i] for i in range(4))


def box_area(boxes):
    """boxes: [..., 4] yxyx -> [...] area. Inverted boxes (y2 < y1 or x2 < x1) have area 0."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    y1, x1, y2, x2 = split_coordinates(boxes)
    return tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)


def box_iou(boxes1, boxes2):
    """Pairwise IoU.

    Args:
        boxes1: [N, 4] or [B, N, 4] yxyx.
        boxes2: [M, 4] or [B, M, 4] yxyx (same leading dims as boxes1).
    Returns:
        [N, M] or [B, N, M] float32. A pair whose union is empty (two degenerate boxes) has IoU 0, where
        torchvision.ops.box_iou returns nan.
    """
    boxes1 = tf.convert_to_tensor(boxes1, tf.float32)
    boxes2 = tf.convert_to_tensor(boxes2, tf.float32)
    area1 = box_area(boxes1)[..., :, None]
    area2 = box_area(boxes2)[..., None, :]
    a = boxes1[..., :, None, :]
    b = boxes2[..., None, :, :]
    top_left = tf.maximum(a[..., :2], b[..., :2])
    bottom_right = tf.minimum(a[..., 2:], b[..., 2:])
    extent = tf.maximum(bottom_right - top_left, 0.0)
    intersection = extent[..., 0] * extent[..., 1]
    union = area1 + area2 - intersection
    return tf.math.divide_no_nan(intersection, union)


def clip_boxes(boxes, height, width):
    """Clip yxyx boxes to the image [0, height] x [0, width].

    Args:
        boxes: [..., 4] yxyx pixels.
        height, width: scalars, or tensors that broadcast against boxes[..., 0] (e.g. [B, 1] for per-image sizes).
    Returns:
        [..., 4] float32, same shape.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    y1, x1, y2, x2 = split_coordinates(boxes)
    y1 = tf.clip_by_value(y1, 0.0, height)
    y2 = tf.clip_by_value(y2, 0.0, height)
    x1 = tf.clip_by_value(x1, 0.0, width)
    x2 = tf.clip_by_value(x2, 0.0, width)
    return tf.stack([y1, x1, y2, x2], axis=-1)


def convert_format(boxes, source, target, height=None, width=None):
    """Convert boxes between Keras format names ("xyxy", "yxyx", "xywh", "center_xywh", "center_yxhw",
    "rel_xyxy", "rel_yxyx", ...): a thin wrapper over `keras.utils.bounding_boxes.convert_format` that reports a
    bad format name as a ConfigError. `height`/`width` are needed for the "rel_" formats.

    boxes: [..., 4] -> [..., 4] float32.
    """
    try:
        return keras_bounding_boxes.convert_format(boxes, source=source, target=target, height=height, width=width)
    except ValueError as error:
        raise ConfigError(f"bounding_box_format: cannot convert {source!r} to {target!r}: {error}") from None


def _centers_and_sizes(boxes):
    y1, x1, y2, x2 = split_coordinates(boxes)
    height = y2 - y1
    width = x2 - x1
    return y1 + 0.5 * height, x1 + 0.5 * width, height, width


def encode_boxes(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Regression targets of `boxes` relative to `anchors` (Faster R-CNN parametrisation).

    ty = wy * (y - y_a) / h_a,  tx = wx * (x - x_a) / w_a,  th = wh * log(h / h_a),  tw = ww * log(w / w_a)
    with (y, x) box centres and (h, w) sizes. This is torchvision's BoxCoder.encode_single with the axes in kdet
    order: torchvision weights (wx, wy, ww, wh) = (10, 10, 5, 5) are kdet weights (wy, wx, wh, ww) = (10, 10, 5, 5).

    Args:
        boxes: [..., 4] yxyx pixels (ground truth matched to each anchor).
        anchors: [..., 4] yxyx pixels, broadcastable against boxes.
        weights: (wy, wx, wh, ww).
    Returns:
        [..., 4] float32 deltas (ty, tx, th, tw).
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    wy, wx, wh, ww = (float(w) for w in weights)
    cy, cx, h, w = _centers_and_sizes(boxes)
    acy, acx, ah, aw = _centers_and_sizes(anchors)
    return tf.stack([
        wy * (cy - acy) / ah,
        wx * (cx - acx) / aw,
        wh * tf.math.log(h / ah),
        ww * tf.math.log(w / aw),
    ], axis=-1)


def decode_boxes(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), clamp=DEFAULT_BBOX_XFORM_CLIP):
    """Inverse of `encode_boxes` (torchvision BoxCoder.decode_single, kdet axis order).

    Args:
        deltas: [..., 4] (ty, tx, th, tw).
        anchors: [..., 4] yxyx pixels, broadcastable against deltas.
        weights: (wy, wx, wh, ww), the ones used to encode.
        clamp: th, tw (after dividing by their weights) are capped at this value before exp(), as torchvision does.
    Returns:
        [..., 4] float32 yxyx pixels.
    """
    deltas = tf.convert_to_tensor(deltas, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    wy, wx, wh, ww = (float(w) for w in weights)
    ty, tx, th, tw = split_coordinates(deltas)
    th = tf.minimum(th / wh, clamp)
    tw = tf.minimum(tw / ww, clamp)
    acy, acx, ah, aw = _centers_and_sizes(anchors)
    cy = ty / wy * ah + acy
    cx = tx / wx * aw + acx
    half_h = 0.5 * (tf.exp(th) * ah)
    half_w = 0.5 * (tf.exp(tw) * aw)
    return tf.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)
