"""Mask R-CNN (He et al., ICCV 2017): Faster R-CNN with a small FCN on each RoI predicting its instance mask.

L = L_cls + L_box + L_mask. Everything of `FasterRCNN` (backbone "resnet_fpn": ResNet-18/34/50/101 + FPN, RPN,
RoIAlign box head, training stages, any input size) plus a mask branch, with torchvision's maskrcnn_resnet50_fpn
(v1) structure and layer names:

    mask_roi_align   MultiScaleRoIAlign 14 x 14 on P2-P5, sampling ratio 2, aligned=False: torchvision's v1 model
                     uses the legacy aligned=False (the paper's and Detectron2's RoIAlign shifts by half a pixel,
                     aligned=True; a twin of torchvision's weights needs its choice)
    mask_head        four 3x3 convs 256 + ReLU (kdet.heads.mask_head.MaskRCNNHeads)
    mask_predictor   2x2 stride-2 transposed conv 256 + ReLU, 1x1 conv to one 28 x 28 logit map per predictor
                     column (0 = background, the box predictor's columns)

Training: after the box head's RoI sampling (`sample_rois`), the foreground RoIs (at most
box_batch_size_per_image * box_positive_fraction per image) go through the mask branch; their targets are their
matched ground-truth masks cropped into the RoI by RoIAlign and binarised at 0.5 (`kdet.ops.masks.mask_targets`);
L_mask is the mean binary cross-entropy on the ground-truth class's map only ("mask" in the progress bar).
Inference: Faster R-CNN's detections, then the mask branch on the final boxes; the predicted class's map (sigmoid)
is pasted into the input image as torchvision's paste_masks_in_image does (`kdet.ops.masks.paste_masks`) and
thresholded (> mask_threshold).

fit: (images, {"boxes": [B, M, 4], "labels": [B, M], "masks": [B, M, H, W] uint8}) (kdet's recipe delivers the
masks because `data_needs.instance_masks` is True).
predict -> the detection dict plus "masks": [B, K, H, W] uint8 0 / 1 in the input's pixels (rows >= num_detections
are zeros).
"""
import keras
import tensorflow as tf

from kdet.heads.mask_head import MaskRCNNHeads, MaskRCNNPredictor, mask_loss
from kdet.layers.roi_align import MultiScaleRoIAlign
from kdet.models.base import DataNeeds
from kdet.models.faster_rcnn import FasterRCNN
from kdet.ops.masks import mask_targets, paste_masks


@keras.saving.register_keras_serializable(package="kdet")
class MaskRCNN(FasterRCNN):
    """Args (besides FasterRCNN's, which pass through, e.g. depth, base_width, fpn_channels, label_ids):
        mask_roi_output_size: pooled size of the mask branch (14; its masks are twice that, 28).
        mask_sampling_ratio: RoIAlign samples per bin side (2).
        mask_layers: channels of the mask head's 3x3 convs ((256, 256, 256, 256)); mask_dilation: their dilation.
        mask_predictor_channels: width of the transposed conv (256).
        mask_threshold: pasted probabilities above it are mask pixels (0.5).

    call(images) -> FasterRCNN's outputs (the mask branch runs in `loss_from_targets` and `decode`, on boxes that
    depend on the ground truth or on the post-processing).
    """

    loss_names = FasterRCNN.loss_names + ("mask",)

    def __init__(self, num_classes, image_size=(800, 1088), mask_roi_output_size=14, mask_sampling_ratio=2,
                 mask_layers=(256, 256, 256, 256), mask_dilation=1, mask_predictor_channels=256, mask_threshold=0.5,
                 **kwargs):
        super().__init__(num_classes, image_size=image_size, **kwargs)
        if self.backbone_name != "resnet_fpn":
            raise ValueError(f"MaskRCNN needs backbone='resnet_fpn' (its mask branch pools P2-P5), got "
                             f"{self.backbone_name!r}")
        self.mask_roi_output_size = int(mask_roi_output_size)
        self.mask_sampling_ratio = int(mask_sampling_ratio)
        self.mask_layers = tuple(int(width) for width in mask_layers)
        if not self.mask_layers:
            raise ValueError("mask_layers needs at least one conv width")
        self.mask_dilation = int(mask_dilation)
        self.mask_predictor_channels = int(mask_predictor_channels)
        self.mask_threshold = float(mask_threshold)
        self.mask_roi_align = MultiScaleRoIAlign(self.mask_roi_output_size, self.strides[:4],
                                                 self.mask_sampling_ratio, aligned=False, name="mask_roi_pool")
        self.mask_head = MaskRCNNHeads(self.mask_layers, self.mask_dilation, name="mask_head")
        self.mask_predictor = MaskRCNNPredictor(max(self.label_ids) + 1, self.mask_predictor_channels,
                                                name="mask_predictor")
        # The branch runs outside `call` (in the loss and in decode): built here so that saving, loading and
        # weight transfer see its variables whatever was called first.
        side = self.mask_roi_output_size
        self.mask_head.build((None, None, side, side, self.fpn_channels))
        self.mask_predictor.build((None, None, side, side, self.mask_layers[-1]))

    @property
    def data_needs(self):
        return DataNeeds(instance_masks=True)

    @property
    def mask_size(self):
        """Side of the predicted and target masks (2 x mask_roi_output_size = 28)."""
        return 2 * self.mask_roi_output_size

    def mask_outputs(self, features, boxes, training=False):
        """features: P2-P5 maps; boxes [B, R, 4] yxyx pixels -> mask logits [B, R, 28, 28, C + 1] float32."""
        pooled = self.mask_roi_align(features, tf.cast(boxes, tf.float32))
        return tf.cast(self.mask_predictor(self.mask_head(pooled, training=training)), tf.float32)

    # -- the contract -------------------------------------------------------------------------------------------------
    def encode_targets(self, targets, image_size):
        """FasterRCNN's targets plus "masks" [B, M, H, W] (checked against the boxes and the image size)."""
        masks = targets.get("masks")
        if masks is None:
            raise ValueError("MaskRCNN trains on y = {'boxes': [B, M, 4], 'labels': [B, M], 'masks': [B, M, H, W]} "
                             "(one instance mask per box, in the images' pixels); 'masks' is missing")
        if masks.shape.rank != 4:
            raise ValueError(f"y['masks'] must be [B, M, H, W], got shape {masks.shape}")
        boxes_m, masks_m = targets["boxes"].shape[1], masks.shape[1]
        if boxes_m is not None and masks_m is not None and boxes_m != masks_m:
            raise ValueError(f"y['masks'] holds {masks_m} masks per image but y['boxes'] {boxes_m} boxes")
        for axis, size in zip((2, 3), image_size):
            if masks.shape[axis] is not None and not tf.is_tensor(size) and masks.shape[axis] != size:
                raise ValueError(f"y['masks'] are {tuple(masks.shape[2:])} but the images {tuple(image_size)}: "
                                 "masks must be in the images' pixels")
        # The same checks when the shapes are only known at run time (Keras relaxes a retraced train step).
        checks = [tf.debugging.assert_equal(tf.shape(masks)[1], tf.shape(targets["boxes"])[1],
                                            message="y['masks'] must hold one mask per box of y['boxes']"),
                  tf.debugging.assert_equal(tf.shape(masks)[2:], tf.stack(image_size),
                                            message="y['masks'] must be in the images' pixels [B, M, H, W]")]
        encoded = super().encode_targets(targets, image_size)
        with tf.control_dependencies(checks):
            encoded["masks"] = tf.identity(masks)
        return encoded

    def loss_parts(self, y, y_pred, training=True):
        parts, samples = super().loss_parts(y, y_pred, training)
        if samples is not None:
            b = self.box_settings
            count = max(1, int(b["box_batch_size_per_image"] * b["box_positive_fraction"]))  # most foreground
            # The foreground RoIs first (top_k keeps the lower index among equal keys); the rest get no loss.
            _, order = tf.math.top_k(tf.cast(samples["roi_labels"] > 0, tf.float32), k=count)
            rois = tf.gather(samples["rois"], order, batch_dims=1)
            labels = tf.gather(samples["roi_labels"], order, batch_dims=1)
            matched = tf.gather(samples["roi_matched_gt"], order, batch_dims=1)
            logits = self.mask_outputs(y_pred["features"], rois, training)
            targets = mask_targets(y["masks"], rois, matched, self.mask_size)
            parts["mask"] = mask_loss(logits, labels, targets)
        return parts, samples

    def decode(self, outputs, image_size):
        """FasterRCNN's detection dict plus "masks": [B, K, H, W] uint8 0 / 1 (zeros past num_detections).

        The mask branch and the paste run on the first max(num_detections) rows of the batch only (at least one),
        the rest are zero padding: on torchvision's maskrcnn_resnet50_fpn at 640x480 with 30 of 100 rows detected,
        the mask branch (head and paste) on all 100 rows took 40 % of the inference (bench_mask_rcnn_speed.py).
        The predictor computes each detection's own class map only (MaskRCNNPredictor.class_logits).
        """
        detections = super().decode(outputs, image_size)
        rows = detections["boxes"].shape[1]
        count = tf.maximum(tf.reduce_max(detections["num_detections"]), 1)
        boxes = detections["boxes"][:, :count]
        columns = tf.gather(tf.constant(self.label_ids, tf.int32), detections["classes"][:, :count])
        pooled = self.mask_roi_align(outputs["features"], tf.cast(boxes, tf.float32))
        probabilities = tf.sigmoid(self.mask_predictor.class_logits(self.mask_head(pooled), columns))
        # Rows past each image's num_detections are zeroed as 28 x 28 float maps: cheaper than on the pasted masks,
        # and TFLite has no uint8 MUL, nor a STRIDED_SLICE that adds two axes (hence expand_dims).
        valid = tf.range(count)[None, :] < detections["num_detections"][:, None]
        probabilities = probabilities * tf.expand_dims(tf.expand_dims(tf.cast(valid, tf.float32), -1), -1)
        masks = paste_masks(probabilities, boxes, image_size, self.mask_threshold, rows=rows)
        return dict(detections, masks=masks)

    def get_config(self):
        config = super().get_config()
        config.update(mask_roi_output_size=self.mask_roi_output_size, mask_sampling_ratio=self.mask_sampling_ratio,
                      mask_layers=list(self.mask_layers), mask_dilation=self.mask_dilation,
                      mask_predictor_channels=self.mask_predictor_channels, mask_threshold=self.mask_threshold)
        return config
