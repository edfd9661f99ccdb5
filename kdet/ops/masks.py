"""Instance-mask ops of Mask R-CNN: training targets inside RoIs, and pasting RoI masks back into the image.

    mask_targets(gt_masks, rois, matched_gt)   each RoI's matched ground-truth mask cropped and resized into the
                                               RoI by RoIAlign, binarised at 0.5 (the paper's L_mask targets)
    paste_masks(masks, boxes, image_size)      M x M RoI probabilities -> image-frame masks, exactly as torchvision's
                                               paste_masks_in_image

Both are pure TF with fixed shapes (graph, any batch). `paste_masks` has a builtins-only twin for TFLite (no
CropAndResize: separable bilinear weights and two batched matmuls), chosen while `builtins_only()` is active; both
sample the same points, so they agree to float rounding.
"""
import tensorflow as tf

from kdet.ops.box_ops import split_coordinates
from kdet.ops.mode import builtins_only_enabled
from kdet.ops.roi_align import roi_align


def mask_targets(gt_masks, rois, matched_gt, size=28):
    """Mask R-CNN's mask targets: torchvision's project_masks_on_boxes, binarised at 0.5 (Detectron's).

    torchvision: roi_align(gt_masks[:, None], rois with the matched mask as "image", (size, size), spatial_scale 1,
    sampling_ratio -1 (adaptive), aligned=False); its loss then uses the soft values, the paper and Detectron
    threshold them at 0.5, as here.

    Args:
        gt_masks: [B, M, H, W] instance masks (uint8 / bool / float 0..1) in the same pixels as the RoIs.
        rois: [B, S, 4] yxyx pixels.
        matched_gt: [B, S] int, the row of gt_masks each RoI matched, -1 for none.
        size: side of the targets (28).
    Returns:
        [B, S, size, size] float32 of 0 / 1; all zero where matched_gt is -1.
    """
    gt_masks = tf.cast(gt_masks, tf.float32)
    rois = tf.cast(rois, tf.float32)
    matched_gt = tf.cast(matched_gt, tf.int32)
    shape = tf.shape(gt_masks)
    batch, count = shape[0], shape[1] + 1
    # One zero mask per image after the real ones: "no match" reads it, and M = 0 (no objects) still gathers.
    padded = tf.pad(gt_masks, [[0, 0], [0, 1], [0, 0], [0, 0]])
    flat = tf.reshape(padded, tf.concat([[batch * count], shape[2:], [1]], axis=0))
    if gt_masks.shape[2] is not None and gt_masks.shape[3] is not None:
        flat.set_shape([None, gt_masks.shape[2], gt_masks.shape[3], 1])
    rows = tf.where(matched_gt >= 0, matched_gt, count - 1)
    indices = tf.range(batch)[:, None] * count + rows  # [B, S]
    pooled = roi_align(flat, tf.reshape(rois, [-1, 4]), tf.reshape(indices, [-1]), size, spatial_scale=1.0,
                       sampling_ratio=-1, aligned=False)
    targets = tf.cast(pooled[..., 0] >= 0.5, tf.float32)
    targets = tf.reshape(targets, tf.concat([tf.shape(matched_gt), [size, size]], axis=0))
    return tf.where((matched_gt >= 0)[..., None, None], targets, 0.0)


def _expanded_int_boxes(boxes, scale):
    """torchvision expand_boxes(boxes, scale).to(int64): yxyx [..., 4] -> four int32 [...] (truncated toward 0)."""
    y1, x1, y2, x2 = split_coordinates(boxes)
    h_half, w_half = (y2 - y1) * 0.5 * scale, (x2 - x1) * 0.5 * scale
    y_c, x_c = (y2 + y1) * 0.5, (x2 + x1) * 0.5
    return tuple(tf.cast(v, tf.int32) for v in (y_c - h_half, x_c - w_half, y_c + h_half, x_c + w_half))


def _pixels_inside(low, high, size):
    """[..., size] bool: pixel i of the image row / column lies in [low, high] (ints, both ends included)."""
    i = tf.range(size)
    return (i >= low[..., None]) & (i <= high[..., None])


def _source_coordinates(low, high, size, padded_size):
    """torchvision's bilinear source position (align_corners=False) of image pixels 0..size-1 in the padded mask,
    for a mask resized to max(high - low + 1, 1) pixels placed at `low` ([N] ints): [N, size] float32, clamped at 0."""
    length = tf.maximum(high - low + 1, 1)
    scale = float(padded_size) / tf.cast(length, tf.float32)
    offset = tf.cast(tf.range(size)[None, :] - low[:, None], tf.float32)  # [N, size]
    return tf.maximum(scale[:, None] * (offset + 0.5) - 0.5, 0.0)


def _paste_crop_and_resize(padded, lows, highs, image_size):
    """padded [N, P, P] -> [N, H, W] float32 with CropAndResize, sampling the same points as torchvision."""
    height, width = image_size
    size = padded.shape[-1]
    # One edge-replicated cell each side: a source position in [-1, 0) then reads row 0, torchvision's clamp.
    edged = tf.pad(padded, [[0, 0], [1, 1], [1, 1]], mode="SYMMETRIC")[..., None]
    span = float(size + 1)  # edged size - 1
    crop = []
    for low, high, extent in ((lows[0], highs[0], height), (lows[1], highs[1], width)):
        step = float(size) / tf.cast(tf.maximum(high - low + 1, 1), tf.float32)
        first = step * (0.5 - tf.cast(low, tf.float32)) - 0.5 + 1.0  # source of image pixel 0, edged frame
        last = first + step * (tf.cast(extent, tf.float32) - 1.0)
        crop.append((first / span, last / span))
    boxes = tf.stack([crop[0][0], crop[1][0], crop[0][1], crop[1][1]], axis=-1)
    count = tf.shape(padded)[0]
    values = tf.image.crop_and_resize(edged, boxes, tf.range(count), tf.stack([height, width]), method="bilinear")
    return values[..., 0]


def _interpolation_matrix(low, high, size, padded_size):
    """[N, size, P]: row i holds the bilinear weights of the padded mask's rows for image pixel i (torchvision's
    upsample_bilinear2d weights, lower index floor(source), upper clamped to P - 1)."""
    source = _source_coordinates(low, high, size, padded_size)
    lower_f = tf.floor(source)
    fraction = source - lower_f
    lower = tf.minimum(tf.cast(lower_f, tf.int32), padded_size - 1)
    upper = tf.minimum(lower + 1, padded_size - 1)
    weights = tf.one_hot(lower, padded_size) * (1.0 - fraction)[..., None] + \
        tf.one_hot(upper, padded_size) * fraction[..., None]
    return weights


def _paste_matmul(padded, lows, highs, image_size):
    """Builtins-only twin of `_paste_crop_and_resize` followed by the cut to the box: rows @ mask @ columns^T
    (ONE_HOT, BATCH_MATMUL). The weights of image rows / columns outside [low, high] are zero, so the product is
    exactly 0 outside the box without a [N, H, W] select."""
    height, width = image_size
    size = padded.shape[-1]
    rows, cols = (_interpolation_matrix(low, high, extent, size) *
                  tf.cast(_pixels_inside(low, high, extent), tf.float32)[..., None]
                  for low, high, extent in zip(lows, highs, (height, width)))  # [N, H, P], [N, W, P]
    return tf.matmul(tf.matmul(rows, padded), cols, transpose_b=True)


def paste_masks(masks, boxes, image_size, threshold=0.5, padding=1, rows=None):
    """torchvision's paste_masks_in_image on fixed shapes: RoI masks into the image frame.

    Per box (torchvision expand_masks / expand_boxes / paste_mask_in_image): the M x M map is padded by `padding`
    zero cells and its box widened about its centre by (M + 2 padding) / M; the widened corners are truncated to
    integers (x0, y0, x1, y1); the padded map is resized bilinearly (align_corners=False) to
    max(y1 - y0 + 1, 1) x max(x1 - x0 + 1, 1) pixels and written at (y0, x0), cut to the image.

    Args:
        masks: [B, K, M, M] probabilities.
        boxes: [B, K, 4] yxyx pixels of the image.
        image_size: (H, W) ints or scalar int tensors.
        threshold: pixels with probability > threshold (>= 0) are 1; None returns the float probabilities.
        rows: None, or a static K' >= K: the result is padded with zero masks to K' rows (TFLite has no uint8 PAD:
            the builtins-only twin pastes one zero map more and gathers the uint8 rows).
    Returns:
        [B, K, H, W] (or [B, rows, H, W]) uint8 0 / 1 (float32 probabilities when threshold is None).
    """
    masks = tf.cast(masks, tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    side = masks.shape[-1]
    if side is None or masks.shape[-2] != side:
        raise ValueError(f"paste_masks needs square masks of static size [B, K, M, M], got {masks.shape}")
    builtins = builtins_only_enabled()
    if builtins and rows is not None and threshold is not None:
        # TFLite has no uint8 PAD: one zero map per image is pasted after the K (its 28 x 28 zeros, not H x W), and
        # the uint8 masks gather their rows (K, K + 1, ... read that zero row).
        count = tf.shape(masks)[1]
        masks = tf.pad(masks, [[0, 0], [0, 1], [0, 0], [0, 0]])
        boxes = tf.pad(boxes, [[0, 0], [0, 1], [0, 0]])
    padded_size = side + 2 * padding
    batch_shape = tf.shape(masks)[:2]
    padded = tf.pad(tf.reshape(masks, [-1, side, side]), [[0, 0], [padding, padding], [padding, padding]])
    y0, x0, y1, x1 = _expanded_int_boxes(tf.reshape(boxes, [-1, 4]), padded_size / side)
    height, width = image_size
    if builtins:
        values = _paste_matmul(padded, (y0, x0), (y1, x1), (height, width))
    else:
        values = _paste_crop_and_resize(padded, (y0, x0), (y1, x1), (height, width))
        inside = _pixels_inside(y0, y1, height)[:, :, None] & _pixels_inside(x0, x1, width)[:, None, :]
        values = tf.where(inside, values, 0.0)
    values = tf.reshape(values, tf.concat([batch_shape, tf.shape(values)[1:]], axis=0))
    if threshold is None:
        return _pad_rows(values, rows)
    binary = tf.cast(values > threshold, tf.uint8)
    if builtins and rows is not None:
        binary = tf.gather(binary, tf.minimum(tf.range(rows), count), axis=1)
        binary.set_shape([None, rows, None, None])
        return binary
    return _pad_rows(binary, rows)


def _pad_rows(masks, rows):
    """[B, K, H, W] -> [B, rows, H, W], zero masks after the K given (unchanged when rows is None)."""
    if rows is None:
        return masks
    padded = tf.pad(masks, [[0, 0], [0, rows - tf.shape(masks)[1]], [0, 0], [0, 0]])
    padded.set_shape([None, rows, None, None])
    return padded
