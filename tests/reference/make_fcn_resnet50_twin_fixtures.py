"""Generate tests/fixtures/fcn_resnet50_twin.npz: torchvision's fcn_resnet50 on seeded weights.

Needs torch + torchvision (never a kdet dependency). Run it in the scratch venv that sees the system packages:

    python3 -m venv --system-site-packages /tmp/tvenv
    /tmp/tvenv/bin/pip install "torch==2.14.1" "torchvision==0.29.1"
    /tmp/tvenv/bin/python tests/reference/make_fcn_resnet50_twin_fixtures.py

No weights are stored: both sides build them with kdet.convert.torchvision.seeded_state_dict(shapes, WEIGHT_SEED).
The fixture holds the input image (an odd size, so that ceil-size features and the final bilinear resize are
checked), torchvision's state dict names / shapes, a channel slice of the dilated layer3 / layer4 features, and the
"out" and "aux" logits, all NHWC.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.models.segmentation import fcn_resnet50

sys.path.insert(0, str(Path(__file__).resolve().parent))  # twin_common, when run as tests/reference/make_X.py
from twin_common import fixture_header, load_state, nhwc, seeded_state, smooth_images, write_fixture  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "fcn_resnet50_twin.npz"
IMAGE_SIZE = (45, 61)
NUM_CLASSES = 21  # VOC: background + 20
WEIGHT_SEED = 5
FEATURE_CHANNELS = 8


def main():
    model = fcn_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=True).eval()
    shapes, state = seeded_state(model, WEIGHT_SEED)
    load_state(model, shapes, state)
    # 8 px coarse cells (not the default 16): the 45 x 61 image is small.
    image = smooth_images(np.random.default_rng(WEIGHT_SEED), 1, *IMAGE_SIZE, cell=8)
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    x = (torch.from_numpy(image.transpose(0, 3, 1, 2).astype(np.float32)) / 255.0 - mean) / std
    with torch.no_grad():
        features = model.backbone(x)  # IntermediateLayerGetter: {"out": layer4, "aux": layer3}
        outputs = model(x)
    write_fixture(OUT, {
        **fixture_header(shapes, WEIGHT_SEED), "image": image, "num_classes": np.int64(NUM_CLASSES),
        "layer3": nhwc(features["aux"][:, :FEATURE_CHANNELS]), "layer4": nhwc(features["out"][:, :FEATURE_CHANNELS]),
        "out": nhwc(outputs["out"]), "aux": nhwc(outputs["aux"])})


if __name__ == "__main__":
    main()
