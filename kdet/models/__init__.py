"""Architectures. `MODELS` maps the `model.name` of a config to its class; no registry, no import side effects."""
from kdet.models.centernet import CenterNet
from kdet.models.classloc import ClassLocModel
from kdet.models.faster_rcnn import FasterRCNN
from kdet.models.fcn import FCN
from kdet.models.fcn_resnet import FCNResNet
from kdet.models.mask_rcnn import MaskRCNN
from kdet.models.retinanet import RetinaNet
from kdet.models.segnet import EncoderDecoder
from kdet.models.ssd import SSD, SSDLite
from kdet.models.unet import UNet
from kdet.models.yolo_v1 import FastYOLO, YOLOv1
from kdet.models.yolo_v2 import TinyYOLOv2, YOLOv2

MODELS = {
    "centernet": CenterNet,
    "classloc": ClassLocModel,
    "faster_rcnn": FasterRCNN,
    "fcn": FCN,
    "fcn_resnet": FCNResNet,
    "mask_rcnn": MaskRCNN,
    "retinanet": RetinaNet,
    "ssd": SSD,
    "ssdlite": SSDLite,
    "segnet": EncoderDecoder,
    "unet": UNet,
    "yolo_v1": YOLOv1,
    "fast_yolo": FastYOLO,
    "yolo_v2": YOLOv2,
    "tiny_yolo_v2": TinyYOLOv2,
}
