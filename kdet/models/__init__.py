"""Architectures. `MODELS` maps the `model.name` of a config to its class; no registry, no import side effects."""
from kdet.models.classloc import ClassLocModel
from kdet.models.faster_rcnn import FasterRCNN
from kdet.models.fcn import FCN
from kdet.models.retinanet import RetinaNet
from kdet.models.segnet import EncoderDecoder
from kdet.models.unet import UNet

MODELS = {
    "classloc": ClassLocModel,
    "faster_rcnn": FasterRCNN,
    "fcn": FCN,
    "retinanet": RetinaNet,
    "segnet": EncoderDecoder,
    "unet": UNet,
}
