"""Generate tests/fixtures/deform_conv_torchvision.npz: torchvision.ops.deform_conv2d outputs kdet must reproduce.

Needs torch + torchvision, never part of kdet's dependencies; run it with the scratch venv:

    /work/torchvenv/bin/python tests/reference/make_deform_conv_fixtures.py

Stored in torchvision's conventions (NCHW input / offset / mask / output, weight [Cout, Cin / groups, kh, kw]);
tests/test_ops_deform_conv.py converts to kdet's (NHWC, weight [kh, kw, Cin / groups, Cout]). Fixed seed.
"""
from pathlib import Path

import numpy as np
import torch
import torchvision

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "deform_conv_torchvision.npz"

# (input NCHW, kernel, groups, offset_groups, stride, padding, dilation, with mask, offset std, out channels)
CASES = [
    ((2, 4, 9, 8), (3, 3), 1, 1, (1, 1), (1, 1), (1, 1), False, 1.5, 5),   # DCNv1
    ((2, 4, 9, 8), (3, 3), 1, 1, (1, 1), (1, 1), (1, 1), True, 1.5, 5),    # DCNv2
    ((1, 6, 8, 7), (3, 3), 1, 3, (1, 1), (1, 1), (1, 1), True, 2.0, 4),    # offset groups
    ((1, 4, 8, 8), (3, 3), 2, 2, (2, 2), (1, 1), (1, 1), True, 1.0, 6),    # weight groups, stride 2
    ((1, 3, 11, 10), (3, 3), 1, 1, (1, 1), (2, 2), (2, 2), True, 1.5, 3),  # dilation 2
    ((1, 2, 7, 9), (2, 3), 1, 2, (2, 1), (0, 1), (1, 2), False, 1.0, 3),   # rectangular, no row padding
    ((1, 2, 6, 5), (3, 3), 1, 1, (1, 1), (1, 1), (1, 1), True, 6.0, 2),    # samples far outside the map
]


def main():
    rng = np.random.default_rng(20261204)
    data = {"versions": np.array([torch.__version__, torchvision.__version__]), "count": np.int32(len(CASES))}
    for case, (shape, kernel, groups, offset_groups, stride, padding, dilation, with_mask, std, out) in enumerate(
            CASES):
        batch, channels, height, width = shape
        out_h = (height + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
        out_w = (width + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
        taps = kernel[0] * kernel[1]
        x = rng.normal(0, 1, shape).astype(np.float32)
        offset = rng.normal(0, std, (batch, 2 * offset_groups * taps, out_h, out_w)).astype(np.float32)
        weight = rng.normal(0, 1, (out, channels // groups, *kernel)).astype(np.float32)
        bias = rng.normal(0, 1, out).astype(np.float32)
        mask = rng.uniform(0, 1, (batch, offset_groups * taps, out_h, out_w)).astype(np.float32) if with_mask \
            else None
        result = torchvision.ops.deform_conv2d(
            torch.from_numpy(x), torch.from_numpy(offset), torch.from_numpy(weight), torch.from_numpy(bias),
            stride=stride, padding=padding, dilation=dilation,
            mask=None if mask is None else torch.from_numpy(mask))
        data.update({f"case{case}_input": x, f"case{case}_offset": offset, f"case{case}_weight": weight,
                     f"case{case}_bias": bias, f"case{case}_out": result.numpy(),
                     f"case{case}_stride": np.array(stride, np.int32), f"case{case}_padding": np.array(padding, np.int32),
                     f"case{case}_dilation": np.array(dilation, np.int32)})
        if mask is not None:
            data[f"case{case}_mask"] = mask
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(data)} arrays)")


if __name__ == "__main__":
    main()
