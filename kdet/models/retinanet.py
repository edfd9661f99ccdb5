"""RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection"): ResNet + FPN P3-P7 + class/box subnets.

The defaults are torchvision's `retinanet_resnet50_fpn` (v1), so its state dict loads with
`kdet.convert.torchvision.load_state_dict` and the two give the same detections:
  * 9 anchors per location: sizes (32, 64, 128, 256, 512) on P3-P7 times scales 2^0, 2^(1/3), 2^(2/3) (truncated
    to integers, as torchvision does: 32, 40, 50), ratios 0.5, 1, 2;
  * matching: IoU >= 0.5 positive, < 0.4 negative, in between ignored, plus each object's best anchors;
  * loss: focal loss (alpha 0.25, gamma 2) summed over anchors and classes, L1 on the box deltas, each divided
    by the image's number of positive anchors, averaged over images;
  * decoding: per level the top 1000 (anchor, class) scores above 0.05, boxes clipped to the image, per-class
    NMS at 0.5, the best `max_detections` kept (torchvision keeps 300 by default, the paper 100).
Input: images 0..255 of any size, normalised inside with the ImageNet mean / std on the 0..1 scale, as torchvision's
transform. The anchors come from the input's size at run time (`anchors_for`), so a model built at 320 x 320 predicts
a 480 x 640 image in that image's pixels, and trains on batches of any size.
"""
import keras
import numpy as np
import tensorflow as tf

from kdet.backbones.resnet import ResNet
from kdet.heads.retina_head import RetinaHead
from kdet.losses.box import box_loss
from kdet.losses.focal import AnchorClassificationLoss
from kdet.models.base import Detector
from kdet.necks.fpn import FPN
from kdet.ops import clip_boxes, combined_nms, decode_boxes, multilevel_anchors
from kdet.ops.anchor_targets import anchor_targets
from kdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, normalize_imagenet
from kdet.ops.mode import builtins_only_enabled

BOX_LOSSES = ("l1", "smooth_l1")


def retinanet_anchor_sizes(base_sizes, scales):
    """Per-level anchor sizes, torchvision's rule: int(size * scale) (so 2^(1/3) * 32 gives 40, not 40.3)."""
    return tuple(tuple(int(size * scale) for scale in scales) for size in base_sizes)


@keras.saving.register_keras_serializable(package="kdet")
class RetinaNet(Detector):
    """Args:
        num_classes: K foreground classes (sigmoid per class; torchvision's COCO twin uses 91).
        image_size: (H, W) of the network input; any size (sizes that are not multiples of 128 get P7 cells of
            H // ceil(H / 128) pixels, as torchvision's anchor generator computes them).
        max_detections: detections kept after NMS (100).
        depth, base_width, frozen_stages, frozen_bn: the ResNet backbone (kdet.backbones.resnet.ResNet).
        groups, width_per_group: ResNeXt's grouped 3x3 convs (1 / 64 = ResNet; ResNeXt-50 32x4d: depth=50,
            groups=32, width_per_group=4; ResNeXt-101 32x8d: depth=101, 32, 8).
        fpn_channels: FPN and head width (256); head_convs: 3x3 convs per subnet (4).
        p6_from: "p5" (torchvision v1) or "c5" (the paper, torchvision v2).
        anchor_sizes: base anchor size per level P3-P7; anchor_scales, aspect_ratios (height / width): per level.
        fg_iou_threshold, bg_iou_threshold: matching thresholds (0.5, 0.4).
        classification_loss: "focal" or "cross_entropy" (the paper's ablation baseline); focal_alpha, focal_gamma.
        box_loss: "l1" (torchvision) or "smooth_l1" (Huber with delta 1).
        prior_probability: initial foreground probability of every anchor (0.01).
        score_threshold, nms_iou_threshold, topk_candidates: decoding (0.05, 0.5, 1000 per level).
        image_mean, image_std: normalisation on the 0..1 scale.
        label_ids: the head column of each class (default 0..K-1). torchvision's COCO RetinaNet has 91 columns
            indexed by COCO category id; with kdet's contiguous COCO labels, class c then uses column label_ids[c]
            and the other columns are never trained nor reported.

    call(images [B, H, W, 3] 0..255) -> {"cls_logits": [B, N, columns], "box_regression": [B, N, 4]}, N = number
    of anchors of the input's size (`anchors_for((H, W))`, same order), columns = max(label_ids) + 1 (K by default).
    """

    loss_names = ("classification", "box_regression")

    def __init__(self, num_classes, image_size=(512, 512), max_detections=100, depth=50, base_width=64,
                 frozen_stages=0, frozen_bn=False, groups=1, width_per_group=64,
                 fpn_channels=256, head_convs=4, p6_from="p5",
                 anchor_sizes=(32, 64, 128, 256, 512), anchor_scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
                 aspect_ratios=(0.5, 1.0, 2.0), fg_iou_threshold=0.5, bg_iou_threshold=0.4,
                 classification_loss="focal", focal_alpha=0.25, focal_gamma=2.0, box_loss="l1",
                 prior_probability=0.01, score_threshold=0.05, nms_iou_threshold=0.5, topk_candidates=1000,
                 image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, label_ids=None, **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=max_detections, **kwargs)
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
        if len(anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs one size per level P3-P7, got {anchor_sizes}")
        self.depth, self.base_width = int(depth), int(base_width)
        self.frozen_stages, self.frozen_bn = int(frozen_stages), bool(frozen_bn)
        self.groups, self.width_per_group = int(groups), int(width_per_group)
        self.fpn_channels, self.head_convs, self.p6_from = int(fpn_channels), int(head_convs), p6_from
        self.anchor_sizes = tuple(int(s) for s in anchor_sizes)
        self.anchor_scales = tuple(float(s) for s in anchor_scales)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.fg_iou_threshold, self.bg_iou_threshold = float(fg_iou_threshold), float(bg_iou_threshold)
        self.classification_loss = classification_loss
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.box_loss = box_loss
        self.prior_probability = float(prior_probability)
        self.score_threshold, self.nms_iou_threshold = float(score_threshold), float(nms_iou_threshold)
        self.topk_candidates = int(topk_candidates)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.label_ids = tuple(range(self.num_classes)) if label_ids is None else tuple(int(i) for i in label_ids)
        if len(self.label_ids) != self.num_classes or len(set(self.label_ids)) != self.num_classes or \
                min(self.label_ids) < 0:
            raise ValueError(f"label_ids needs {self.num_classes} distinct columns >= 0, got {label_ids}")
        self.num_columns = max(self.label_ids) + 1

        self.backbone = ResNet(self.depth, self.base_width, self.frozen_stages, self.frozen_bn,
                               groups=self.groups, width_per_group=self.width_per_group, name="backbone")
        self.fpn = FPN((3, 4, 5), self.fpn_channels, "p6p7", p6_from, name="fpn")
        self.levels = self.fpn.output_levels  # (3, 4, 5, 6, 7)
        self.num_anchors_per_location = len(self.anchor_scales) * len(self.aspect_ratios)
        self.head = RetinaHead(self.num_anchors_per_location, self.num_columns, self.fpn_channels, self.head_convs,
                               self.prior_probability, name="head")
        self.classification_loss_fn = AnchorClassificationLoss(classification_loss, self.focal_alpha,
                                                               self.focal_gamma)

    def normalize(self, images):
        return normalize_imagenet(images, self.compute_dtype, self.image_mean, self.image_std)

    def anchors_for(self, image_size):
        """The anchors of an input of `image_size` (H, W): ints, or scalar int tensors (a trace relaxed to unknown
        sizes). Returns [N, 4] float32 yxyx pixels, torchvision's order and values, level by level P3-P7."""
        sizes = retinanet_anchor_sizes(self.anchor_sizes, self.anchor_scales)
        return multilevel_anchors(image_size, [2 ** level for level in self.levels], sizes, self.aspect_ratios,
                                  sizes_of_levels(image_size, self.levels))

    def anchors_per_level(self, image_size):
        """[N_l] for P3-P7 at an input of `image_size`: ints, or scalar tensors for tensor sizes."""
        return [h * w * self.num_anchors_per_location for h, w in sizes_of_levels(image_size, self.levels)]

    def call(self, images, training=False):
        features = self.backbone(self.normalize(images), training=training)
        pyramid = self.fpn(features)
        outputs = self.head([pyramid[f"P{level}"] for level in self.levels])
        return {k: tf.cast(v, tf.float32) for k, v in outputs.items()}

    def encode_targets(self, targets, image_size):
        """{"boxes": [B, M, 4] yxyx pixels, "labels": [B, M] (-1 padding)} -> {"labels": [B, N] head column / -1
        negative / -2 ignored, "box_targets": [B, N, 4]}, on the anchors of `image_size`."""
        encoded = anchor_targets(self.anchors_for(image_size), targets["boxes"], targets["labels"], "retinanet",
                                 self.fg_iou_threshold, self.bg_iou_threshold)
        labels = encoded["labels"]
        columns = tf.gather(tf.constant(self.label_ids, tf.int32), tf.maximum(labels, 0))
        return dict(encoded, labels=tf.where(labels >= 0, columns, labels))

    def loss_from_targets(self, y, y_pred, images=None, training=True):
        """Focal (or cross-entropy) loss over positives and negatives + L1 (or smooth-L1) on the positives' deltas,
        each divided by the image's number of positives (at least 1), averaged over images (torchvision)."""
        labels = y["labels"]
        positive = labels >= 0
        counted = labels >= -1  # positives and negatives; -2 is the ignored band
        num_positive = tf.maximum(tf.reduce_sum(tf.cast(positive, tf.float32), axis=1), 1.0)  # [B]
        targets = tf.one_hot(labels, self.num_columns)  # negatives (-1) and ignored (-2) give all-zero rows
        per_anchor = self.classification_loss_fn(targets, y_pred["cls_logits"])
        classification = tf.reduce_sum(tf.where(counted, per_anchor, 0.0), axis=1) / num_positive
        per_anchor_box = box_loss(tf.cast(y_pred["box_regression"], tf.float32) - y["box_targets"], self.box_loss)
        box_regression = tf.reduce_sum(tf.where(positive, per_anchor_box, 0.0), axis=1) / num_positive
        classification, box_regression = tf.reduce_mean(classification), tf.reduce_mean(box_regression)
        self.track_loss("classification", classification)
        self.track_loss("box_regression", box_regression)
        return classification + box_regression

    def decode(self, outputs, image_size):
        """Per level top-k (anchor, class) pairs above the score threshold -> boxes -> per-class NMS; boxes in the
        pixels of the input of `image_size` (H, W)."""
        height, width = image_size
        anchors_per_level = self.anchors_per_level(image_size)
        logits = tf.split(outputs["cls_logits"], anchors_per_level, axis=1)
        deltas = tf.split(outputs["box_regression"], anchors_per_level, axis=1)
        anchors = tf.split(self.anchors_for(image_size), anchors_per_level, axis=0)
        columns = self.num_columns
        column_to_label = np.full(columns, -1, np.int32)
        column_to_label[list(self.label_ids)] = np.arange(self.num_classes)
        boxes, scores, classes = [], [], []
        for level_logits, level_deltas, level_anchors, count in zip(logits, deltas, anchors, anchors_per_level):
            k = min(self.topk_candidates, count * columns) if isinstance(count, int) else \
                tf.minimum(self.topk_candidates, count * columns)
            top_scores, top = top_scores_above(level_logits, k, self.score_threshold)
            anchor_index = top // columns
            label = tf.gather(tf.constant(column_to_label), top % columns)  # -1: a column no class uses
            level_boxes = decode_boxes(tf.gather(level_deltas, anchor_index, batch_dims=1),
                                       tf.gather(level_anchors, anchor_index))
            boxes.append(clip_boxes(level_boxes, height, width))
            scores.append(tf.where((top_scores > self.score_threshold) & (label >= 0), top_scores, 0.0))
            classes.append(tf.maximum(label, 0))
        boxes, scores, classes = (tf.concat(v, axis=1) for v in (boxes, scores, classes))
        # Each candidate is one (anchor, class) pair: its score goes in its class column, zeros elsewhere, which
        # the score threshold of the NMS then drops. Per-class NMS + best K overall = torchvision's batched_nms.
        class_scores = tf.one_hot(classes, self.num_classes) * scores[..., None]
        return combined_nms(boxes, class_scores, self.max_detections, self.nms_iou_threshold, self.score_threshold)

    def get_config(self):
        config = super().get_config()
        config.update(depth=self.depth, base_width=self.base_width, groups=self.groups,
                      width_per_group=self.width_per_group, frozen_stages=self.frozen_stages,
                      frozen_bn=self.frozen_bn, fpn_channels=self.fpn_channels, head_convs=self.head_convs,
                      p6_from=self.p6_from, anchor_sizes=list(self.anchor_sizes),
                      anchor_scales=list(self.anchor_scales), aspect_ratios=list(self.aspect_ratios),
                      fg_iou_threshold=self.fg_iou_threshold, bg_iou_threshold=self.bg_iou_threshold,
                      classification_loss=self.classification_loss, focal_alpha=self.focal_alpha,
                      focal_gamma=self.focal_gamma, box_loss=self.box_loss,
                      prior_probability=self.prior_probability, score_threshold=self.score_threshold,
                      nms_iou_threshold=self.nms_iou_threshold, topk_candidates=self.topk_candidates,
                      image_mean=list(self.image_mean), image_std=list(self.image_std),
                      label_ids=list(self.label_ids))
        return config


def top_scores_above(logits, k, score_threshold):
    """The k best sigmoid scores of each image's (anchor, class) pairs, searched only where they can pass the
    threshold.

    Equal to `tf.math.top_k(tf.sigmoid(tf.reshape(logits, [B, A * C])), k)` wherever the score is >
    score_threshold (values, flat indices and their order, ties by ascending index); the other slots hold scores
    <= score_threshold, which decoding drops. A 512 x 512 input has 3.4 M (anchor, class) logits on P3 and a top-k
    over all of them cost more than the whole rest of decoding, while usually a few hundred can pass (torchvision
    also filters before its top-k): anchors whose best logit exceeds logit(score_threshold) minus a margin far
    above float32 rounding are gathered first (a max over classes, then a small `where`), then their pairs.

    Args:
        logits: [B, A, C] float32.
        k: int or scalar int32 tensor, <= A * C.
        score_threshold: float.
    Returns:
        (scores [B, k] float32, indices [B, k] int32 into A * C) by descending score.
    """
    if score_threshold <= 0.0:
        bound = float("-inf")
    elif score_threshold >= 1.0:
        bound = float("inf")
    else:
        bound = float(np.log(score_threshold / (1.0 - score_threshold))) - 1e-3
    if builtins_only_enabled():
        return _top_scores_above_batched(logits, k, bound)
    columns = logits.shape[-1]
    size = k if isinstance(k, int) else None

    def all_pairs(rows):
        scores, indices = tf.math.top_k(tf.sigmoid(tf.reshape(rows, [-1])), k=k)
        return scores, indices

    def candidate_pairs(rows, anchors):
        pairs = tf.reshape(tf.gather(rows, anchors), [-1])  # [A' * C], ascending flat index
        flat_index = tf.reshape(anchors[:, None] * columns + tf.range(columns)[None, :], [-1])
        candidates = tf.cast(tf.reshape(tf.where(pairs > bound), [-1]), tf.int32)
        count = tf.minimum(k, tf.size(candidates))
        scores, order = tf.math.top_k(tf.sigmoid(tf.gather(pairs, candidates)), k=count)
        padding = [[0, k - count]]
        shape = [-1 if size is None else size]  # a static length for the cond (a reshape: TFLite has no EnsureShape)
        scores = tf.reshape(tf.pad(scores, padding), shape)
        return scores, tf.reshape(tf.pad(tf.gather(flat_index, tf.gather(candidates, order)), padding), shape)

    def one_image(rows):
        anchors = tf.cast(tf.reshape(tf.where(tf.reduce_max(rows, axis=-1) > bound), [-1]), tf.int32)
        # When most anchors pass (an untrained head), the filtering costs more than it saves: measured at
        # 512 x 512 with a quarter of the pairs passing, the plain top-k took 0.7x the time of the filtered one.
        dense = tf.size(anchors) * 4 > tf.shape(rows)[0]
        return tf.cond(dense, lambda: all_pairs(rows), lambda: candidate_pairs(rows, anchors))

    return tf.map_fn(one_image, logits, fn_output_signature=(tf.TensorSpec([size], tf.float32),
                                                              tf.TensorSpec([size], tf.int32)))


def _top_scores_above_batched(logits, k, bound):
    """`top_scores_above` for the builtins (TFLite) graph: the filtering runs on the whole batch and only the small
    candidate list enters the loop over images. A TFLite WHILE / IF copies every tensor it reads on entry (a WHILE
    also per iteration and on exit), and the per-image map_fn + cond took each level's [B, A, C] logits (P3 at
    512 x 512: 13 MB) through such copies: RetinaNet's captured decode in LiteRT went from 31.6 to 12.2 ms. No
    dense fallback (a cond would copy them again): an untrained head, where most anchors pass, sorts more here,
    with the same result.

    logits [B, A, C]; k int or scalar tensor; bound: logit above which a pair may pass -> as `top_scores_above`.
    """
    columns = logits.shape[-1]
    size = k if isinstance(k, int) else None
    passing = tf.where(tf.reduce_max(logits, axis=-1) > bound)  # [M, 2] (image, anchor), ascending
    pairs = tf.reshape(tf.gather_nd(logits, passing), [-1])  # [M * C]: per image ascending flat index
    anchor, image = tf.cast(passing[:, 1], tf.int32), tf.cast(passing[:, 0], tf.int32)
    flat_index = tf.reshape(anchor[:, None] * columns + tf.range(columns)[None, :], [-1])
    pair_image = tf.reshape(image[:, None] + tf.zeros([1, columns], tf.int32), [-1])
    chosen = tf.reshape(tf.where(pairs > bound), [-1])
    scores = tf.sigmoid(tf.gather(pairs, chosen))
    index, owner = tf.gather(flat_index, chosen), tf.gather(pair_image, chosen)

    def one_image(b):
        mine = tf.reshape(tf.where(tf.equal(owner, b)), [-1])
        count = tf.minimum(k, tf.size(mine))
        top, order = tf.math.top_k(tf.gather(scores, mine), k=count)  # stable: ties by ascending flat index
        padding, shape = [[0, k - count]], [-1 if size is None else size]
        return (tf.reshape(tf.pad(top, padding), shape),
                tf.reshape(tf.pad(tf.gather(tf.gather(index, mine), order), padding), shape))

    return tf.map_fn(one_image, tf.range(tf.shape(logits)[0]), fn_output_signature=(
        tf.TensorSpec([size], tf.float32), tf.TensorSpec([size], tf.int32)))


def sizes_of_levels(image_size, levels=(3, 4, 5, 6, 7)):
    """(H, W) of each pyramid level for an input size: ceil(size / 2^level) (stride-2 convs with padding 1).

    image_size: ints or scalar int tensors; the sizes are of the same kind (-(-a // b) is ceil for both)."""
    return [tuple(-(-s // 2 ** level) for s in image_size) for level in levels]

