"""From RPN outputs to region proposals, and from proposals to the second stage's sampled training RoIs.

`ProposalGenerator` is torchvision's RegionProposalNetwork.filter_proposals with fixed shapes (so it exports):
per image and per level the top `pre_nms_top_n` anchors by objectness, decoded (weights 1, 1, 1, 1), clipped to the
image, boxes with a side < `min_size` and scores < `score_threshold` dropped, NMS at 0.7 within each level, and the
best `post_nms_top_n` of all levels kept by score. Proposals carry no gradient (approximate joint training).
The per-level NMS is `kdet.ops.combined_nms` with one "class" per level, so it has its TFLite-builtins twin.

`sample_rois` is torchvision's RoIHeads.select_training_samples: the ground-truth boxes join the proposals, each
candidate is matched to its best box (IoU >= 0.5 foreground, below background), and 512 are sampled per image, at
most 25 % foreground, topped up with background.
"""
import keras
import tensorflow as tf

from kdet.ops.anchor_targets import valid_ground_truth
from kdet.ops import box_iou, clip_boxes, combined_nms, decode_boxes, encode_boxes, match, sample_balanced

PADDING_LABEL = -1  # roi_labels of a sampled slot that holds no RoI (fewer candidates than the sample size)


@keras.saving.register_keras_serializable(package="kdet")
class ProposalGenerator(keras.layers.Layer):
    """Args:
        pre_nms_top_n: (training, inference) candidates per level before NMS (torchvision 2000, 1000).
        post_nms_top_n: (training, inference) proposals kept per image after NMS (torchvision 2000, 1000).
        nms_threshold: IoU above which a lower-scoring box of the same level is suppressed (0.7).
        min_size: boxes with a side shorter than this (pixels) are dropped (torchvision 1e-3).
        score_threshold: objectness probabilities below this are dropped (0.0: none).

    call(objectness [B, N], deltas [B, N, 4], anchors [N, 4], anchors_per_level=..., image_size=..., training) ->
        {"proposals": [B, P, 4] yxyx pixels by descending score, zero rows past the valid ones,
         "proposal_scores": [B, P] objectness probabilities (0 past the valid ones),
         "proposal_valid": [B, P] bool}, P = post_nms_top_n of the mode.
    anchors_per_level (the number of anchors of each level, in the order of the RPN outputs) and image_size ((H, W)
    the boxes are clipped to) come from the input at run time: ints when the traced shape is static (the graph then
    holds constants, as an export wants), scalar int tensors when it is not.

    The layer computes in float32 whatever the global dtype policy: anchors and box decoding in bfloat16 would move
    boxes by pixels (and Keras would cast the anchors to the compute dtype on the way in).
    """

    def __init__(self, pre_nms_top_n=(2000, 1000), post_nms_top_n=(2000, 1000), nms_threshold=0.7, min_size=1e-3,
                 score_threshold=0.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.pre_nms_top_n = tuple(int(n) for n in pre_nms_top_n)
        self.post_nms_top_n = tuple(int(n) for n in post_nms_top_n)
        self.nms_threshold = float(nms_threshold)
        self.min_size = float(min_size)
        self.score_threshold = float(score_threshold)

    def call(self, objectness, deltas, anchors, anchors_per_level, image_size, training=False):
        mode = 0 if training else 1
        pre_nms, post_nms = self.pre_nms_top_n[mode], self.post_nms_top_n[mode]
        objectness = tf.stop_gradient(tf.cast(objectness, tf.float32))
        deltas = tf.stop_gradient(tf.cast(deltas, tf.float32))
        anchors = tf.cast(anchors, tf.float32)
        num_levels = len(anchors_per_level)
        boxes, scores = [], []
        start = 0
        for level, count in enumerate(anchors_per_level):
            k = tf.minimum(pre_nms, count) if tf.is_tensor(count) else min(pre_nms, int(count))
            level_logits = objectness[:, start:start + count]
            top_logits, top = tf.math.top_k(level_logits, k=k)  # sorted, ties by lower index (torch.topk)
            level_boxes = decode_boxes(tf.gather(deltas[:, start:start + count], top, batch_dims=1),
                                       tf.gather(anchors[start:start + count], top))
            boxes.append(clip_boxes(level_boxes, *image_size))
            # One score column per level: NMS runs within a level only; -1 marks "not in this level".
            column = tf.constant([i == level for i in range(num_levels)])
            scores.append(tf.where(column, tf.sigmoid(top_logits)[..., None], -1.0))
            start += count
        boxes = tf.concat(boxes, axis=1)
        scores = tf.concat(scores, axis=1)
        heights, widths = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        keep = (heights >= self.min_size) & (widths >= self.min_size)
        keep = keep[..., None] & (scores >= self.score_threshold)
        # combined_nms keeps scores strictly above its threshold; every kept probability is >= 0 > -0.5.
        scores = tf.where(keep, scores, -1.0)
        result = combined_nms(boxes, scores, post_nms, iou_threshold=self.nms_threshold, score_threshold=-0.5)
        valid = tf.range(post_nms)[None, :] < result["num_detections"][:, None]
        return {"proposals": result["boxes"], "proposal_scores": result["scores"], "proposal_valid": valid}

    def get_config(self):
        return dict(super().get_config(), pre_nms_top_n=list(self.pre_nms_top_n),
                    post_nms_top_n=list(self.post_nms_top_n), nms_threshold=self.nms_threshold,
                    min_size=self.min_size, score_threshold=self.score_threshold)


def sample_rois(proposals, proposal_valid, gt_boxes, gt_labels, fg_iou_threshold=0.5, bg_iou_threshold=0.5,
                batch_size_per_image=512, positive_fraction=0.25, box_weights=(10.0, 10.0, 5.0, 5.0), seed=None):
    """The second stage's training RoIs and their targets (torchvision select_training_samples, fixed shapes).

    Args:
        proposals: [B, P, 4] yxyx pixels; proposal_valid: [B, P] bool.
        gt_boxes: [B, M, 4] yxyx pixels, padded; gt_labels: [B, M] int 0-based, -1 = padding. Degenerate boxes are
            ignored (neither candidates nor match targets).
        fg_iou_threshold, bg_iou_threshold: IoU >= fg is foreground, < bg background, in between ignored.
        batch_size_per_image, positive_fraction: S RoIs per image, at most int(S * fraction) foreground.
        box_weights: (wy, wx, wh, ww) of the regression targets (torchvision's (10, 10, 5, 5)).
        seed: None or an int / [2] tensor for a reproducible draw.
    Returns:
        {"rois": [B, S, 4] (zero rows for padding), "roi_labels": [B, S] int32: class + 1 for foreground, 0 for
         background, PADDING_LABEL (-1) for an empty slot, "roi_box_targets": [B, S, 4] (zero unless foreground),
         "roi_matched_gt": [B, S] int32, the row of gt_boxes a foreground RoI matched, -1 otherwise (Mask R-CNN
         crops that row's mask)}.
    """
    proposals = tf.cast(tf.stop_gradient(proposals), tf.float32)
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_labels = tf.cast(gt_labels, tf.int32)
    # One padding row keeps gathers defined when no image of the batch has an object.
    gt_boxes = tf.pad(gt_boxes, [[0, 0], [0, 1], [0, 0]])
    gt_labels = tf.pad(gt_labels, [[0, 0], [0, 1]], constant_values=-1)
    gt_valid = valid_ground_truth(gt_boxes, gt_labels)
    candidates = tf.concat([proposals, tf.where(gt_valid[..., None], gt_boxes, 0.0)], axis=1)
    candidate_valid = tf.concat([tf.cast(proposal_valid, tf.bool), gt_valid], axis=1)
    if candidates.shape[1] is None or candidates.shape[1] < batch_size_per_image:  # top_k needs >= S candidates
        pad = tf.maximum(batch_size_per_image - tf.shape(candidates)[1], 0)
        candidates = tf.pad(candidates, [[0, 0], [0, pad], [0, 0]])
        candidate_valid = tf.pad(candidate_valid, [[0, 0], [0, pad]])

    iou = box_iou(candidates, gt_boxes)  # [B, P + M, M]
    matches = match(iou, fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches=False, gt_valid=gt_valid)
    matches = tf.where(candidate_valid, matches, -2)  # invalid slots are neither foreground nor background
    positive, negative = sample_balanced(matches, batch_size_per_image, positive_fraction, seed=seed)
    chosen = positive | negative
    # The chosen candidates first (top_k keeps the lower index among equal keys), then unchosen filler.
    _, order = tf.math.top_k(tf.cast(chosen, tf.float32), k=batch_size_per_image)
    rois = tf.gather(candidates, order, batch_dims=1)
    taken = tf.gather(chosen, order, batch_dims=1)
    foreground = tf.gather(positive, order, batch_dims=1)
    rows = tf.maximum(tf.gather(matches, order, batch_dims=1), 0)
    labels = tf.where(foreground, tf.gather(gt_labels, rows, batch_dims=1) + 1, 0)
    labels = tf.where(taken, labels, PADDING_LABEL)
    matched = tf.where(foreground[..., None], tf.gather(gt_boxes, rows, batch_dims=1), rois)
    # Background and empty slots encode against themselves; zero-area empty slots would give log(0), so they get a
    # unit box first.
    safe_rois = tf.where(taken[..., None], rois, [0.0, 0.0, 1.0, 1.0])
    targets = encode_boxes(tf.where(taken[..., None], matched, safe_rois), safe_rois, box_weights)
    return {"rois": tf.where(taken[..., None], rois, 0.0), "roi_labels": labels,
            "roi_box_targets": tf.where(foreground[..., None], targets, 0.0),
            "roi_matched_gt": tf.where(foreground, rows, -1)}
