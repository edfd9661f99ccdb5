"""Generate tests/fixtures/ssd_twin.npz: torchvision's ssd300_vgg16 on seeded weights.

Needs torch + torchvision (never a kdet dependency):

    /tmp/tvenv/bin/python tests/reference/make_ssd_twin_fixtures.py

As for RetinaNet (make_retinanet_twin_fixtures.py), no weights are stored: both sides build them with
kdet.convert.torchvision.seeded_state_dict(shapes, WEIGHT_SEED); then the class predictors are rescaled
(CLS_WEIGHT_SCALE) and the background column's bias raised (BACKGROUND_BIAS), both stored in the fixture, so a
few hundred (box, class) scores clear the 0.01 threshold instead of every class of every box. The fixture holds
the input images, a channel slice of the six feature maps, a subsample of head outputs and default boxes, and the
final detections, in kdet's conventions (NHWC, yxyx, deltas ty, tx, th, tw, classes without background).
"""
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection import ssd300_vgg16

sys.path.insert(0, str(Path(__file__).resolve().parent))  # twin_common, when run as tests/reference/make_X.py
from twin_common import (dense_head_outputs, detection_arrays, feature_slices, fixture_header,  # noqa: E402
                         load_state, seeded_state, smooth_images, torch_inputs, write_fixture)

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "ssd_twin.npz"
NUM_CLASSES = 91  # torchvision's count, background included
WEIGHT_SEED = 300
CLS_WEIGHT_SCALE = 1.0
BACKGROUND_BIAS = 8.5
FEATURE_CHANNELS = 8
ANCHOR_STRIDE = 29
IMAGE_NOISE = 6.0  # std of the pixel noise (the ResNet fixtures keep twin_common's default of 20)


def twin_state(model):
    """Seeded weights, with the class predictors rescaled and the background column's bias raised."""
    shapes, state = seeded_state(model, WEIGHT_SEED)
    for k in range(6):
        state[f"head.classification_head.module_list.{k}.weight"] *= CLS_WEIGHT_SCALE
        state[f"head.classification_head.module_list.{k}.bias"][::NUM_CLASSES] = BACKGROUND_BIAS
    return shapes, state


def main():
    torch.manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).eval()
    shapes, state = twin_state(model)
    load_state(model, shapes, state)

    images = smooth_images(np.random.default_rng(WEIGHT_SEED), 2, 300, 300, noise=IMAGE_NOISE)
    inputs = torch_inputs(images)
    data = {**fixture_header(shapes, WEIGHT_SEED), "images": images, "cls_weight_scale": np.float32(CLS_WEIGHT_SCALE),
            "background_bias": np.float32(BACKGROUND_BIAS), "num_classes": np.int64(NUM_CLASSES - 1)}
    with torch.no_grad():
        image_list, _ = model.transform(inputs)
        mean = torch.tensor([0.48235, 0.45882, 0.40784])[:, None, None]
        manual = torch.stack([(x - mean) * 255.0 for x in inputs])
        assert torch.allclose(image_list.tensors, manual, atol=1e-3), "the transform must be the identity resize"
        features = list(model.backbone(image_list.tensors).values())
        data.update(feature_slices("F", features, range(len(features)), FEATURE_CHANNELS))
        head, head_data = dense_head_outputs(model, image_list, features, ANCHOR_STRIDE)
        data.update(head_data)
        detections = model(inputs)
    scores = torch.softmax(head["cls_logits"], -1)[..., 1:].numpy()
    print("candidates above 0.01 per image:", (scores > 0.01).sum(axis=(1, 2)))
    data.update(detection_arrays(detections, label_offset=-1))  # kdet classes have no background
    write_fixture(OUT, data)


if __name__ == "__main__":
    main()
