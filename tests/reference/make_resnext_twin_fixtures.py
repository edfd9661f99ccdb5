"""Generate tests/fixtures/resnext50_twin.npz: torchvision's resnext50_32x4d trunk on seeded weights.

Needs torch + torchvision (never a kdet dependency); run with the scratch venv's python from the repo root:

    PYTHONPATH=. /work/torchvenv/bin/python tests/reference/make_resnext_twin_fixtures.py

No weights are stored: both sides build them with kdet.convert.torchvision.seeded_state_dict(shapes, WEIGHT_SEED).
The fixture holds one small image of an odd size (ceil-size features through every stride-2 grouped conv),
torchvision's state dict names / shapes and a channel slice of C2-C5 (layer1-layer4), NHWC, for the input
normalised as (x / 255 - 0.5) / 0.25.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.models import resnext50_32x4d
from torchvision.models._utils import IntermediateLayerGetter

sys.path.insert(0, str(Path(__file__).resolve().parent))  # twin_common, when run as tests/reference/make_X.py
from twin_common import fixture_header, load_state, seeded_state, smooth_images, write_fixture  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "resnext50_twin.npz"
IMAGE_SIZE = (61, 83)
WEIGHT_SEED = 11
FEATURE_CHANNELS = 8


def main():
    model = resnext50_32x4d(weights=None).eval()
    shapes, state = seeded_state(model, WEIGHT_SEED)
    load_state(model, shapes, state)
    image = smooth_images(np.random.default_rng(WEIGHT_SEED), 1, *IMAGE_SIZE, cell=8)
    x = (torch.from_numpy(image.transpose(0, 3, 1, 2).astype(np.float32)) / 255.0 - 0.5) / 0.25
    body = IntermediateLayerGetter(model, {f"layer{i}": f"C{i + 1}" for i in range(1, 5)})
    data = {**fixture_header(shapes, WEIGHT_SEED), "images": image, "feature_channels": np.int64(FEATURE_CHANNELS)}
    with torch.no_grad():
        for name, feature in body(x).items():
            data[name] = feature[:, :FEATURE_CHANNELS].numpy().transpose(0, 2, 3, 1)
            print(name, tuple(feature.shape), f"max |x| {float(feature.abs().max()):.3g}")
    write_fixture(OUT, data)


if __name__ == "__main__":
    main()
