"""YOLOv2 (Redmon & Farhadi, "YOLO9000: Better, Faster, Stronger", CVPR 2017) and tiny-YOLOv2.

    images [B, 416, 416, 3] -> DarkNet-19 -> C5 13x13x1024 -> 2 x conv 3x3 1024
                                          -> C4 26x26x512 -> passthrough (space_to_depth, 13x13x2048) --concat-->
                            -> conv 3x3 1024 -> conv 1x1 -> [B, 13, 13, A * (5 + C)]

Each cell predicts, for each of A anchor priors (p_h, p_w): b_y = sigmoid(t_y) + c_y, b_x = sigmoid(t_x) + c_x,
b_h = p_h e^{t_h}, b_w = p_w e^{t_w}, objectness sigmoid(t_o) and softmax class probabilities. BatchNorm after
every conv, no dropout, no FC layer, so the grid is the input's size / 32 at run time (Python ints when the trace
knows the size, tensors when Keras relaxed it): a model built at 416 predicts 320x480 or 608x608 images with boxes in
their pixels, and trains on batches of several sizes in one fit. That is what multi-scale training (declared in
`data_needs`: a new size from `multiscale_sizes` every `multiscale_every` batches, applied by the training recipe)
and the paper's speed / accuracy table (evaluate at 288 ... 544 with the same weights) rely on. An input whose side
is not a multiple of 32 is padded at the bottom / right (mid grey) to the next one, so pixel coordinates do not move.

Anchors are given in grid cells, as in Darknet's cfg files (pixels = cells * 32), so one set serves every input
size. `kdet data anchors --k 5 DATASET` (`kdet.data.anchors_kmeans`) prints k-means priors in this unit.
tiny-YOLOv2 (tiny-yolo-voc.cfg): 7 convs with six max-pools (the last 2x2 with stride 1), conv 1024, the 1x1
predictor; no passthrough.
"""
import keras
import tensorflow as tf

from kdet.backbones.darknet import DarknetBackbone, DarknetConv, scaled
from kdet.heads.yolo_head import YoloV2Head, grid_nms
from kdet.losses.yolo import yolo_v2_loss
from kdet.models.base import DataNeeds, Detector
from kdet.necks.passthrough import Passthrough
from kdet.ops.box_ops import clip_boxes
from kdet.ops.images import image_hw
from kdet.ops.yolo_grid import yolo_v2_decode, yolo_v2_encode

# Darknet's priors (height, width) in grid cells: yolo-voc.cfg and tiny-yolo-voc.cfg (their cfgs list w, h).
VOC_ANCHORS = ((1.73145, 1.3221), (4.00944, 3.19275), (8.09892, 5.05587), (4.84053, 9.47112), (10.0071, 11.2364))
TINY_VOC_ANCHORS = ((1.19, 1.08), (4.41, 3.42), (11.38, 6.63), (5.11, 9.42), (10.52, 16.62))
PAPER_MULTISCALE_SIZES = tuple(range(320, 609, 32))


@keras.saving.register_keras_serializable(package="kdet")
class YOLOv2(Detector):
    """Args:
        num_classes: C.
        image_size: (H, W), multiples of 32 (416 in the paper); the size export runs at and kdet's pipeline resizes
            to. The model itself runs at any size.
        max_detections: K.
        anchors: A priors (height, width) in grid cells; None = the class's `default_anchors` (Darknet's VOC priors).
        width_multiplier: scales every conv's filters (1.0 = the paper).
        passthrough_channels: None = the paper's passthrough (26x26x512 -> 13x13x2048); 64 = yolo-voc.cfg's 1x1
            conv before the reorg.
        lambda_coord, lambda_object, lambda_noobject, lambda_class: yolo-voc.cfg's 1, 5, 1, 1.
        ignore_threshold: predictions overlapping a truth by this IoU get no no-object penalty (0.6).
        prior_weight, prior_warmup_images: the early-training term's weight (0.01) and how many training images it
            lasts (12800 in Darknet).
        multiscale_sizes: square input sizes multi-scale training picks from ((320, ..., 608) in the paper;
            empty = off), every `multiscale_every` batches (10); declared to the training recipe as `data_needs`.
        score_threshold: objectness * class probability at or below it is dropped before NMS.
        iou_threshold: per-class NMS (Darknet: 0.45).
        pre_nms_top_k: the best (box, class) pairs per image that enter NMS.

    call(images [B, H, W, 3]) -> {"predictions": [B, ceil(H/32), ceil(W/32), A * (5 + C)]} raw (t_y, t_x, t_h, t_w,
    t_o, logits).
    """

    backbone_layout = "darknet19"
    use_passthrough = True
    default_anchors = VOC_ANCHORS
    stride = 32
    loss_names = ("coord_loss", "object_loss", "noobject_loss", "class_loss", "prior_loss")

    def __init__(self, num_classes, image_size=(416, 416), max_detections=100, anchors=None,
                 width_multiplier=1.0, passthrough_channels=None, lambda_coord=1.0, lambda_object=5.0,
                 lambda_noobject=1.0, lambda_class=1.0, ignore_threshold=0.6, prior_weight=0.01,
                 prior_warmup_images=12800, multiscale_sizes=PAPER_MULTISCALE_SIZES, multiscale_every=10,
                 score_threshold=0.005, iou_threshold=0.45, pre_nms_top_k=1000, **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=max_detections, **kwargs)
        anchors = self.default_anchors if anchors is None else anchors
        self.anchors = tuple((float(h), float(w)) for h, w in anchors)
        if not self.anchors or any(h <= 0 or w <= 0 for h, w in self.anchors):
            raise ValueError(f"anchors must be a non-empty list of positive [height, width] in cells, got {anchors}")
        multiscale_sizes = tuple(int(s) for s in multiscale_sizes)
        bad = [s for s in (*self.image_size, *multiscale_sizes) if s <= 0 or s % self.stride]
        if bad:
            raise ValueError(f"image_size and multiscale_sizes must be positive multiples of {self.stride}, got {bad}")
        if int(multiscale_every) < 1:
            raise ValueError(f"multiscale_every must be >= 1, got {multiscale_every}")
        self._data_needs = DataNeeds(multiscale_sizes=multiscale_sizes, multiscale_every=int(multiscale_every))
        self.width_multiplier = float(width_multiplier)
        self.passthrough_channels = None if passthrough_channels is None else int(passthrough_channels)
        self.lambda_coord, self.lambda_object = float(lambda_coord), float(lambda_object)
        self.lambda_noobject, self.lambda_class = float(lambda_noobject), float(lambda_class)
        self.ignore_threshold, self.prior_weight = float(ignore_threshold), float(prior_weight)
        self.prior_warmup_images = int(prior_warmup_images)
        self.score_threshold, self.iou_threshold = float(score_threshold), float(iou_threshold)
        self.pre_nms_top_k = int(pre_nms_top_k)

        self.backbone = DarknetBackbone(self.backbone_layout, self.width_multiplier, batch_norm=True, name="backbone")
        width = scaled(1024, self.width_multiplier)
        if self.use_passthrough:
            self.extra_convs = [DarknetConv(width, 3, name=f"detect_conv{i + 1}") for i in range(2)]
            self.passthrough = Passthrough(2, self.passthrough_channels, name="passthrough")
        self.head = YoloV2Head(len(self.anchors), self.num_classes, width=width, name="head")

    @property
    def data_needs(self):
        """Multi-scale training: `multiscale_sizes` (empty = off), a new one every `multiscale_every` batches."""
        return self._data_needs

    @property
    def anchor_pixels(self):
        """[A, 2] priors (height, width) in input pixels (cells * stride; the same at every input size)."""
        return tf.constant(self.anchors, tf.float32) * float(self.stride)

    def call(self, images, training=False):
        features = self.backbone(self._pad_to_stride(self.normalize(images)), training=training)
        x = features["C5"]
        if self.use_passthrough:
            for conv in self.extra_convs:
                x = conv(x, training=training)
            x = self.passthrough((features["C4"], x), training=training)
        return {"predictions": tf.cast(self.head(x, training=training), tf.float32)}

    def _pad_to_stride(self, x):
        """[B, H, W, 3] normalised -> [B, 32 ceil(H / 32), 32 ceil(W / 32), 3], zeros (mid grey) at the bottom and
        right; a no-op when the static size already is a multiple (every export and kdet pipeline size)."""
        height, width = image_hw(x)
        if isinstance(height, int) and isinstance(width, int) and not height % self.stride and not width % self.stride:
            return x
        pad_h, pad_w = (-height) % self.stride, (-width) % self.stride
        return tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])

    def encode_targets(self, targets, image_size):
        """{"boxes": [B, M, 4] yxyx input pixels, "labels": [B, M]} -> {"grid": [B, S_h, S_w, A, 5 + C],
        "boxes", "labels"} on the grid of the input's size (ints, or tensors in a relaxed trace), so every batch of
        a multi-scale fit gets its own grid. Out-of-range labels become padding."""
        labels = targets["labels"]
        labels = tf.where((labels >= 0) & (labels < self.num_classes), labels, -1)
        boxes = tf.cast(targets["boxes"], tf.float32)
        grid = yolo_v2_encode(boxes, labels, self.anchor_pixels, image_size, self.num_classes, self.stride)
        return {"grid": grid, "boxes": boxes, "labels": labels}

    def _prior_weight(self, batch_size):
        """prior_weight while fewer than prior_warmup_images have been trained on, then 0 (graph-safe)."""
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None or self.prior_weight == 0:
            return self.prior_weight
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        seen = tf.cast(optimizer.iterations, tf.float32) * tf.cast(batch_size * replicas, tf.float32)
        return tf.where(seen < float(self.prior_warmup_images), self.prior_weight, 0.0)

    def loss_from_targets(self, y, y_pred, images, training=True):
        predictions = y_pred["predictions"]
        terms = yolo_v2_loss(predictions, y["grid"], y["boxes"], y["labels"], self.anchor_pixels, self.stride,
                             self.num_classes, self.lambda_coord, self.lambda_object, self.lambda_noobject,
                             self.lambda_class, self.ignore_threshold, self._prior_weight(tf.shape(predictions)[0]),
                             image_size=image_hw(self.images_of(images)))
        for name, value in terms.items():
            self.track_loss(f"{name}_loss", value)
        return tf.add_n(list(terms.values()))

    def decode(self, outputs, image_size):
        """Boxes from the priors on the outputs' grid (in the pixels of an input of `image_size`, clipped to it),
        scores = objectness * class probability, per-class NMS -> detection dict."""
        height, width = image_size
        decoded = yolo_v2_decode(outputs["predictions"], self.anchor_pixels, self.num_classes, self.stride)
        return grid_nms(clip_boxes(decoded["boxes"], height, width), decoded["scores"], self.max_detections,
                        self.iou_threshold, self.score_threshold, self.pre_nms_top_k)

    def get_config(self):
        return dict(super().get_config(), anchors=[list(a) for a in self.anchors],
                    width_multiplier=self.width_multiplier, passthrough_channels=self.passthrough_channels,
                    lambda_coord=self.lambda_coord, lambda_object=self.lambda_object,
                    lambda_noobject=self.lambda_noobject, lambda_class=self.lambda_class,
                    ignore_threshold=self.ignore_threshold, prior_weight=self.prior_weight,
                    prior_warmup_images=self.prior_warmup_images,
                    multiscale_sizes=list(self.data_needs.multiscale_sizes),
                    multiscale_every=self.data_needs.multiscale_every, score_threshold=self.score_threshold,
                    iou_threshold=self.iou_threshold, pre_nms_top_k=self.pre_nms_top_k)


@keras.saving.register_keras_serializable(package="kdet")
class TinyYOLOv2(YOLOv2):
    """tiny-YOLOv2 (tiny-yolo-voc.cfg): the 7-conv tiny Darknet, conv 3x3 1024, 1x1 predictor; no passthrough."""

    backbone_layout = "tiny_darknet"
    use_passthrough = False
    default_anchors = TINY_VOC_ANCHORS
