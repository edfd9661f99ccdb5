"""YOLOv1 and YOLOv2 losses, term by term, on the grid layouts of `kdet.ops.yolo_grid`.

Every term is a sum over cells / predictors of one image, averaged over the batch (the papers' sums are per image).

YOLOv1 (paper, eq. 3), predictions [B, S, S, nb * 5 + C] with boxes (y, x, sqrt h, sqrt w, confidence):
    coord    = l_coord * sum_ij 1obj_ij [(y - y^)^2 + (x - x^)^2 + (sqrt h - sqrt h^)^2 + (sqrt w - sqrt w^)^2]
    object   =           sum_ij 1obj_ij (IoU(pred_ij, truth) - C^_ij)^2        (the confidence target is the IoU)
    noobject = l_noobj * sum_ij 1noobj_ij C^_ij^2                               (1noobj_ij = 1 - 1obj_ij)
    class    =           sum_i  1obj_i sum_c (p_i(c) - p^_i(c))^2
  1obj_ij: the cell holds an object and predictor j is responsible for it, i.e. has the highest IoU with it of the
  cell's nb predictors. When none overlaps it (early training), the one with the lowest RMSE of (y, x, h, w) is
  taken, as Darknet's detection layer does; otherwise the first predictor would always win the ties at IoU 0.
  1noobj_ij covers the non-responsible predictors of object cells too (Darknet: every predictor gets the no-object
  delta, the responsible one's is then replaced).

YOLOv2 (the YOLO9000 paper gives no formula; these are the terms and weights of Darknet's region layer with
yolo-voc.cfg: coord 1, object 5, noobject 1, class 1, thresh .6, rescore, bias_match), predictions
[B, S_h, S_w, A * (5 + C)] raw (t_y, t_x, t_h, t_w, t_o, logits), targets from `yolo_v2_encode`:
    coord    = l_coord * sum_assigned (2 - h w) [(s(t_y) - y*)^2 + (s(t_x) - x*)^2 + (t_h - t_h*)^2 + (t_w - t_w*)^2]
               with h, w the truth's size relative to the image (small boxes weigh more)
    object   = l_obj   * sum_assigned (IoU(pred, truth) - s(t_o))^2
    noobject = l_noobj * sum_unassigned [best IoU of the prediction with any truth < ignore_threshold] s(t_o)^2
    class    = l_class * sum_assigned cross_entropy(one-hot, softmax(logits))   (Darknet's delta p - onehot is
               this term's gradient with respect to the logits)
    prior    = prior_weight * sum_unassigned [(s(t_y) - .5)^2 + (s(t_x) - .5)^2 + t_h^2 + t_w^2]
               the early-training term (Darknet: the first 12800 images) that pulls every prediction to its prior,
               centred in its cell; the model passes prior_weight = 0 after the warm-up.
IoU targets are constants (stop_gradient), as Darknet's rescore uses them.
"""
import tensorflow as tf

from kdet.losses.box import box_loss
from kdet.ops.box_ops import box_iou
from kdet.ops.yolo_grid import cell_offsets, yolo_v2_boxes


def split_v1(predictions, num_boxes, num_classes):
    """[B, S, S, nb * 5 + C] -> boxes [B, S, S, nb, 4] (y, x, sqrt h, sqrt w), confidence [B, S, S, nb],
    class_probs [B, S, S, C]."""
    shape = tf.shape(predictions)
    boxes = tf.reshape(predictions[..., :num_boxes * 5], tf.concat([shape[:3], [num_boxes, 5]], axis=0))
    return boxes[..., :4], boxes[..., 4], predictions[..., num_boxes * 5:num_boxes * 5 + num_classes]


def _v1_relative_boxes(y, x, h, w, grid):
    """Cell offsets + sizes relative to the image -> yxyx relative to the image (all broadcast [B, S, S, ...])."""
    rows, cols = cell_offsets(grid, grid)
    extra = len(y.shape) - 3
    rows = tf.reshape(rows, [1, grid, grid] + [1] * extra)
    cols = tf.reshape(cols, [1, grid, grid] + [1] * extra)
    cy, cx = (y + rows) / grid, (x + cols) / grid
    return tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def responsible_predictor(predictions, targets, num_boxes, num_classes):
    """Which of a cell's nb predictors is responsible for its object, and the IoUs used to decide.

    Args:
        predictions: [B, S, S, nb * 5 + C]; targets: [B, S, S, 5 + C] from `yolo_v1_encode`.
    Returns:
        index [B, S, S] int32 (meaningful where the cell has an object), iou [B, S, S, nb] of each predictor's
        box with the cell's truth box (image-relative coordinates).
    """
    grid = predictions.shape[1] or tf.shape(predictions)[1]
    boxes, _, _ = split_v1(predictions, num_boxes, num_classes)
    pred_h, pred_w = tf.square(boxes[..., 2]), tf.square(boxes[..., 3])
    pred = _v1_relative_boxes(boxes[..., 0], boxes[..., 1], pred_h, pred_w, grid)  # [B, S, S, nb, 4]
    truth = _v1_relative_boxes(targets[..., 0:1], targets[..., 1:2], targets[..., 2:3], targets[..., 3:4], grid)
    iou = box_iou(pred, truth)[..., 0]  # [B, S, S, nb]
    # Darknet's rule when no predictor overlaps the truth: the smallest RMSE of (y, x, h, w), image-relative.
    pred_yxhw = tf.stack([(pred[..., 0] + pred[..., 2]) / 2, (pred[..., 1] + pred[..., 3]) / 2, pred_h, pred_w], -1)
    truth_yxhw = tf.stack([(truth[..., 0] + truth[..., 2]) / 2, (truth[..., 1] + truth[..., 3]) / 2,
                           targets[..., 2:3], targets[..., 3:4]], -1)
    rmse = tf.sqrt(tf.reduce_sum(tf.square(pred_yxhw - truth_yxhw), axis=-1))
    any_overlap = tf.reduce_max(iou, axis=-1, keepdims=True) > 0
    rank = tf.where(any_overlap, iou, -rmse)
    return tf.argmax(rank, axis=-1, output_type=tf.int32), iou


def yolo_v1_loss(predictions, targets, num_boxes, num_classes, lambda_coord=5.0, lambda_noobj=0.5):
    """The YOLOv1 loss (module docstring).

    Args:
        predictions: [B, S, S, nb * 5 + C] raw (linear) network output.
        targets: [B, S, S, 5 + C] from `kdet.ops.yolo_v1_encode` (y, x, h, w, objectness, one-hot class).
    Returns:
        {"coord", "object", "noobject", "class"}: scalars, per-image sums averaged over the batch.
    """
    predictions = tf.cast(predictions, tf.float32)
    targets = tf.cast(targets, tf.float32)
    batch = tf.cast(tf.shape(predictions)[0], tf.float32)
    boxes, confidence, class_probs = split_v1(predictions, num_boxes, num_classes)
    has_object = targets[..., 4]  # [B, S, S]
    index, iou = responsible_predictor(predictions, targets, num_boxes, num_classes)
    responsible = tf.one_hot(index, num_boxes) * has_object[..., None]  # 1obj_ij [B, S, S, nb]
    truth = tf.stack([targets[..., 0], targets[..., 1], tf.sqrt(targets[..., 2]), tf.sqrt(targets[..., 3])], -1)
    coord = tf.reduce_sum(responsible * box_loss(boxes - truth[..., None, :], "l2"))
    object_term = tf.reduce_sum(responsible * tf.square(tf.stop_gradient(iou) - confidence))
    noobject = tf.reduce_sum((1.0 - responsible) * tf.square(confidence))
    class_term = tf.reduce_sum(has_object * tf.reduce_sum(tf.square(targets[..., 5:] - class_probs), axis=-1))
    return {"coord": lambda_coord * coord / batch, "object": object_term / batch,
            "noobject": lambda_noobj * noobject / batch, "class": class_term / batch}


def yolo_v2_loss(predictions, targets, gt_boxes, gt_labels, anchors, stride, num_classes, lambda_coord=1.0,
                 lambda_object=5.0, lambda_noobject=1.0, lambda_class=1.0, ignore_threshold=0.6, prior_weight=0.01,
                 image_size=None):
    """The YOLOv2 loss (module docstring).

    Args:
        predictions: [B, S_h, S_w, A * (5 + C)] raw head output.
        targets: [B, S_h, S_w, A, 5 + C] from `kdet.ops.yolo_v2_encode` with the same anchors and grid.
        gt_boxes: [B, N, 4] yxyx pixels of the network input; gt_labels: [B, N], -1 = padding (ignored).
        anchors: [A, 2] prior (height, width) pixels; stride: pixels per cell (32 for DarkNet-19).
        prior_weight: weight of the early-training prior term (0 turns it off).
        image_size: (H, W) of the input, ints or scalar tensors, for the (2 - h w) weight of relative sizes;
            None = the grid's extent (S_h * stride, S_w * stride).
    Returns:
        {"coord", "object", "noobject", "class", "prior"}: per-image sums averaged over the batch.
    """
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    num_anchors = anchors.shape[0]
    stride = tf.cast(stride, tf.float32)
    shape = tf.shape(predictions)
    raw = tf.reshape(tf.cast(predictions, tf.float32), tf.concat([shape[:3], [num_anchors, 5 + num_classes]], 0))
    targets = tf.cast(targets, tf.float32)
    batch = tf.cast(shape[0], tf.float32)
    assigned = targets[..., 4]  # [B, S_h, S_w, A]
    if image_size is None:
        image_size = (tf.cast(shape[1], tf.float32) * stride, tf.cast(shape[2], tf.float32) * stride)
    image_h, image_w = (tf.cast(s, tf.float32) for s in image_size)

    pred_boxes = yolo_v2_boxes(raw, anchors, stride)  # [B, S_h, S_w, A, 4]
    sig_y, sig_x, objectness = tf.sigmoid(raw[..., 0]), tf.sigmoid(raw[..., 1]), tf.sigmoid(raw[..., 4])

    # Coordinates, with Darknet's (2 - w h) weight from the truth's relative size.
    truth_hp = anchors[:, 0] * tf.exp(targets[..., 2])  # the truth's size in pixels
    truth_wp = anchors[:, 1] * tf.exp(targets[..., 3])
    scale = tf.where(assigned > 0, 2.0 - (truth_hp / image_h) * (truth_wp / image_w), 0.0)
    coord_error = box_loss(tf.stack([sig_y, sig_x, raw[..., 2], raw[..., 3]], -1) - targets[..., 0:4], "l2")
    coord = tf.reduce_sum(scale * coord_error)

    # Objectness: the assigned prediction's target is its IoU with its truth (rescore).
    cell_shape = tf.shape(assigned)
    rows, cols = cell_offsets(shape[1], shape[2])
    truth_cy = (targets[..., 0] + rows[None, :, :, None]) * stride
    truth_cx = (targets[..., 1] + cols[None, :, :, None]) * stride
    truth_boxes = tf.stack([truth_cy - truth_hp / 2, truth_cx - truth_wp / 2,
                            truth_cy + truth_hp / 2, truth_cx + truth_wp / 2], axis=-1)
    flat_pred = tf.reshape(pred_boxes, [cell_shape[0], -1, 1, 4])
    flat_truth = tf.reshape(truth_boxes, [cell_shape[0], -1, 1, 4])
    paired_iou = tf.reshape(box_iou(flat_pred, flat_truth), cell_shape)
    object_term = tf.reduce_sum(assigned * tf.square(tf.stop_gradient(paired_iou) - objectness))

    # No-object: only predictions that overlap no truth by ignore_threshold or more.
    valid = tf.cast(gt_labels >= 0, tf.float32)[:, None, :]  # [B, 1, N]
    all_iou = box_iou(tf.reshape(pred_boxes, [cell_shape[0], -1, 4]), tf.cast(gt_boxes, tf.float32)) * valid
    best_iou = tf.reshape(tf.reduce_max(tf.concat([all_iou, tf.zeros_like(all_iou[..., :1])], -1), -1), cell_shape)
    ignore = tf.stop_gradient(tf.cast(best_iou >= ignore_threshold, tf.float32))
    noobject = tf.reduce_sum((1.0 - assigned) * (1.0 - ignore) * tf.square(objectness))

    class_term = tf.reduce_sum(assigned * tf.nn.softmax_cross_entropy_with_logits(targets[..., 5:], raw[..., 5:]))

    prior_error = box_loss(tf.stack([sig_y - 0.5, sig_x - 0.5, raw[..., 2], raw[..., 3]], -1), "l2")
    prior = tf.reduce_sum((1.0 - assigned) * prior_error)
    return {"coord": lambda_coord * coord / batch, "object": lambda_object * object_term / batch,
            "noobject": lambda_noobject * noobject / batch, "class": lambda_class * class_term / batch,
            "prior": tf.cast(prior_weight, tf.float32) * prior / batch}
