"""SSD (Liu et al. 2016, "SSD: Single Shot MultiBox Detector") and SSDLite (Sandler et al. 2018).

Both predict, from several feature maps of decreasing resolution, C + 1 softmax scores (column 0 = background)
and box deltas for a fixed set of default boxes; they differ in the feature extractor and the head:
  * `SSD`: SSD300 on VGG-16 (kdet.backbones.vgg_ssd), 3x3 conv predictors. The defaults are torchvision's
    `ssd300_vgg16`, so its state dict loads with kdet.convert.torchvision and both give the same detections:
    default boxes with scales 0.07, 0.15, 0.33, 0.51, 0.69, 0.87 (+1.05 for the extra box of ratio 1), ratios
    {2} on the first and last two maps and {2, 3} elsewhere, steps 8 ... 300; Caffe-style input (0..255 minus the
    mean); decoding: per class the top 400 scores above 0.01, NMS 0.45, 200 kept.
  * `SSDLite`: MobileNetV2 from keras.applications (random init) + depthwise-separable extras and predictors,
    six ratios-{2, 3} levels with scales from 0.2 to 0.95, input scaled to [-1, 1]; for edge devices (TFLite
    builtins, int8).
Training (both): IoU >= 0.5 positive plus each object's best default box, hard negative mining 3:1, softmax
cross-entropy + smooth-L1 (kdet.losses.ssd). The paper's photometric / expand / crop augmentation is
kdet.data.ssd_augment.
Both run at any input size: the default boxes follow the feature maps of the input (`anchors_for(image_size)`), as
torchvision's DefaultBoxGenerator does.
"""
import math

import keras
import numpy as np
import tensorflow as tf

from kdet.backbones.mobilenet_ssdlite import SSDLITE_EXTRA_WIDTHS, MobileNetSSDLiteFeatures
from kdet.backbones.vgg import VGG16_WIDTHS
from kdet.backbones.vgg_ssd import SSD300_EXTRA_WIDTHS, SSDVGGFeatures
from kdet.heads.ssd_head import SSDHead
from kdet.losses.ssd import multibox_loss
from kdet.models.base import Detector
from kdet.ops import clip_boxes, combined_nms, decode_boxes
from kdet.ops.anchor_targets import anchor_targets
from kdet.ops.images import normalize_imagenet

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # (wy, wx, wh, ww): torchvision's (10, 10, 5, 5)
SSD300_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
SSD300_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
SSD300_STEPS = (8, 16, 32, 64, 100, 300)
SSD300_MEAN = (0.48235, 0.45882, 0.40784)
SSD300_STD = (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)


def linear_scales(num_levels, min_ratio=0.2, max_ratio=0.95):
    """The paper's s_k = s_min + (s_max - s_min) (k - 1) / (m - 1), plus 1.0 for the last level's extra box."""
    return tuple(min_ratio + (max_ratio - min_ratio) * k / (num_levels - 1.0) for k in range(num_levels)) + (1.0,)


def default_boxes(image_size, feature_sizes, aspect_ratios, scales, steps=None, clip=True, steps_size=(300, 300)):
    """SSD default boxes in torchvision's DefaultBoxGenerator order and float32 arithmetic.

    Per level k, per location (row-major), boxes (w, h) relative to the image: (s_k, s_k), (s'_k, s'_k) with
    s'_k = sqrt(s_k s_{k+1}), then for each ratio r: (s_k sqrt(r), s_k / sqrt(r)) and its transpose; clipped to
    [0, 1] (clip=True). Centres ((j + 0.5) / f, (i + 0.5) / f) with f = image / step (or the map size).

    Steps are pixels of an image of `steps_size` (SSD300's 300 x 300, the only size torchvision runs it at, so the
    twin matches it there bit for bit); at any other size the centres follow the paper's rule, f = the map's own
    size, spread evenly over the image (the fixed steps 100 and 300 of the last maps would put centres past the
    right edge of a 640-wide image).

    Args:
        image_size: (H, W) ints, or scalar int tensors; feature_sizes: (h_k, w_k) per level, of the same kind.
    Returns:
        [N, 4] float32 yxyx pixels; N = sum_k h_k w_k (2 + 2 len(ratios_k)).
    """
    height, width = image_size
    scale = tf.cast(tf.stack([width, height]), tf.float32)  # x, y order as torchvision
    boxes = []
    for k, ((feat_h, feat_w), ratios) in enumerate(zip(feature_sizes, aspect_ratios)):
        s_k, s_prime = scales[k], math.sqrt(scales[k] * scales[k + 1])
        pairs = [[s_k, s_k], [s_prime, s_prime]]
        for ratio in ratios:
            w, h = scales[k] * math.sqrt(ratio), scales[k] / math.sqrt(ratio)
            pairs += [[w, h], [h, w]]
        pairs = np.asarray(pairs, np.float32)
        if clip:
            pairs = np.clip(pairs, 0.0, 1.0)
        f_x, f_y = tf.cast(feat_w, tf.float32), tf.cast(feat_h, tf.float32)
        if steps is not None:  # at the steps' own size: size / step in float64 then float32, as torchvision
            at_steps_size = tf.logical_and(tf.equal(height, steps_size[0]), tf.equal(width, steps_size[1]))
            f_x = tf.where(at_steps_size, np.float32(np.float64(steps_size[1]) / steps[k]), f_x)
            f_y = tf.where(at_steps_size, np.float32(np.float64(steps_size[0]) / steps[k]), f_y)
        cx = (tf.cast(tf.range(feat_w), tf.float32) + 0.5) / f_x
        cy = (tf.cast(tf.range(feat_h), tf.float32) + 0.5) / f_y
        grid_y, grid_x = tf.meshgrid(cy, cx, indexing="ij")
        centres = tf.repeat(tf.stack([tf.reshape(grid_x, [-1]), tf.reshape(grid_y, [-1])], 1), len(pairs), axis=0)
        half = 0.5 * tf.tile(tf.constant(pairs), [feat_h * feat_w, 1])
        low, high = (centres - half) * scale, (centres + half) * scale
        boxes.append(tf.stack([low[:, 1], low[:, 0], high[:, 1], high[:, 0]], axis=1))
    return tf.concat(boxes, axis=0)


class _MultiBoxDetector(Detector):
    """What SSD and SSDLite share: normalisation, targets, MultiBox loss and decoding. Subclasses set
    self.features (-> list of maps) and self.head (SSDHead), and define anchors_for(image_size)."""

    loss_names = ("classification", "box_regression")

    def _setup_decoding(self, fg_iou_threshold, neg_pos_ratio, score_threshold, nms_iou_threshold, topk_candidates,
                        image_mean, image_std, label_ids):
        self.fg_iou_threshold, self.neg_pos_ratio = float(fg_iou_threshold), float(neg_pos_ratio)
        self.score_threshold, self.nms_iou_threshold = float(score_threshold), float(nms_iou_threshold)
        self.topk_candidates = int(topk_candidates)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.label_ids = tuple(range(1, self.num_classes + 1)) if label_ids is None else \
            tuple(int(i) for i in label_ids)
        if len(self.label_ids) != self.num_classes or len(set(self.label_ids)) != self.num_classes or \
                min(self.label_ids) < 1:
            raise ValueError(f"label_ids needs {self.num_classes} distinct columns >= 1 (0 is background), got "
                             f"{label_ids}")

    def normalize(self, images):
        return normalize_imagenet(images, self.compute_dtype, self.image_mean, self.image_std)

    def anchors_for(self, image_size):
        """The default boxes of an input of `image_size` (H, W) (ints or scalar tensors): [N, 4] float32 yxyx px."""
        raise NotImplementedError(f"{type(self).__name__} must define anchors_for(image_size): its default boxes")

    def call(self, images, training=False):
        outputs = self.head(self.features(self.normalize(images), training=training), training=training)
        return {k: tf.cast(v, tf.float32) for k, v in outputs.items()}

    def encode_targets(self, targets, image_size):
        """{"boxes": [B, M, 4] yxyx pixels, "labels": [B, M] (-1 padding)} -> {"labels": [B, N] head column - 1
        (class c: label_ids[c] - 1) or -1 (background), "box_targets": [B, N, 4]}, on the default boxes of
        `image_size`."""
        encoded = anchor_targets(self.anchors_for(image_size), targets["boxes"], targets["labels"], "ssd",
                                 self.fg_iou_threshold, self.fg_iou_threshold, BOX_WEIGHTS)
        labels = encoded["labels"]
        columns = tf.gather(tf.constant(self.label_ids, tf.int32) - 1, tf.maximum(labels, 0))
        return dict(encoded, labels=tf.where(labels >= 0, columns, labels))

    def loss_from_targets(self, y, y_pred, images=None, training=True):
        classification, box_regression = multibox_loss(y["labels"], y["box_targets"], y_pred["cls_logits"],
                                                       y_pred["box_regression"], self.neg_pos_ratio)
        self.track_loss("classification", classification)
        self.track_loss("box_regression", box_regression)
        return classification + box_regression

    def decode(self, outputs, image_size):
        """Softmax -> per class the top-k scores above the threshold -> boxes -> per-class NMS (torchvision); boxes
        in the pixels of the input of `image_size` (H, W)."""
        height, width = image_size
        boxes = clip_boxes(decode_boxes(outputs["box_regression"], self.anchors_for(image_size)[None], BOX_WEIGHTS),
                           height, width)
        probabilities = tf.nn.softmax(outputs["cls_logits"], axis=-1)
        first = self.label_ids[0]
        if self.label_ids == tuple(range(first, first + self.num_classes)):  # a slice: TFLite's GATHER on the last
            scores = probabilities[:, :, first:first + self.num_classes]  # axis copies element by element
        else:
            scores = tf.gather(probabilities, list(self.label_ids), axis=-1)  # [B, N, C]
        num_boxes = outputs["cls_logits"].shape[1]
        k = min(self.topk_candidates, num_boxes) if num_boxes is not None else \
            tf.minimum(self.topk_candidates, tf.shape(outputs["cls_logits"])[1])
        # Per class, the k-th best score: anything below it is not a candidate (top-k before NMS, torchvision).
        # Only scores above the threshold reach the NMS, so when no image has more than k of them in any class
        # (the usual case) every one of them is in its class's top k and the top-k (0.5 ms per class at 300 x 300,
        # most of the decoding time) is skipped: the same detections.
        def top_k_only():
            kth = tf.math.top_k(tf.transpose(scores, [0, 2, 1]), k=k).values[..., -1]  # [B, C]
            return tf.where(scores >= kth[:, None, :], scores, 0.0)

        passing = tf.reduce_sum(tf.cast(scores > self.score_threshold, tf.int32), axis=1)  # [B, C]
        scores = tf.cond(tf.reduce_max(passing) > k, top_k_only, lambda: scores)
        return combined_nms(boxes, scores, self.max_detections, self.nms_iou_threshold, self.score_threshold)

    def _common_config(self):
        return dict(fg_iou_threshold=self.fg_iou_threshold, neg_pos_ratio=self.neg_pos_ratio,
                    score_threshold=self.score_threshold, nms_iou_threshold=self.nms_iou_threshold,
                    topk_candidates=self.topk_candidates, image_mean=list(self.image_mean),
                    image_std=list(self.image_std), label_ids=list(self.label_ids))


@keras.saving.register_keras_serializable(package="kdet")
class SSD(_MultiBoxDetector):
    """SSD300 with VGG-16.

    Args:
        num_classes: C foreground classes (the head has C + 1 columns; torchvision's COCO twin uses 90 + 1).
        image_size: (300, 300) for SSD300 (at least 268 for the layers to exist).
        max_detections: 200 (torchvision).
        vgg_widths, fc_width, extra_widths: widths of the feature extractor (smaller for tests).
        aspect_ratios, scales, steps: the default boxes (see `default_boxes`).
        fg_iou_threshold: matching IoU (0.5); neg_pos_ratio: hard negatives per positive (3).
        score_threshold, nms_iou_threshold, topk_candidates: decoding (0.01, 0.45, 400 per class).
        image_mean, image_std: normalisation on the 0..1 scale (torchvision's: 0..255 minus the mean).
        label_ids: the softmax column of each class (default 1..K; 0 is background). torchvision's COCO SSD has 91
            columns indexed by COCO category id: class c of kdet's contiguous COCO labels uses column label_ids[c].

    call(images [B, H, W, 3]) -> {"cls_logits": [B, N, max(label_ids) + 1], "box_regression": [B, N, 4]}, N = 8732
    at 300 x 300 (any H, W >= 268).
    """

    def __init__(self, num_classes, image_size=(300, 300), max_detections=200, vgg_widths=VGG16_WIDTHS,
                 fc_width=1024, extra_widths=SSD300_EXTRA_WIDTHS, aspect_ratios=SSD300_RATIOS, scales=SSD300_SCALES,
                 steps=SSD300_STEPS, fg_iou_threshold=0.5, neg_pos_ratio=3.0, score_threshold=0.01,
                 nms_iou_threshold=0.45, topk_candidates=400, image_mean=SSD300_MEAN, image_std=SSD300_STD,
                 label_ids=None, **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=max_detections, **kwargs)
        self._setup_decoding(fg_iou_threshold, neg_pos_ratio, score_threshold, nms_iou_threshold, topk_candidates,
                             image_mean, image_std, label_ids)
        self.aspect_ratios = tuple(tuple(float(r) for r in level) for level in aspect_ratios)
        self.scales = tuple(float(s) for s in scales)
        self.steps = tuple(int(s) for s in steps)
        self.features = SSDVGGFeatures(vgg_widths, fc_width, extra_widths, name="backbone")
        self.head = SSDHead([2 + 2 * len(r) for r in self.aspect_ratios], max(self.label_ids), name="head")
        SSDVGGFeatures.feature_sizes(self.image_size)  # refuses sizes too small for the layers

    def anchors_for(self, image_size):
        return default_boxes(image_size, SSDVGGFeatures.feature_sizes(image_size), self.aspect_ratios, self.scales,
                             self.steps)

    def get_config(self):
        return dict(super().get_config(), **self._common_config(), vgg_widths=list(self.features.vgg_widths),
                    fc_width=self.features.fc_width, extra_widths=[list(p) for p in self.features.extra_widths],
                    aspect_ratios=[list(r) for r in self.aspect_ratios], scales=list(self.scales),
                    steps=list(self.steps))


@keras.saving.register_keras_serializable(package="kdet")
class SSDLite(_MultiBoxDetector):
    """SSDLite with MobileNetV2 (keras.applications, random init).

    Args:
        num_classes, image_size (320 x 320; it runs at any size), max_detections.
        alpha: MobileNetV2 width multiplier; extra_widths: the four extra blocks.
        aspect_ratios: per level (six levels of (2, 3)); min_ratio, max_ratio: the linear scale range.
        the rest as `SSD` (defaults: score 0.01, NMS 0.55, top 300 per class).

    call(images) -> {"cls_logits": [B, N, C + 1], "box_regression": [B, N, 4]}.
    """

    def __init__(self, num_classes, image_size=(320, 320), max_detections=100, alpha=1.0,
                 extra_widths=SSDLITE_EXTRA_WIDTHS, aspect_ratios=((2, 3),) * 6, min_ratio=0.2, max_ratio=0.95,
                 fg_iou_threshold=0.5, neg_pos_ratio=3.0, score_threshold=0.01, nms_iou_threshold=0.55,
                 topk_candidates=300, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), label_ids=None,
                 **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=max_detections, **kwargs)
        self._setup_decoding(fg_iou_threshold, neg_pos_ratio, score_threshold, nms_iou_threshold, topk_candidates,
                             image_mean, image_std, label_ids)
        self.alpha = float(alpha)
        self.aspect_ratios = tuple(tuple(float(r) for r in level) for level in aspect_ratios)
        self.min_ratio, self.max_ratio = float(min_ratio), float(max_ratio)
        self.features = MobileNetSSDLiteFeatures(self.alpha, extra_widths, name="backbone")
        self.head = SSDHead([2 + 2 * len(r) for r in self.aspect_ratios], max(self.label_ids), separable=True,
                            name="head")

    def anchors_for(self, image_size):
        sizes = MobileNetSSDLiteFeatures.feature_sizes(image_size, len(self.features.extra_widths))
        return default_boxes(image_size, sizes, self.aspect_ratios,
                             linear_scales(len(sizes), self.min_ratio, self.max_ratio))

    def get_config(self):
        return dict(super().get_config(), **self._common_config(), alpha=self.alpha,
                    extra_widths=list(self.features.extra_widths), aspect_ratios=[list(r) for r in self.aspect_ratios],
                    min_ratio=self.min_ratio, max_ratio=self.max_ratio)
