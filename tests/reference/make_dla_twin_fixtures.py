"""Generate tests/fixtures/dla34_twin.npz: a narrow CenterNet DLA-34 trunk (DLA + DLAUp + IDAUp, DCNv2 with random
non-zero offsets) run by the reference code, for tests/test_centernet_backbones.py to reproduce.

The reference is xingyizhou/CenterNet's src/lib/models/networks/pose_dla_dcn.py; it is not part of kdet. Copy it
into a scratch directory (git show HEAD:src/lib/models/networks/pose_dla_dcn.py > /tmp/ref/pose_dla_dcn.py) and run
with the scratch venv (torch + torchvision, never kdet dependencies):

    /work/torchvenv/bin/python tests/reference/make_dla_twin_fixtures.py /tmp/ref

Its CUDA DCNv2 module is replaced by the same parameters (weight, bias, conv_offset_mask) over
torchvision.ops.deform_conv2d with DCNv2's channel split (o1, o2, mask chunks; offset = cat(o1, o2); mask sigmoid).
Stored: the input and output (NHWC) and every parameter / BN statistic under its torch name. Fixed seed.
"""
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "dla34_twin.npz"
LEVELS, CHANNELS = [1, 1, 1, 2, 2, 1], [4, 4, 8, 8, 16, 16]


class DCN(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation=1, deformable_groups=1):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, *kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.conv_offset_mask = nn.Conv2d(in_channels, deformable_groups * 3 * kernel_size[0] * kernel_size[1],
                                          kernel_size, stride, padding, bias=True)
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def forward(self, x):
        o1, o2, mask = torch.chunk(self.conv_offset_mask(x), 3, dim=1)
        return torchvision.ops.deform_conv2d(x, torch.cat((o1, o2), dim=1), self.weight, self.bias, self.stride,
                                             self.padding, self.dilation, mask=torch.sigmoid(mask))


def load_reference(directory):
    package = types.ModuleType("DCNv2")
    module = types.ModuleType("DCNv2.dcn_v2")
    module.DCN = DCN
    sys.modules.update({"DCNv2": package, "DCNv2.dcn_v2": module})
    source = (Path(directory) / "pose_dla_dcn.py").read_text().replace("from .DCNv2.dcn_v2", "from DCNv2.dcn_v2")
    namespace = {"__name__": "pose_dla_dcn"}
    exec(compile(source, "pose_dla_dcn.py", "exec"), namespace)
    return namespace


class Trunk(nn.Module):
    """DLASeg without heads (first_level 2, last_level 5), narrow."""

    def __init__(self, ref):
        super().__init__()
        self.base = ref["DLA"](LEVELS, CHANNELS, block=ref["BasicBlock"])
        self.dla_up = ref["DLAUp"](2, CHANNELS[2:], [1, 2, 4, 8])
        self.ida_up = ref["IDAUp"](CHANNELS[2], CHANNELS[2:5], [1, 2, 4])

    def forward(self, x):
        x = self.dla_up(self.base(x))
        y = [x[i].clone() for i in range(3)]
        self.ida_up(y, 0, 3)
        return y[-1]


def main():
    torch.manual_seed(20261204)
    trunk = Trunk(load_reference(sys.argv[1]))
    with torch.no_grad():
        for name, value in trunk.named_parameters():
            scale = 0.05 if "conv_offset_mask" in name else 0.4
            value.copy_(torch.randn_like(value) * scale + (1.0 if name.endswith("bn.weight") else 0.0))
        for name, value in trunk.named_buffers():
            if name.endswith("running_mean"):
                value.copy_(torch.randn_like(value) * 0.1)
            elif name.endswith("running_var"):
                value.copy_(torch.rand_like(value) + 0.5)
    trunk.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        y = trunk(x)
    state = {k: v.numpy() for k, v in trunk.state_dict().items() if not k.endswith("num_batches_tracked")}
    np.savez_compressed(OUT, input=x.permute(0, 2, 3, 1).numpy(), output=y.permute(0, 2, 3, 1).numpy(),
                        versions=np.array([torch.__version__, torchvision.__version__]),
                        **{f"state/{k}": v for k, v in state.items()})
    print(f"wrote {OUT}: output {tuple(y.shape)}, |y| mean {y.abs().mean():.3f}, {len(state)} tensors")


if __name__ == "__main__":
    main()
