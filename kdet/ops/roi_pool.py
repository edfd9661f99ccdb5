"""RoIPool (Fast/Faster R-CNN) with torchvision.ops.roi_pool semantics, on NHWC features and yxyx pixel boxes.

torchvision (csrc/ops/cpu/roi_pool_kernel.cpp) quantises twice, which is what RoIAlign later removed:
  * the box corners are rounded (half away from zero) to feature cells, the RoI spans end - start + 1 cells
    (at least 1);
  * bin p covers cells [floor(p * bin), ceil((p + 1) * bin)) of the RoI, clipped to the map, so neighbouring
    bins may share a row; each bin is the max over its cells, and an empty bin is 0.
"""
import tensorflow as tf

from kdet.ops.box_ops import split_coordinates
from kdet.ops.roi_align import _pair


def _round_half_away_from_zero(values):
    return tf.sign(values) * tf.floor(tf.abs(values) + 0.5)  # std::round, not TF's round-half-to-even


def _bin_edges(start, end, bins, size):
    """start, end: [K] float corners in feature cells -> (bin starts, bin ends) [K, bins] int32 clipped to
    [0, size]."""
    start = tf.cast(_round_half_away_from_zero(start), tf.int32)
    end = tf.cast(_round_half_away_from_zero(end), tf.int32)
    length = tf.maximum(end - start + 1, 1)
    bin_size = tf.cast(length, tf.float32) / float(bins)
    p = tf.range(bins, dtype=tf.float32)[None, :]
    lower = tf.cast(tf.floor(p * bin_size[:, None]), tf.int32) + start[:, None]
    upper = tf.cast(tf.math.ceil((p + 1.0) * bin_size[:, None]), tf.int32) + start[:, None]
    return tf.clip_by_value(lower, 0, size), tf.clip_by_value(upper, 0, size)


def roi_pool(features, boxes, box_indices, output_size, spatial_scale=1.0):
    """torchvision.ops.roi_pool on NHWC features.

    Args:
        features: [B, H, W, C] float32.
        boxes: [K, 4] yxyx in input-image pixels.
        box_indices: [K] int image index of each box.
        output_size: int or (out_h, out_w).
        spatial_scale: feature cells per input pixel (1 / stride, 1/16 for VGG16 conv5).
    Returns:
        [K, out_h, out_w, C] float32, the max of each bin (0 for an empty bin).
    """
    features = tf.convert_to_tensor(features, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    box_indices = tf.cast(box_indices, tf.int32)
    out_h, out_w = _pair(output_size)
    shape = tf.shape(features)
    y1, x1, y2, x2 = split_coordinates(boxes * spatial_scale)
    row_start, row_end = _bin_edges(y1, y2, out_h, shape[1])
    col_start, col_end = _bin_edges(x1, x2, out_w, shape[2])
    channels = features.shape[-1]

    def pool_one(args):
        image, r0, r1, c0, c1 = args
        # Read only the RoI's span of the map (bins are monotone, so it is [first start, last end)).
        top, bottom = tf.reduce_min(r0), tf.reduce_max(r1)
        left, right = tf.reduce_min(c0), tf.reduce_max(c1)
        crop = features[image, top:bottom, left:right, :]  # [h, w, C]
        rows = top + tf.range(bottom - top)
        cols = left + tf.range(right - left)
        in_row_bin = (rows[None, :] >= r0[:, None]) & (rows[None, :] < r1[:, None])  # [out_h, h]
        in_col_bin = (cols[None, :] >= c0[:, None]) & (cols[None, :] < c1[:, None])  # [out_w, w]
        # Separable max: over each row bin first, then over each column bin.
        row_max = tf.reduce_max(tf.where(in_row_bin[:, :, None, None], crop[None], float("-inf")), axis=1)
        pooled = tf.reduce_max(tf.where(in_col_bin[None, :, :, None], row_max[:, None], float("-inf")), axis=2)
        empty = (r1 <= r0)[:, None] | (c1 <= c0)[None, :]
        return tf.where(empty[..., None], 0.0, pooled)

    return tf.map_fn(pool_one, (box_indices, row_start, row_end, col_start, col_end),
                     fn_output_signature=tf.TensorSpec([out_h, out_w, channels], tf.float32))
