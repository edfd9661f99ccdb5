"""YOLOv1 (Redmon et al., CVPR 2016) and Fast YOLO: one network looks once at the whole image and regresses, for
each cell of an S x S grid, B boxes with a confidence each and one set of C class probabilities.

    images [B, 448, 448, 3] -> 24 conv layers (Fast YOLO: 9) -> 7x7x1024 -> FC 4096 -> dropout -> FC -> 7x7x(B*5+C)

The fully connected head fixes the network's input size: images of any other size are resized to `image_size`
inside the model (the grid then covers the whole input, so boxes come back in the input's own pixels).

Training (in the train step): `encode_targets` puts each object in the cell holding its centre
(`kdet.ops.yolo_v1_encode`); the loss is the paper's sum-squared error (`kdet.losses.yolo.yolo_v1_loss`). Inference:
class-specific confidence Pr(class | object) * confidence for each of the S*S*B boxes, then per-class NMS
(`kdet.heads.yolo_head.grid_nms`) to the fixed-size detection dict.
"""
import keras
import tensorflow as tf

from kdet.backbones.darknet import DarknetBackbone
from kdet.heads.yolo_head import YoloV1Head, grid_nms
from kdet.losses.yolo import yolo_v1_loss
from kdet.models.base import Detector
from kdet.ops.box_ops import clip_boxes
from kdet.ops.images import resize_to
from kdet.ops.yolo_grid import yolo_v1_decode, yolo_v1_encode


@keras.saving.register_keras_serializable(package="kdet")
class YOLOv1(Detector):
    """Args:
        num_classes: C (20 for VOC).
        image_size: (H, W), square and a multiple of 64 (the network's stride); 448 gives the paper's S = 7. Inputs
            of other sizes are resized to it; boxes come back in the input's pixels.
        max_detections: K, rows of the detection dict.
        num_boxes: B, boxes per cell (2).
        width_multiplier: scales every conv's filters (1.0 = the paper).
        fc_units: hidden fully connected widths; None = the class's `default_fc_units` ((4096,) in the paper).
        dropout: after the hidden FC layers (0.5).
        batch_norm: BatchNorm after each conv. The 2016 paper has none; Darknet's yolov1.cfg adds it, and it is what
            makes training from scratch on a CPU budget converge.
        lambda_coord, lambda_noobj: the paper's 5 and 0.5.
        score_threshold: class-specific confidences at or below it are dropped before NMS.
        iou_threshold: per-class NMS.
        pre_nms_top_k: the best (box, class) pairs per image that enter NMS.

    call(images [B, H, W, 3], any H, W) -> {"predictions": [B, S, S, B * 5 + C]}, boxes (y, x, sqrt h, sqrt w,
    confidence) relative to the cell / image.
    """

    backbone_layout = "yolo_v1"
    default_fc_units = (4096,)
    loss_names = ("coord_loss", "object_loss", "noobject_loss", "class_loss")

    def __init__(self, num_classes, image_size=(448, 448), max_detections=100, num_boxes=2, width_multiplier=1.0,
                 fc_units=None, dropout=0.5, batch_norm=False, lambda_coord=5.0, lambda_noobj=0.5,
                 score_threshold=0.005, iou_threshold=0.5, pre_nms_top_k=1000, **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=max_detections, **kwargs)
        self.backbone = DarknetBackbone(self.backbone_layout, width_multiplier, batch_norm, name="backbone")
        height, width = self.image_size
        if height != width or height % self.backbone.stride:
            raise ValueError(f"image_size must be square and a multiple of {self.backbone.stride}, got "
                             f"{list(self.image_size)}")
        self.grid_size = height // self.backbone.stride
        self.num_boxes = int(num_boxes)
        self.width_multiplier, self.batch_norm = float(width_multiplier), bool(batch_norm)
        fc_units = self.default_fc_units if fc_units is None else fc_units
        self.fc_units, self.dropout = tuple(int(u) for u in fc_units), float(dropout)
        self.lambda_coord, self.lambda_noobj = float(lambda_coord), float(lambda_noobj)
        self.score_threshold, self.iou_threshold = float(score_threshold), float(iou_threshold)
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.head = YoloV1Head(self.grid_size, self.num_boxes, self.num_classes, self.fc_units, self.dropout,
                               name="head")

    def call(self, images, training=False):
        features = self.backbone(self.normalize(resize_to(images, self.image_size)), training=training)["C5"]
        return {"predictions": tf.cast(self.head(features, training=training), tf.float32)}

    def encode_targets(self, targets, image_size):
        """{"boxes": [B, M, 4] yxyx input pixels, "labels": [B, M]} -> {"grid": [B, S, S, 5 + C]}; the grid covers
        the input whatever its size (image_size: ints or scalar tensors). Labels outside 0..C-1 count as padding
        (a bad class id never becomes an all-zero one-hot with objectness 1)."""
        labels = targets["labels"]
        labels = tf.where((labels >= 0) & (labels < self.num_classes), labels, -1)
        return {"grid": yolo_v1_encode(targets["boxes"], labels, image_size, self.grid_size, self.num_classes)}

    def loss_from_targets(self, y, y_pred, images, training=True):
        terms = yolo_v1_loss(y_pred["predictions"], y["grid"], self.num_boxes, self.num_classes,
                             self.lambda_coord, self.lambda_noobj)
        for name, value in terms.items():
            self.track_loss(f"{name}_loss", value)
        return tf.add_n(list(terms.values()))

    def decode(self, outputs, image_size):
        """Class-specific confidences, boxes in the pixels of an input of `image_size` (clipped to it), per-class
        NMS -> detection dict."""
        height, width = image_size
        boxes, scores = yolo_v1_decode(outputs["predictions"], image_size, self.num_boxes, self.num_classes)
        return grid_nms(clip_boxes(boxes, height, width), scores, self.max_detections, self.iou_threshold,
                        self.score_threshold, self.pre_nms_top_k)

    def get_config(self):
        return dict(super().get_config(), num_boxes=self.num_boxes, width_multiplier=self.width_multiplier,
                    fc_units=list(self.fc_units), dropout=self.dropout, batch_norm=self.batch_norm,
                    lambda_coord=self.lambda_coord, lambda_noobj=self.lambda_noobj,
                    score_threshold=self.score_threshold, iou_threshold=self.iou_threshold,
                    pre_nms_top_k=self.pre_nms_top_k)


@keras.saving.register_keras_serializable(package="kdet")
class FastYOLO(YOLOv1):
    """Fast YOLO: the same model with 9 conv layers of fewer filters (Darknet's original yolo-tiny.cfg: 16..512,
    then 3 x 1024) and that cfg's narrower FC stack (256, 4096), which keeps the first FC at 12.8 M weights instead
    of 205 M."""

    backbone_layout = "fast_yolo"
    default_fc_units = (256, 4096)
