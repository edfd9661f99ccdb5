"""Architectures. `MODELS` maps the `model.name` of a config to its class; no registry, no import side effects."""
from kdet.models.classloc import ClassLocModel
from kdet.models.faster_rcnn import FasterRCNN
from kdet.models.retinanet import RetinaNet

MODELS = {
    "classloc": ClassLocModel,
    "faster_rcnn": FasterRCNN,
    "retinanet": RetinaNet,
}
