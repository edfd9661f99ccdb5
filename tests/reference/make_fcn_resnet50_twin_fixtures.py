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
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models.segmentation import fcn_resnet50

from kdet.convert.torchvision import seeded_state_dict

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "fcn_resnet50_twin.npz"
IMAGE_SIZE = (45, 61)
NUM_CLASSES = 21  # VOC: background + 20
WEIGHT_SEED = 5
FEATURE_CHANNELS = 8


def smooth_image(rng, height, width):
    coarse = rng.uniform(0, 255, (1, 3, height // 8 + 1, width // 8 + 1)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(height, width), mode="bilinear",
                                         align_corners=False).numpy()
    return np.clip(up + rng.normal(0, 20, up.shape), 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def main():
    model = fcn_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=True).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = seeded_state_dict(shapes, WEIGHT_SEED)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    missing = [k for k in shapes if k not in state and not k.endswith("num_batches_tracked")]
    assert not missing, missing
    image = smooth_image(np.random.default_rng(WEIGHT_SEED), *IMAGE_SIZE)
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    x = (torch.from_numpy(image.transpose(0, 3, 1, 2).astype(np.float32)) / 255.0 - mean) / std
    with torch.no_grad():
        features = model.backbone(x)  # IntermediateLayerGetter: {"out": layer4, "aux": layer3}
        outputs = model(x)
    np.savez_compressed(
        OUT, versions=np.array([torch.__version__, torchvision.__version__]), image=image,
        weight_seed=np.int64(WEIGHT_SEED), num_classes=np.int64(NUM_CLASSES),
        torch_names=np.array(list(shapes)), torch_shapes=np.array([str(list(s)) for s in shapes.values()]),
        layer3=nhwc(features["aux"][:, :FEATURE_CHANNELS]), layer4=nhwc(features["out"][:, :FEATURE_CHANNELS]),
        out=nhwc(outputs["out"]), aux=nhwc(outputs["aux"]))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
