"""Region Proposal Network (Ren et al. 2015): the head, its training targets and its loss, as torchvision's RPN.

Head: a 3x3 conv + ReLU shared by every feature level, then two sibling 1x1 convs: A objectness logits and 4A box
deltas (ty, tx, th, tw) per location, A anchors per location (9 = 3 sizes x 3 ratios on one stride-16 map; 3 ratios
of one size per FPN level). Outputs are flattened level by level, then row-major location, then anchor: the order of
`kdet.ops.multilevel_anchors`, so element n goes with anchor n.

Targets (`rpn_targets`, computed in the train step from the anchors of the input's size): an anchor whose best IoU
with a ground-truth box is >= 0.7 is positive, < 0.3 negative, in between ignored, and every ground-truth box also
claims the anchors that overlap it best (torchvision's Matcher with allow_low_quality_matches). 256 anchors are
sampled per image, at most half positive; missing positives are topped up with negatives.

Loss (`rpn_loss`): binary cross-entropy on the sampled anchors (mean) and smooth-L1 (`kdet.losses.box`, beta 1/9)
on the deltas of the sampled positives, summed and divided by the number of sampled anchors, over the whole batch
(torchvision).
"""
import functools

import keras
import tensorflow as tf

from kdet.losses.box import box_loss
from kdet.ops import encode_boxes, sample_balanced
from kdet.ops.layout import flatten_locations
from kdet.ops.anchor_targets import match_anchors

RPN_INIT = functools.partial(keras.initializers.RandomNormal, stddev=0.01)  # torchvision RPNHead: normal(0.01)
SMOOTH_L1_BETA = 1.0 / 9.0  # torchvision's RPN and box head (kdet.losses.box.smooth_l1's beta)
IGNORE = -1                 # rpn_labels value of an anchor that is not in the sampled minibatch


@keras.saving.register_keras_serializable(package="kdet")
class RPNHead(keras.layers.Layer):
    """Args:
        num_anchors: A, anchors per location (same on every level).
        channels: width of the shared 3x3 conv (= the input channels in torchvision).
        conv_depth: number of 3x3 convs + ReLU before the sibling outputs (1 in the paper and torchvision v1).

    call([feature [B, H_l, W_l, C] per level]) -> (objectness [B, N] logits, deltas [B, N, 4] (ty, tx, th, tw)),
    N = sum_l H_l * W_l * A. torch names: conv.{i}.0, cls_logits, bbox_pred.
    """

    def __init__(self, num_anchors, channels=256, conv_depth=1, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = int(num_anchors)
        self.channels = int(channels)
        self.conv_depth = int(conv_depth)
        # Stride 1 and an odd kernel: TF's "same" padding is torch's padding=1, so no explicit ZeroPadding2D.
        self.convs = [keras.layers.Conv2D(self.channels, 3, padding="same", activation="relu",
                                          kernel_initializer=RPN_INIT(), name=f"conv{i}")
                      for i in range(self.conv_depth)]
        self.cls_logits = keras.layers.Conv2D(self.num_anchors, 1, kernel_initializer=RPN_INIT(), name="cls_logits")
        self.bbox_pred = keras.layers.Conv2D(4 * self.num_anchors, 1, kernel_initializer=RPN_INIT(),
                                             name="bbox_pred")

    def call(self, features):
        objectness, deltas = [], []
        for feature in features:
            x = feature
            for conv in self.convs:
                x = conv(x)
            objectness.append(flatten_locations(self.cls_logits(x)))
            deltas.append(flatten_locations(self.bbox_pred(x), 4))
        return tf.concat(objectness, axis=1), tf.concat(deltas, axis=1)

    def get_config(self):
        return dict(super().get_config(), num_anchors=self.num_anchors, channels=self.channels,
                    conv_depth=self.conv_depth)


def rpn_targets(anchors, boxes, labels, fg_iou_threshold=0.7, bg_iou_threshold=0.3, batch_size_per_image=256,
                positive_fraction=0.5, seed=None):
    """Sampled training targets of every anchor.

    Args:
        anchors: [N, 4] yxyx pixels.
        boxes: [B, M, 4] yxyx pixels, padded; labels: [B, M] int, -1 = padding. Degenerate boxes (zero height or
            width) and boxes that overlap no anchor are ignored (kdet.ops.anchor_targets.match_anchors).
        fg_iou_threshold, bg_iou_threshold: IoU >= fg positive, < bg negative, in between ignored.
        batch_size_per_image, positive_fraction: the balanced minibatch (kdet.ops.sample_balanced).
        seed: None (global random state) or an int / [2] tensor for a reproducible draw.
    Returns:
        {"rpn_labels": [B, N] int32: 1 sampled positive, 0 sampled negative, -1 not sampled (IGNORE),
         "rpn_box_targets": [B, N, 4] float32 deltas (ty, tx, th, tw), weights (1, 1, 1, 1), zero unless positive}.
        An image without objects gets batch_size_per_image negatives and no positive.
    """
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    labels = tf.convert_to_tensor(labels, tf.int32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    # One padding row, so that a batch where no image has an object (M = 0) still has a row to gather from.
    labels = tf.pad(labels, [[0, 0], [0, 1]], constant_values=-1)
    boxes = tf.pad(boxes, [[0, 0], [0, 1], [0, 0]])
    matches = match_anchors(anchors, boxes, labels, "retinanet", fg_iou_threshold, bg_iou_threshold)
    positive, negative = sample_balanced(matches, batch_size_per_image, positive_fraction, seed=seed)
    rpn_labels = tf.where(positive, 1, tf.where(negative, 0, IGNORE))
    # Non-positive anchors encode against themselves (zero deltas): no log(0) of an empty padding box.
    matched = tf.where(positive[..., None], tf.gather(boxes, tf.maximum(matches, 0), batch_dims=1), anchors[None])
    deltas = encode_boxes(matched, anchors[None])
    return {"rpn_labels": tf.cast(rpn_labels, tf.int32), "rpn_box_targets": tf.where(positive[..., None], deltas, 0.0)}


def rpn_loss(objectness, deltas, rpn_labels, rpn_box_targets):
    """torchvision RegionProposalNetwork.compute_loss on fixed-shape tensors.

    Args:
        objectness: [B, N] logits; deltas: [B, N, 4]; rpn_labels, rpn_box_targets: from `rpn_targets`.
    Returns:
        (objectness_loss, box_loss) scalars: mean BCE over the sampled anchors of the batch, and the smooth-L1 sum
        over sampled positives divided by the number of sampled anchors. Both are 0 when nothing is sampled.
    """
    objectness = tf.cast(objectness, tf.float32)
    deltas = tf.cast(deltas, tf.float32)
    sampled = rpn_labels >= 0
    positive = tf.equal(rpn_labels, 1)
    num_sampled = tf.maximum(tf.reduce_sum(tf.cast(sampled, tf.float32)), 1.0)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(positive, tf.float32), logits=objectness)
    objectness_loss = tf.reduce_sum(tf.where(sampled, bce, 0.0)) / num_sampled
    box = box_loss(deltas - rpn_box_targets, "smooth_l1", SMOOTH_L1_BETA)
    regression_loss = tf.reduce_sum(tf.where(positive, box, 0.0)) / num_sampled
    return objectness_loss, regression_loss
