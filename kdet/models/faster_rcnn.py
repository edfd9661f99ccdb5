"""Faster R-CNN (Ren et al. 2015): a backbone, a Region Proposal Network, RoI pooling and a Fast R-CNN box head.

The forward pass is torchvision's GeneralizedRCNN in five readable steps: normalise, backbone (+ FPN), RPN head,
proposals (`ProposalGenerator`), RoI pooling + box head. Three backbones (`backbone=`):

    "resnet_fpn"  ResNet-18/34/50/101 + FPN P2-P6: the RPN runs on every level (one anchor size per level, 3
                  ratios), RoIAlign picks a level per RoI among P2-P5, then fc6 / fc7 (1024). The defaults are
                  torchvision's fasterrcnn_resnet50_fpn (v1), whose state dict loads with
                  `kdet.convert.torchvision.load_state_dict` (ImageNet backbones: `kdet.convert.backbone_weights`).
    "resnet_c4"   ResNet up to C4 (stride 16), RPN on C4 with 9 anchors, RoIAlign 14x14 on C4, then the ResNet's own
                  res5 stage on each RoI and a global average pool (the ResNet paper's detector).
    "vgg16"       VGG-16 conv5_3 (stride 16), RPN with 9 anchors, RoI max pooling 7x7 (the paper's), fc6 / fc7
                  (4096, dropout 0.5).

Training (`stage=`): "joint" is approximate joint training (one `model.fit`, proposals carry no gradient); "rpn"
trains only the RPN losses; "fast_rcnn" trains only the second stage, on the model's own (frozen) RPN proposals or
on proposals given with the images (`call({"images": ..., "proposals": [B, P, 4]})`). `kdet.train.schedules`
runs the paper's 4-step alternating training with these stages.

Keras passes the ground truth only to `compute_loss`, and which RoIs the second stage trains on depends on it, so
in training `call` stops after the proposals and `loss_from_targets` samples the RoIs and runs the box head on them.
The model runs at any input size: anchors, the per-level anchor counts and the clipping size come from the input's
shape at run time (`anchor_grid`), never from `image_size`.
"""
import keras
import tensorflow as tf

from kdet.backbones.resnet import ResNet
from kdet.backbones.vgg import VGG16_WIDTHS, VGGBackbone
from kdet.heads.roi_box_head import BoxPredictor, TwoFCHead, fast_rcnn_loss, postprocess_detections
from kdet.heads.rpn import RPNHead, rpn_loss, rpn_targets
from kdet.layers.proposals import ProposalGenerator, sample_rois
from kdet.layers.roi_align import MultiScaleRoIAlign, RoIAlign
from kdet.models.base import Detector
from kdet.necks.fpn import FPN
from kdet.ops import clip_boxes, multilevel_anchors, roi_pool
from kdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, image_hw, normalize_imagenet

BACKBONES = ("resnet_fpn", "resnet_c4", "vgg16")
STAGES = ("joint", "rpn", "fast_rcnn")
ROI_POOLINGS = ("align", "pool")
FPN_LEVELS = (2, 3, 4, 5, 6)
DEFAULT_ANCHOR_SIZES = {"resnet_fpn": ((32,), (64,), (128,), (256,), (512,)),
                        "resnet_c4": ((128, 256, 512),), "vgg16": ((128, 256, 512),)}


def _ceil_div(size, stride):
    """ceil(size / stride) for an int or a scalar int tensor."""
    return -(-size // stride)


@keras.saving.register_keras_serializable(package="kdet")
class FasterRCNN(Detector):
    """Args:
        num_classes: K foreground classes; the box head has K + 1 outputs, 0 = background, as torchvision's. Its
            91-output COCO model is num_classes=90: torchvision label L (a COCO category id) is kdet class L - 1.
        label_ids: the predictor column of each class (default 1..K). With torchvision's COCO weights and kdet's
            COCO reader (80 contiguous labels), pass the 80 category ids: the predictor keeps its 91 columns and
            class c of the data trains and predicts column label_ids[c].
        image_size: (H, W) of the network input; max_detections: rows of the detection dict (100).
        backbone: "resnet_fpn", "resnet_c4" or "vgg16" (module docstring).
        depth, base_width, frozen_stages, frozen_bn: the ResNet (kdet.backbones.resnet.ResNet).
        groups, width_per_group: ResNeXt's grouped 3x3 convs (1 / 64 = ResNet; ResNeXt-50 32x4d: depth=50,
            groups=32, width_per_group=4; ResNeXt-101 32x8d: depth=101, 32, 8).
        vgg_widths: channels of the five VGG stages (VGG-16: 64, 128, 256, 512, 512; smaller for tests).
        vgg_batch_norm: conv + BN + ReLU (torchvision's vgg16_bn), which trains from scratch far faster.
        fpn_channels: FPN width (256). ImageNet backbone weights load with
            `kdet.convert.backbone_weights.load_backbone_weights(model, path)`.
        anchor_sizes: per RPN level, a tuple of sizes (default: one per FPN level, or (128, 256, 512) on one map).
        aspect_ratios: height / width ratios of the anchors (0.5, 1, 2).
        rpn_*: proposal generation and RPN training (torchvision's defaults: top 2000 / 1000 per level before NMS
            and 2000 / 1000 after it (training / inference), NMS 0.7, IoU 0.7 / 0.3, 256 anchors, half positive).
        roi_pooling: "align" (RoIAlign, sampling_ratio samples per bin side) or "pool" (RoI max pooling, the
            paper's; single-map backbones only). Default: "pool" for vgg16, "align" otherwise.
        roi_output_size: pooled size (7; the C4 head pools twice that and its res5 stage halves it).
        representation_size, head_dropout: fc6 / fc7 width and dropout (defaults 1024 / 0, VGG-16 4096 / 0.5).
        box_*: second-stage sampling (IoU >= 0.5 foreground, 512 RoIs, 25 % foreground) and inference (score
            threshold 0.05, per-class NMS 0.5 over the best box_topk_candidates (RoI, class) pairs);
            bbox_reg_weights (wy, wx, wh, ww) = (10, 10, 5, 5).
        image_mean, image_std: normalisation on the 0..1 scale.
        stage: "joint", "rpn" or "fast_rcnn" (what `compute_loss` trains; module docstring).
        bounding_box_format, class_names: `kdet.models.base.Detector`.

    call(images [B, H, W, 3] 0..255 at any H, W, or {"images": ..., "proposals": [B, P, 4] yxyx pixels, zero rows =
        none}) ->
        {"rpn_objectness": [B, N], "rpn_box_deltas": [B, N, 4] (absent when proposals are given),
         "proposals": [B, P, 4], "proposal_valid": [B, P] bool, "features": [roi feature maps],
         and at inference "class_logits": [B, P, C + 1], "box_regression": [B, P, C + 1, 4]},
    C = max(label_ids) (= K by default).
    N = number of anchors of the input's size (`anchor_grid((H, W))`, [N, 4] yxyx pixels, same order).
    """

    loss_names = ("rpn_objectness", "rpn_box_regression", "classification", "box_regression")
    # int8 TFLite (kdet.export.tflite): proposal decoding + NMS and the RoI pooling's box arithmetic (level rule,
    # bilinear weights) stay float32; the backbone, FPN, RPN head and box head are quantised.
    tflite_float_scopes = ("proposals", "box_roi_pool")

    def __init__(self, num_classes, image_size=(800, 1088), max_detections=100, label_ids=None, backbone="resnet_fpn",
                 depth=50,
                 base_width=64, frozen_stages=0, frozen_bn=False, groups=1, width_per_group=64,
                 vgg_widths=VGG16_WIDTHS, vgg_batch_norm=False,
                 fpn_channels=256, anchor_sizes=None, aspect_ratios=(0.5, 1.0, 2.0),
                 rpn_pre_nms_top_n_train=2000, rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_train=2000,
                 rpn_post_nms_top_n_test=1000, rpn_nms_threshold=0.7, rpn_fg_iou_threshold=0.7,
                 rpn_bg_iou_threshold=0.3, rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
                 rpn_min_size=1e-3, rpn_score_threshold=0.0, roi_pooling=None, roi_output_size=7, sampling_ratio=2,
                 representation_size=None, head_dropout=None, box_fg_iou_threshold=0.5, box_bg_iou_threshold=0.5,
                 box_batch_size_per_image=512, box_positive_fraction=0.25, box_score_threshold=0.05,
                 box_nms_threshold=0.5, box_topk_candidates=1000, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
                 image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, stage="joint", **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=max_detections, **kwargs)
        for name, value, choices in (("backbone", backbone, BACKBONES), ("stage", stage, STAGES),
                                     ("roi_pooling", roi_pooling, ROI_POOLINGS + (None,))):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        vgg = backbone == "vgg16"
        default_ids = range(1, self.num_classes + 1)
        self.label_ids = tuple(int(i) for i in (default_ids if label_ids is None else label_ids))
        if len(set(self.label_ids)) != self.num_classes or len(self.label_ids) != self.num_classes or \
                min(self.label_ids) < 1:
            raise ValueError(f"label_ids needs {self.num_classes} distinct columns >= 1 (0 is background), got "
                             f"{label_ids}")
        if roi_pooling == "pool" and backbone == "resnet_fpn":
            raise ValueError("roi_pooling='pool' needs a single feature map (resnet_c4 or vgg16); FPN uses 'align'")
        self.backbone_name, self.stage = backbone, stage
        self.depth, self.base_width = int(depth), int(base_width)
        self.frozen_stages, self.frozen_bn = int(frozen_stages), bool(frozen_bn)
        self.groups, self.width_per_group = int(groups), int(width_per_group)
        self.vgg_widths = tuple(int(w) for w in vgg_widths)
        self.vgg_batch_norm = bool(vgg_batch_norm)
        self.fpn_channels = int(fpn_channels)
        sizes = DEFAULT_ANCHOR_SIZES[backbone] if anchor_sizes is None else anchor_sizes
        self.anchor_sizes = tuple(tuple(int(s) for s in level) for level in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.rpn_settings = dict(
            rpn_pre_nms_top_n_train=int(rpn_pre_nms_top_n_train), rpn_pre_nms_top_n_test=int(rpn_pre_nms_top_n_test),
            rpn_post_nms_top_n_train=int(rpn_post_nms_top_n_train),
            rpn_post_nms_top_n_test=int(rpn_post_nms_top_n_test), rpn_nms_threshold=float(rpn_nms_threshold),
            rpn_fg_iou_threshold=float(rpn_fg_iou_threshold), rpn_bg_iou_threshold=float(rpn_bg_iou_threshold),
            rpn_batch_size_per_image=int(rpn_batch_size_per_image),
            rpn_positive_fraction=float(rpn_positive_fraction), rpn_min_size=float(rpn_min_size),
            rpn_score_threshold=float(rpn_score_threshold))
        self.roi_pooling = roi_pooling or ("pool" if vgg else "align")
        self.roi_output_size, self.sampling_ratio = int(roi_output_size), int(sampling_ratio)
        self.representation_size = int(representation_size or (4096 if vgg else 1024))
        self.head_dropout = float((0.5 if vgg else 0.0) if head_dropout is None else head_dropout)
        self.box_settings = dict(
            box_fg_iou_threshold=float(box_fg_iou_threshold), box_bg_iou_threshold=float(box_bg_iou_threshold),
            box_batch_size_per_image=int(box_batch_size_per_image),
            box_positive_fraction=float(box_positive_fraction), box_score_threshold=float(box_score_threshold),
            box_nms_threshold=float(box_nms_threshold), box_topk_candidates=int(box_topk_candidates))
        self.bbox_reg_weights = tuple(float(w) for w in bbox_reg_weights)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)

        # -- layers ------------------------------------------------------------------------------------------------
        if vgg:
            self.backbone = VGGBackbone(self.vgg_widths, batch_norm=self.vgg_batch_norm, name="backbone")
            feature_channels, strides = self.vgg_widths[-1], (16,)
        else:
            self.backbone = ResNet(self.depth, self.base_width, self.frozen_stages, self.frozen_bn,
                                   groups=self.groups, width_per_group=self.width_per_group, name="backbone")
            feature_channels, strides = self.backbone.out_channels["C4"], (16,)
        self.fpn = None
        if backbone == "resnet_fpn":
            self.fpn = FPN((2, 3, 4, 5), self.fpn_channels, "maxpool", name="fpn")
            feature_channels, strides = self.fpn_channels, tuple(2 ** level for level in FPN_LEVELS)
        if len(self.anchor_sizes) != len(strides):
            raise ValueError(f"anchor_sizes needs {len(strides)} level(s) for {backbone}, got {self.anchor_sizes}")
        self.strides = strides
        self.num_anchors_per_location = len(self.anchor_sizes[0]) * len(self.aspect_ratios)
        if any(len(level) != len(self.anchor_sizes[0]) for level in self.anchor_sizes):
            raise ValueError(f"every level needs the same number of anchor sizes, got {self.anchor_sizes}")
        self.rpn_head = RPNHead(self.num_anchors_per_location, feature_channels, name="rpn_head")
        s = self.rpn_settings
        self.proposal_generator = ProposalGenerator(
            (s["rpn_pre_nms_top_n_train"], s["rpn_pre_nms_top_n_test"]),
            (s["rpn_post_nms_top_n_train"], s["rpn_post_nms_top_n_test"]), s["rpn_nms_threshold"],
            s["rpn_min_size"], s["rpn_score_threshold"], name="proposals")
        self._anchor_cache = {}  # (H, W) ints -> numpy anchors: a static size's anchors are graph constants
        if backbone == "resnet_fpn":
            self.roi_align = MultiScaleRoIAlign(self.roi_output_size, strides[:4], self.sampling_ratio,
                                                name="box_roi_pool")
        elif self.roi_pooling == "align":
            pooled = 2 * self.roi_output_size if backbone == "resnet_c4" else self.roi_output_size
            self.roi_align = RoIAlign(pooled, 1.0 / 16, self.sampling_ratio, name="box_roi_pool")
        else:
            self.roi_align = None  # RoI max pooling is a plain op call (kdet.ops.roi_pool)
        self.box_head = None if backbone == "resnet_c4" else TwoFCHead(self.representation_size, self.head_dropout,
                                                                      name="box_head")
        self.box_predictor = BoxPredictor(max(self.label_ids), name="box_predictor")

    # -- pieces -------------------------------------------------------------------------------------------------------
    def normalize(self, images):
        return normalize_imagenet(images, self.compute_dtype, self.image_mean, self.image_std)

    def anchor_grid(self, image_size):
        """The RPN's anchors for inputs of `image_size` (H, W): ints, or scalar int tensors in a relaxed trace.

        Returns (anchors [N, 4] float32 yxyx pixels in the order of the RPN outputs, [N_l per level]) with
        feature maps of ceil(size / stride) cells (what the backbones' stride-2 convs and pools give). Static sizes
        are computed once, eagerly, and enter the graph as constants (as an export wants).
        """
        height, width = image_size
        feature_sizes = [(_ceil_div(height, s), _ceil_div(width, s)) for s in self.strides]
        counts = [h * w * self.num_anchors_per_location for h, w in feature_sizes]
        if tf.is_tensor(height) or tf.is_tensor(width):
            return multilevel_anchors((height, width), self.strides, self.anchor_sizes, self.aspect_ratios,
                                      feature_sizes), counts
        key = (int(height), int(width))
        if key not in self._anchor_cache:
            with tf.init_scope():  # eager even inside a trace
                self._anchor_cache[key] = multilevel_anchors(key, self.strides, self.anchor_sizes,
                                                             self.aspect_ratios, feature_sizes).numpy()
        return tf.constant(self._anchor_cache[key]), [int(n) for n in counts]

    def propose(self, outputs, images, training=False):
        """The RPN's proposals from the outputs of `self(images)` (images [B, H, W, 3] give the anchors' and the
        clipping size): the `ProposalGenerator` dict; training=True uses the training-time numbers of proposals
        (rpn_*_train, which the paper's Fast R-CNN step trains on)."""
        size = image_hw(self.images_of(images))
        anchors, counts = self.anchor_grid(size)
        return self.proposal_generator(outputs["rpn_objectness"], outputs["rpn_box_deltas"], anchors,
                                       anchors_per_level=counts, image_size=size, training=training)

    def extract_features(self, images, training=False):
        """images [B, H, W, 3] 0..255 -> (RPN feature maps, RoI feature maps), finest first."""
        x = self.normalize(images)
        if self.backbone_name == "vgg16":
            feature = self.backbone(x, training=training)[f"conv5_{len(self.backbone.stages[-1][0])}"]
            return [feature], [feature]
        if self.backbone_name == "resnet_c4":
            feature = _resnet_c4(self.backbone, x, training)
            return [feature], [feature]
        pyramid = self.fpn(self.backbone(x, training=training))
        levels = [pyramid[f"P{level}"] for level in FPN_LEVELS]
        return levels, levels[:4]

    def box_head_outputs(self, features, rois, training=False):
        """features: RoI feature maps; rois [B, R, 4] yxyx pixels -> (class_logits [B, R, K+1],
        box_regression [B, R, K+1, 4])."""
        rois = tf.cast(rois, tf.float32)
        if self.backbone_name == "resnet_fpn":
            pooled = self.roi_align(features, rois)
        elif self.roi_align is not None:
            pooled = self.roi_align(features[0], rois)
        else:
            batch, count = tf.shape(rois)[0], tf.shape(rois)[1]
            flat = roi_pool(tf.cast(features[0], tf.float32), tf.reshape(rois, [-1, 4]),  # float32 as RoIAlign
                            tf.repeat(tf.range(batch), count), self.roi_output_size, spatial_scale=1.0 / 16)
            pooled = tf.reshape(flat, tf.concat([[batch, count], tf.shape(flat)[1:]], axis=0))
        if self.box_head is None:  # C4: the ResNet's res5 stage on each RoI, then a global average pool
            shape = tf.shape(pooled)
            flat = tf.reshape(pooled, tf.concat([[-1], shape[2:]], axis=0))
            for block in self.backbone.stages[3]:
                flat = block(flat, training=training)
            x = tf.reshape(tf.reduce_mean(flat, axis=[1, 2]), [shape[0], shape[1], flat.shape[-1]])
        else:
            x = self.box_head(pooled, training=training)
        class_logits, box_regression = self.box_predictor(x)
        return tf.cast(class_logits, tf.float32), tf.cast(box_regression, tf.float32)

    # -- the contract -------------------------------------------------------------------------------------------------
    def call(self, inputs, training=False):
        images = self.images_of(inputs)
        given = inputs.get("proposals") if isinstance(inputs, dict) else None
        size = image_hw(images)
        rpn_features, roi_features = self.extract_features(images, training)
        outputs = {"features": roi_features}
        if given is None or self.stage != "fast_rcnn":
            objectness, deltas = self.rpn_head(rpn_features)
            outputs.update(rpn_objectness=tf.cast(objectness, tf.float32), rpn_box_deltas=tf.cast(deltas, tf.float32))
        if given is not None:
            proposals = clip_boxes(tf.cast(given, tf.float32), *size)
            valid = (proposals[..., 2] > proposals[..., 0]) & (proposals[..., 3] > proposals[..., 1])
            outputs.update(proposals=tf.where(valid[..., None], proposals, 0.0), proposal_valid=valid)
        elif not (training and self.stage == "rpn"):  # the RPN stage's loss needs no proposals
            generated = self.propose(outputs, images, training=training)
            outputs.update(proposals=generated["proposals"], proposal_valid=generated["proposal_valid"])
        if not training:
            class_logits, box_regression = self.box_head_outputs(roi_features, outputs["proposals"])
            outputs.update(class_logits=class_logits, box_regression=box_regression)
        return outputs

    def encode_targets(self, targets, image_size):
        """{"boxes": [B, M, 4] yxyx pixels, "labels": [B, M] (-1 = padding)} -> the same (the second stage samples
        its RoIs from them in `loss_from_targets`) plus the RPN's sampled anchor targets for the anchors of
        `image_size`: {"rpn_labels": [B, N], "rpn_box_targets": [B, N, 4]} (not in the "fast_rcnn" stage)."""
        encoded = {"boxes": targets["boxes"], "labels": targets["labels"]}
        if self.stage != "fast_rcnn":
            s = self.rpn_settings
            encoded.update(rpn_targets(self.anchor_grid(image_size)[0], targets["boxes"], targets["labels"],
                                       s["rpn_fg_iou_threshold"], s["rpn_bg_iou_threshold"],
                                       s["rpn_batch_size_per_image"], s["rpn_positive_fraction"]))
        return encoded

    def loss_from_targets(self, y, y_pred, images=None, training=True):
        parts, _ = self.loss_parts(y, y_pred, training)
        for name, value in parts.items():
            self.track_loss(name, value)
        return tf.add_n(list(parts.values()))

    def loss_parts(self, y, y_pred, training=True):
        """-> ({name in loss_names: scalar}, the second stage's `sample_rois` dict or None): the parts without
        tracking, so a subclass (Mask R-CNN) adds its own on the same sampled RoIs."""
        zero = tf.constant(0.0)
        parts = dict.fromkeys(self.loss_names, zero)
        samples = None
        if self.stage in ("joint", "rpn"):
            parts["rpn_objectness"], parts["rpn_box_regression"] = rpn_loss(
                y_pred["rpn_objectness"], y_pred["rpn_box_deltas"], y["rpn_labels"], y["rpn_box_targets"])
        if self.stage in ("joint", "fast_rcnn"):
            b = self.box_settings
            # sample_rois gives class + 1; the predictor column of class c is label_ids[c].
            columns = tf.constant(self.label_ids, tf.int32) - 1
            labels = tf.cast(y["labels"], tf.int32)
            labels = tf.where(labels >= 0, tf.gather(columns, tf.maximum(labels, 0)), -1)
            samples = sample_rois(y_pred["proposals"], y_pred["proposal_valid"], y["boxes"], labels,
                                  b["box_fg_iou_threshold"], b["box_bg_iou_threshold"],
                                  b["box_batch_size_per_image"], b["box_positive_fraction"], self.bbox_reg_weights)
            class_logits, box_regression = self.box_head_outputs(y_pred["features"], samples["rois"], training)
            parts["classification"], parts["box_regression"] = fast_rcnn_loss(
                class_logits, box_regression, samples["roi_labels"], samples["roi_box_targets"])
        return parts, samples

    def decode(self, outputs, image_size):
        b = self.box_settings
        return postprocess_detections(outputs["class_logits"], outputs["box_regression"], outputs["proposals"],
                                      outputs["proposal_valid"], image_size, self.max_detections,
                                      self.bbox_reg_weights, b["box_score_threshold"], b["box_nms_threshold"],
                                      topk_candidates=b["box_topk_candidates"], class_columns=self.label_ids)

    def get_config(self):
        config = super().get_config()
        config.update(label_ids=list(self.label_ids), backbone=self.backbone_name, depth=self.depth,
                      base_width=self.base_width, groups=self.groups, width_per_group=self.width_per_group,
                      frozen_stages=self.frozen_stages, frozen_bn=self.frozen_bn,
                      vgg_widths=list(self.vgg_widths), vgg_batch_norm=self.vgg_batch_norm,
                      fpn_channels=self.fpn_channels,
                      anchor_sizes=[list(level) for level in self.anchor_sizes],
                      aspect_ratios=list(self.aspect_ratios), roi_pooling=self.roi_pooling,
                      roi_output_size=self.roi_output_size, sampling_ratio=self.sampling_ratio,
                      representation_size=self.representation_size, head_dropout=self.head_dropout,
                      bbox_reg_weights=list(self.bbox_reg_weights), image_mean=list(self.image_mean),
                      image_std=list(self.image_std), stage=self.stage, **self.rpn_settings, **self.box_settings)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("backbone_weights", None)  # files saved before weights loading moved to kdet.convert
        return super().from_config(config)


def _resnet_c4(resnet, x, training):
    """The ResNet stem and layer1-layer3 only: C4 [B, H/16, W/16, C]. Its layer4 runs on the RoIs instead."""
    for layer in resnet.conv1:
        x = layer(x)
    x = resnet.relu(resnet.bn1(x, training=training))
    for layer in resnet.maxpool:
        x = layer(x)
    for blocks in resnet.stages[:3]:
        for block in blocks:
            x = block(x, training=training)
    resnet.built = True  # its sublayers are built; the ResNet layer itself is never called as a whole
    return x
