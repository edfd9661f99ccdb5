"""Generate tests/fixtures/retinanet_twin.npz: torchvision's retinanet_resnet50_fpn on seeded weights.

Needs torch + torchvision (never a kdet dependency). Run it in the scratch venv that sees the system packages:

    python3 -m venv --system-site-packages /tmp/tvenv
    /tmp/tvenv/bin/pip install "torch==2.14.1" "torchvision==0.29.1"
    /tmp/tvenv/bin/python tests/reference/make_retinanet_twin_fixtures.py

No weights are stored: both sides build them with kdet.convert.torchvision.seeded_state_dict(shapes, WEIGHT_SEED)
(numpy only), then the class output conv is rescaled (CLS_WEIGHT_SCALE, CLS_BIAS, stored in the fixture) so the
random-weight scores spread around the 0.05 threshold and NMS has real work. The fixture holds the input images,
a channel slice of every backbone / FPN level (and of a bare resnet18's C2-C5), a subsample of the head outputs and anchors, and the final
detections, all converted to kdet's conventions (NHWC, yxyx, delta order ty, tx, th, tw).
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models.detection import retinanet_resnet50_fpn

from kdet.convert.torchvision import seeded_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))  # twin_common, when run as tests/reference/make_X.py
from twin_common import (dense_head_outputs, detection_arrays, feature_slices, fixture_header,  # noqa: E402
                         load_state, seeded_state, smooth_images, torch_inputs, write_fixture)

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "retinanet_twin.npz"
IMAGE_SIZE = (160, 224)  # a multiple of 32 (torchvision pads to 32) but not of 128: P7 cells are 80 x 112 px
NUM_CLASSES = 91
WEIGHT_SEED = 8
CLS_WEIGHT_SCALE = 3.0
CLS_BIAS = -4.0
FEATURE_CHANNELS = 8  # channels kept per feature level
ANCHOR_STRIDE = 23    # every 23rd anchor's head outputs are kept


def twin_state(model):
    """Seeded weights, with the class output conv rescaled so random-weight scores spread around 0.05."""
    shapes, state = seeded_state(model, WEIGHT_SEED)
    state["head.classification_head.cls_logits.weight"] *= CLS_WEIGHT_SCALE
    state["head.classification_head.cls_logits.bias"][:] = CLS_BIAS
    return shapes, state


def resnet18_twin(data, inputs):
    """A bare torchvision resnet18 (BasicBlock path) on the same images, normalised by (x - 0.5) / 0.25."""
    resnet = torchvision.models.resnet18(weights=None).eval()
    shapes = {k: tuple(v.shape) for k, v in resnet.state_dict().items() if not k.startswith("fc.")}  # never run
    load_state(resnet, shapes, seeded_state_dict(shapes, WEIGHT_SEED))
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1((inputs - 0.5) / 0.25))))
    stages = []
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        x = layer(x)
        stages.append(x)
    data.update(feature_slices("resnet18_C", stages, (2, 3, 4, 5), FEATURE_CHANNELS))


def main():
    torch.manual_seed(0)
    height, width = IMAGE_SIZE
    # min_size / max_size equal to the image size: the transform's resize is the identity, so kdet (which takes the
    # image at its network size) and torchvision see the same pixels.
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                   min_size=height, max_size=width, detections_per_img=100).eval()
    shapes, state = twin_state(model)
    load_state(model, shapes, state)

    images = smooth_images(np.random.default_rng(WEIGHT_SEED), 2, height, width)
    inputs = torch_inputs(images)
    data = {**fixture_header(shapes, WEIGHT_SEED), "images": images, "cls_weight_scale": np.float32(CLS_WEIGHT_SCALE),
            "cls_bias": np.float32(CLS_BIAS), "num_classes": np.int64(NUM_CLASSES)}
    with torch.no_grad():
        image_list, _ = model.transform(inputs)
        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        manual = torch.stack([(x - mean) / std for x in inputs])
        assert image_list.tensors.shape == manual.shape and torch.allclose(image_list.tensors, manual, atol=1e-6)
        body = model.backbone.body(image_list.tensors)
        data.update(feature_slices("C", body.values(), (3, 4, 5), FEATURE_CHANNELS))
        pyramid = model.backbone.fpn(body)
        data.update(feature_slices("P", pyramid.values(), (3, 4, 5, 6, 7), FEATURE_CHANNELS))
        features = list(pyramid.values())
        head, head_data = dense_head_outputs(model, image_list, features, ANCHOR_STRIDE)
        data.update(head_data)
        detections = model(inputs)
        resnet18_twin(data, torch.stack(inputs))
    scores = torch.sigmoid(head["cls_logits"]).numpy()
    print("candidates above 0.05 per image:", (scores > 0.05).sum(axis=(1, 2)))
    data.update(detection_arrays(detections))
    write_fixture(OUT, data)


if __name__ == "__main__":
    main()
