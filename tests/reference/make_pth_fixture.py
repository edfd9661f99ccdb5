"""tests/fixtures/tiny_state.pth + .npz: a small torch.save state dict (float32, a non-contiguous view, an int64
buffer, a bfloat16 and a scalar) and the same arrays as numpy, for kdet.convert.pth's torch-free reader.

    /work/torchvenv/bin/python tests/reference/make_pth_fixture.py
"""
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "fixtures"

torch.manual_seed(0)
conv = torch.nn.Conv2d(3, 4, 3)
state = OrderedDict(conv.state_dict())
state["transposed"] = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # stride (1, 4): not contiguous
state["bn.num_batches_tracked"] = torch.tensor(7)
state["half"] = torch.linspace(-2, 2, 5, dtype=torch.bfloat16)
state["offset_view"] = torch.arange(10, dtype=torch.float64)[3:7]
torch.save({"model": state, "epoch": 3}, OUT / "tiny_state.pth")
np.savez(OUT / "tiny_state.npz", **{k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
                                     for k, v in state.items()})
print("wrote", OUT / "tiny_state.pth")

# A tiny RetinaNet's state dict in torchvision's names (the layout `kdet convert torchvision` reads), saved by torch:
# what the CLI test converts. Needs kdet importable (PYTHONPATH=.) next to torch.
from kdet.convert.torchvision import seeded_state_dict, torch_shapes  # noqa: E402
from kdet.models import RetinaNet  # noqa: E402

TINY_RETINANET = dict(num_classes=3, image_size=(64, 64), depth=18, base_width=4, fpn_channels=8, head_convs=1,
                      max_detections=10)
seeded = seeded_state_dict(torch_shapes(RetinaNet(**TINY_RETINANET)), seed=3)
torch.save(OrderedDict((k, torch.from_numpy(v)) for k, v in seeded.items()), OUT / "tiny_retinanet.pth")
print("wrote", OUT / "tiny_retinanet.pth", len(seeded), "tensors")
