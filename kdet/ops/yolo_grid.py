"""YOLO grid coding: ground truth -> per-cell targets, and raw grid predictions -> boxes.

Axis order follows kdet (y before x, h before w). Layouts:
  * YOLOv1 target [S_h, S_w, 5 + C]: (y, x, h, w, objectness, one-hot class). (y, x) is the box centre inside its
    cell in [0, 1) (the lecture's x = (220 - 149) / 149), (h, w) the box size divided by the image size, in
    [0, 1], so a loss can take sqrt(h), sqrt(w). One object per cell.
  * YOLOv1 prediction [S_h, S_w, B * 5 + C]: B blocks (y, x, h, w, confidence) then C class probabilities
    Pr(class | object), shared by the cell's B boxes.
  * YOLOv2 prediction [S_h, S_w, A * (5 + C)]: per anchor (t_y, t_x, t_h, t_w, t_o, C class logits);
    b_y = sigmoid(t_y) + c_y, b_h = p_h exp(t_h) (in cells / pixels), objectness sigmoid(t_o), softmax classes.
  * YOLOv2 target [S_h, S_w, A, 5 + C]: (sigmoid target for y, for x, t_h, t_w, objectness, one-hot class) for
    the prior with the best shape IoU, one object per (cell, prior).
Boxes are yxyx pixels, flattened cell-major (row-major cells), then box / anchor. When several objects claim the
same slot the first one in input order keeps it. Functions take one image ([N, 4]) or a batch ([B, N, 4]).

Sizes may be Python ints or scalar tensors (`kdet.ops.images.image_hw`): YOLOv2's grid is ceil(input size / stride)
at run time, so one model encodes, decodes and trains at any input size, with static shapes where the trace knows
the size and dynamic ones where Keras relaxed it. YOLOv1's grid is fixed by its fully connected head.
"""
import tensorflow as tf

from kdet.ops.box_ops import clip_boxes, split_coordinates


def _dim(tensor, axis):
    """tensor's size along `axis`: a Python int when static, a scalar int32 tensor otherwise."""
    return tensor.shape[axis] if tensor.shape[axis] is not None else tf.shape(tensor)[axis]


def _batched(boxes, labels):
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    labels = tf.cast(labels, tf.int32)
    unbatched = boxes.shape.rank == 2
    if unbatched:
        boxes, labels = boxes[None], labels[None]
    return boxes, labels, unbatched


def grid_shape(image_size, stride):
    """(H, W) pixels -> (ceil(H / stride), ceil(W / stride)) cells: ints for ints, int32 tensors for tensors."""
    return tuple((s + stride - 1) // stride for s in image_size)


def cell_offsets(grid_h, grid_w):
    """rows, cols [S_h, S_w] float32: the cell indices (c_y, c_x) of every cell."""
    return tf.meshgrid(tf.range(grid_h, dtype=tf.float32), tf.range(grid_w, dtype=tf.float32), indexing="ij")


def _centres_in_cells(boxes, image_size, cell_size):
    """Boxes clipped to the image -> centre (cy, cx) in cell units, sizes (h, w) in pixels, valid-area mask.

    cell_size: (cell height, cell width) pixels (image / S for YOLOv1, the stride for YOLOv2)."""
    image_h, image_w = (tf.cast(s, tf.float32) for s in image_size)
    cell_h, cell_w = (tf.cast(s, tf.float32) for s in cell_size)
    boxes = clip_boxes(boxes, image_h, image_w)
    y1, x1, y2, x2 = split_coordinates(boxes)
    h, w = y2 - y1, x2 - x1
    return (y1 + 0.5 * h) / cell_h, (x1 + 0.5 * w) / cell_w, h, w, (h > 0) & (w > 0)


def _cells(cy, cx, grid_h, grid_w):
    """Centres in cell units -> (row, col) int32 of the cell holding them, inside the grid."""
    row = tf.clip_by_value(tf.cast(tf.floor(cy), tf.int32), 0, grid_h - 1)
    col = tf.clip_by_value(tf.cast(tf.floor(cx), tf.int32), 0, grid_w - 1)
    return row, col


def _first_claim(slot_ids, valid, num_slots):
    """slot_ids, valid: [B, N] -> [B, num_slots] int32 index into N of each slot's object, N if it has none.

    A slot goes to the lowest index n that claims it (deterministic, unlike a scatter with duplicates)."""
    batch = tf.shape(slot_ids)[0]
    count = tf.shape(slot_ids)[1]
    segment = tf.where(valid, slot_ids + tf.range(batch)[:, None] * num_slots, batch * num_slots)
    owner = tf.math.unsorted_segment_min(tf.broadcast_to(tf.range(count)[None, :], tf.shape(slot_ids)),
                                         segment, batch * num_slots + 1)[:-1]
    owner = tf.reshape(owner, [batch, num_slots])
    return tf.minimum(owner, count)  # empty segments hold the int32 maximum


def _gather_owned(fields, owner):
    """fields [B, N, F], owner [B, S] (N = empty slot) -> [B, S, F]; a zero row stands in for empty slots, which
    also keeps the gather valid when N == 0."""
    shape = tf.shape(fields)
    fields = tf.concat([fields, tf.zeros([shape[0], 1, shape[2]], fields.dtype)], axis=1)
    return tf.gather(fields, owner, batch_dims=1)


def yolo_v1_encode(boxes, labels, image_size, grid_size, num_classes):
    """Ground truth -> YOLOv1 cell targets.

    Args:
        boxes: [N, 4] or [B, N, 4] yxyx pixels (clipped to the image first).
        labels: [N] or [B, N] int, -1 for padding (ignored, as are boxes of zero area).
        image_size: (H, W) pixels, ints or scalar tensors. grid_size: S or (S_h, S_w), ints. num_classes: C.
    Returns:
        [S_h, S_w, 5 + C] or [B, S_h, S_w, 5 + C] float32 (layout in the module docstring); cells without an
        object are all 0.
    """
    boxes, labels, unbatched = _batched(boxes, labels)
    grid_h, grid_w = (int(grid_size[0]), int(grid_size[1])) if isinstance(grid_size, (list, tuple)) else \
        (int(grid_size), int(grid_size))
    image_h, image_w = (tf.cast(s, tf.float32) for s in image_size)
    cy, cx, h, w, has_area = _centres_in_cells(boxes, (image_h, image_w), (image_h / grid_h, image_w / grid_w))
    row, col = _cells(cy, cx, grid_h, grid_w)
    owner = _first_claim(row * grid_w + col, (labels >= 0) & has_area, grid_h * grid_w)
    fields = tf.concat([
        tf.stack([cy - tf.cast(row, tf.float32), cx - tf.cast(col, tf.float32), h / image_h, w / image_w,
                  tf.ones_like(h)], axis=-1),
        tf.one_hot(tf.maximum(labels, 0), num_classes),
    ], axis=-1)  # [B, N, 5 + C]
    target = tf.reshape(_gather_owned(fields, owner), [-1, grid_h, grid_w, 5 + num_classes])
    return target[0] if unbatched else target


def _yxhw_to_yxyx(cy, cx, h, w):
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def yolo_v1_decode(predictions, image_size, num_boxes, num_classes, sqrt_wh=True):
    """YOLOv1 grid output -> boxes and class-specific confidences.

    Args:
        predictions: [B, S_h, S_w, num_boxes * 5 + C] as the head outputs them (YOLOv1's last layer is linear);
            the grid size must be static (the fully connected head fixes it).
        image_size: (H, W) pixels of the image the boxes are for, ints or scalar tensors (the grid covers it whole,
            so boxes scale with it).
        sqrt_wh: the network predicts sqrt(h), sqrt(w) (Darknet's yolov1 `sqrt=1`, matching the loss on square
            roots), so they are squared here; False if it predicts h, w directly.
    Returns:
        boxes [B, S_h * S_w * num_boxes, 4] yxyx pixels, and scores [B, S_h * S_w * num_boxes, C] =
        Pr(class | object) * confidence (the lecture's class-specific confidence).
    """
    predictions = tf.convert_to_tensor(predictions, tf.float32)
    grid_h, grid_w = predictions.shape[1], predictions.shape[2]
    image_h, image_w = (tf.cast(s, tf.float32) for s in image_size)
    box_part = tf.reshape(predictions[..., :num_boxes * 5], [-1, grid_h, grid_w, num_boxes, 5])
    class_probs = predictions[..., num_boxes * 5:num_boxes * 5 + num_classes]
    rows, cols = cell_offsets(grid_h, grid_w)
    h, w = box_part[..., 2], box_part[..., 3]
    if sqrt_wh:
        h, w = tf.square(h), tf.square(w)
    cy = (box_part[..., 0] + rows[:, :, None]) / grid_h * image_h
    cx = (box_part[..., 1] + cols[:, :, None]) / grid_w * image_w
    boxes = _yxhw_to_yxyx(cy, cx, h * image_h, w * image_w)
    scores = box_part[..., 4:5] * class_probs[:, :, :, None, :]
    count = grid_h * grid_w * num_boxes
    return tf.reshape(boxes, [-1, count, 4]), tf.reshape(scores, [-1, count, num_classes])


def yolo_v2_boxes(raw, anchors, stride):
    """Boxes of YOLOv2 raw predictions on a grid of any (static or dynamic) size.

    Args:
        raw: [B, S_h, S_w, A, >= 4] (t_y, t_x, t_h, t_w, ...); anchors: [A, 2] (h, w) pixels; stride: pixels per
            cell.
    Returns:
        [B, S_h, S_w, A, 4] yxyx pixels: b_y = (sigmoid(t_y) + c_y) * stride, b_h = p_h exp(t_h).
    """
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    rows, cols = cell_offsets(_dim(raw, 1), _dim(raw, 2))
    stride = tf.cast(stride, tf.float32)
    cy = (tf.sigmoid(raw[..., 0]) + rows[:, :, None]) * stride
    cx = (tf.sigmoid(raw[..., 1]) + cols[:, :, None]) * stride
    return _yxhw_to_yxyx(cy, cx, anchors[:, 0] * tf.exp(raw[..., 2]), anchors[:, 1] * tf.exp(raw[..., 3]))


def yolo_v2_decode(predictions, anchors, num_classes, stride=32):
    """YOLOv2 grid output -> boxes, objectness and class probabilities.

    Args:
        predictions: [B, S_h, S_w, A * (5 + C)] raw head output; S_h, S_w static or dynamic.
        anchors: [A, 2] prior (height, width) in pixels; stride: pixels per cell (32 for DarkNet-19).
    Returns:
        {"boxes": [B, N, 4] yxyx pixels, "objectness": [B, N] sigmoid(t_o), "class_probs": [B, N, C] softmax,
         "scores": [B, N, C] objectness * class_probs}, N = S_h * S_w * A.
    """
    predictions = tf.convert_to_tensor(predictions, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    num_anchors = anchors.shape[0]
    grid_h, grid_w = _dim(predictions, 1), _dim(predictions, 2)
    raw = tf.reshape(predictions, [-1, grid_h, grid_w, num_anchors, 5 + num_classes])
    objectness = tf.sigmoid(raw[..., 4])
    class_probs = tf.nn.softmax(raw[..., 5:], axis=-1)
    count = grid_h * grid_w * num_anchors
    return {
        "boxes": tf.reshape(yolo_v2_boxes(raw, anchors, stride), [-1, count, 4]),
        "objectness": tf.reshape(objectness, [-1, count]),
        "class_probs": tf.reshape(class_probs, [-1, count, num_classes]),
        "scores": tf.reshape(objectness[..., None] * class_probs, [-1, count, num_classes]),
    }


def best_prior(heights, widths, anchors):
    """Index of the prior with the highest shape IoU (boxes and priors sharing a centre), first on ties.

    heights, widths: [...] pixels; anchors: [A, 2] (height, width) -> [...] int32."""
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    h, w = heights[..., None], widths[..., None]
    intersection = tf.minimum(h, anchors[:, 0]) * tf.minimum(w, anchors[:, 1])
    union = h * w + anchors[:, 0] * anchors[:, 1] - intersection
    return tf.argmax(tf.math.divide_no_nan(intersection, union), axis=-1, output_type=tf.int32)


def yolo_v2_encode(boxes, labels, anchors, image_size, num_classes, stride=32):
    """Ground truth -> YOLOv2 targets for the best prior of each object, on the grid of the image's size.

    Args:
        boxes: [N, 4] or [B, N, 4] yxyx pixels; labels: [N] or [B, N] int, -1 padding.
        anchors: [A, 2] prior (height, width) pixels. image_size: (H, W), ints or scalar tensors; the grid is
            `grid_shape(image_size, stride)` (cells of `stride` pixels from the top left, the last row / column
            reaching past the image when H or W is not a multiple of it).
    Returns:
        [S_h, S_w, A, 5 + C] or [B, S_h, S_w, A, 5 + C] float32: (y offset in cell, x offset in cell,
        log(h / p_h), log(w / p_w), 1, one-hot class) at the assigned (cell, prior), 0 elsewhere.
    """
    boxes, labels, unbatched = _batched(boxes, labels)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    num_anchors = anchors.shape[0]
    grid_h, grid_w = grid_shape(image_size, stride)
    cy, cx, h, w, has_area = _centres_in_cells(boxes, image_size, (stride, stride))
    row, col = _cells(cy, cx, grid_h, grid_w)
    prior = best_prior(h, w, anchors)
    slots = (row * grid_w + col) * num_anchors + prior
    owner = _first_claim(slots, (labels >= 0) & has_area, grid_h * grid_w * num_anchors)
    prior_size = tf.gather(anchors, prior)  # [B, N, 2]
    safe_h = tf.where(has_area, h, 1.0)  # log(0) of dropped boxes must not leak NaN through the gather
    safe_w = tf.where(has_area, w, 1.0)
    fields = tf.concat([
        tf.stack([cy - tf.cast(row, tf.float32), cx - tf.cast(col, tf.float32),
                  tf.math.log(safe_h / prior_size[..., 0]), tf.math.log(safe_w / prior_size[..., 1]),
                  tf.ones_like(h)], axis=-1),
        tf.one_hot(tf.maximum(labels, 0), num_classes),
    ], axis=-1)
    target = tf.reshape(_gather_owned(fields, owner), [-1, grid_h, grid_w, num_anchors, 5 + num_classes])
    return target[0] if unbatched else target
