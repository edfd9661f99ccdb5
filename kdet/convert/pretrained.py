"""torchvision's pretrained detectors as ready kdet models: `kdet convert torchvision --arch A --weights F.pth
--output m.keras` builds the twin of architecture A, loads the state dict (read without torch) through the one
`kdet.convert.torchvision.load_state_dict`, and saves a `.keras` file carrying the class names, which `kdet predict
--checkpoint m.keras`, `kdet export` and `keras.saving.load_model` take directly.

COCO detectors keep torchvision's 91 predictor columns; kdet's classes are the 80 categories in COCO's id order,
class c predicting column COCO_CATEGORY_IDS[c]. fcn_resnet50's 21 outputs are background + the 20 VOC classes.
"""
from pathlib import Path

from kdet.convert.torchvision import load_state_dict
from kdet.errors import ConfigError
from kdet.models import FasterRCNN, FCNResNet, MaskRCNN, RetinaNet, SSD

COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")
VOC_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
             "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def _coco(cls, image_size, **kwargs):
    return lambda: cls(num_classes=80, image_size=image_size, label_ids=COCO_CATEGORY_IDS,
                       class_names=list(COCO_NAMES), **kwargs)


# torchvision builder name -> () -> the kdet twin with that state dict's layout
ARCHITECTURES = {
    "fasterrcnn_resnet50_fpn": _coco(FasterRCNN, (800, 1088), max_detections=100, depth=50),
    "maskrcnn_resnet50_fpn": _coco(MaskRCNN, (800, 1088), max_detections=100, depth=50),
    "retinanet_resnet50_fpn": _coco(RetinaNet, (800, 1088), max_detections=100, depth=50),
    "ssd300_vgg16": _coco(SSD, (300, 300), max_detections=200),
    "fcn_resnet50": lambda: FCNResNet(num_classes=20, image_size=(520, 520), depth=50, aux_loss=True,
                                      class_names=list(VOC_NAMES)),
}


def build_twin(arch):
    """The kdet twin of torchvision's `arch` (random weights), with the class names of its pretrained weights."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"--arch {arch!r}: choose one of {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch]()


def convert_torchvision(arch, weights, output):
    """Build the twin of `arch`, load `weights` (.pth / .pt / .npz state dict) and save it to `output` (.keras).
    Returns (output Path, number of tensors copied)."""
    output = Path(output)
    if output.suffix != ".keras":
        raise ConfigError(f"--output {output}: the converted model is written as a .keras file")
    model = build_twin(arch)
    copied = load_state_dict(model, weights)
    output.parent.mkdir(parents=True, exist_ok=True)
    model.save(output)
    return output, copied
