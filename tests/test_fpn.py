"""FPN: level shapes for odd input sizes (P3-P7 and P2-P6), torch nearest upsampling, a numpy reference pass."""
import math

import numpy as np
import pytest
import tensorflow as tf

from kdet.backbones.resnet import ResNet
from kdet.necks.fpn import FPN, upsample_nearest_like


def ceil_size(size, level):
    return tuple(math.ceil(s / 2 ** level) for s in size)


def backbone_like(size, channels=3, batch=2):
    """Zero C2-C5 maps at the sizes a torchvision-style backbone gives: ceil(size / 2^level)."""
    return {f"C{level}": tf.zeros([batch, *ceil_size(size, level), channels]) for level in (2, 3, 4, 5)}


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (33, 200), (1, 1), (129, 255)])
@pytest.mark.parametrize("variant", ["p3p7", "p2p6"])
def test_level_shapes_for_odd_input_sizes(size, variant):
    if variant == "p3p7":
        fpn, levels = FPN((3, 4, 5), 8, "p6p7"), (3, 4, 5, 6, 7)
    else:
        fpn, levels = FPN((2, 3, 4, 5), 8, "maxpool"), (2, 3, 4, 5, 6)
    pyramid = fpn(backbone_like(size))
    assert sorted(pyramid) == [f"P{level}" for level in levels]
    for level in levels:
        assert tuple(pyramid[f"P{level}"].shape) == (2, *ceil_size(size, level), 8), level
    assert fpn.output_levels == levels


def test_resnet_fpn_pipeline_on_an_odd_size():
    size = (97, 131)
    pyramid = FPN((3, 4, 5), 8, "p6p7")(ResNet(18, base_width=4)(tf.zeros([1, *size, 3])))
    assert [tuple(pyramid[f"P{level}"].shape[1:3]) for level in (3, 4, 5, 6, 7)] == \
        [ceil_size(size, level) for level in (3, 4, 5, 6, 7)]  # 13x17, 7x9, 4x5, 2x3, 1x2


def nearest_reference(x, size):
    """torch F.interpolate(mode="nearest"): source index floor(i * in / out)."""
    rows = np.floor(np.arange(size[0]) * x.shape[1] / size[0]).astype(int)
    cols = np.floor(np.arange(size[1]) * x.shape[2] / size[1]).astype(int)
    return x[:, rows][:, :, cols]


@pytest.mark.parametrize("small,large", [((13, 17), (25, 33)), ((4, 4), (8, 8)), ((1, 2), (1, 3)),
                                         ((7, 5), (13, 9))])
def test_upsampling_follows_torch_nearest(small, large):
    x = np.arange(np.prod(small) * 2, dtype=np.float32).reshape(1, *small, 2)
    result = upsample_nearest_like(tf.constant(x), tf.zeros([1, *large, 1])).numpy()
    np.testing.assert_array_equal(result, nearest_reference(x, large))


def test_upsampling_differs_from_half_pixel_resize_for_odd_sizes():
    # Why the FPN does not use tf.image.resize: its half-pixel nearest picks other rows for 13 -> 25.
    x = np.arange(13, dtype=np.float32).reshape(1, 13, 1, 1)
    ours = upsample_nearest_like(tf.constant(x), tf.zeros([1, 25, 1, 1])).numpy()
    half_pixel = tf.image.resize(x, (25, 1), method="nearest").numpy()
    assert not np.array_equal(ours, half_pixel)


def conv_reference(x, kernel, bias, stride=1, pad=None):
    """Plain loop-free numpy conv (NHWC, HWIO), symmetric zero padding k // 2 (torch)."""
    k = kernel.shape[0]
    pad = k // 2 if pad is None else pad
    xp = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    out_h = (xp.shape[1] - k) // stride + 1
    out_w = (xp.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]), np.float64)
    for i in range(k):
        for j in range(k):
            patch = xp[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride]
            out += patch @ kernel[i, j]
    return (out + bias).astype(np.float32)


def test_fpn_matches_numpy_reference():
    rng = np.random.default_rng(0)
    features = {"C3": rng.normal(size=(1, 13, 10, 3)).astype(np.float32),
                "C4": rng.normal(size=(1, 7, 5, 4)).astype(np.float32),
                "C5": rng.normal(size=(1, 4, 3, 5)).astype(np.float32)}
    fpn = FPN((3, 4, 5), 6, "p6p7", p6_from="p5")
    fpn({k: tf.constant(v) for k, v in features.items()})  # build
    for layer in fpn.inner_blocks + fpn.layer_blocks + [fpn.p6[-1], fpn.p7[-1]]:
        layer.bias.assign(rng.normal(size=layer.bias.shape).astype(np.float32))
    result = {k: v.numpy() for k, v in fpn({k: tf.constant(v) for k, v in features.items()}).items()}

    def weights(layer):
        return layer.kernel.numpy(), layer.bias.numpy()

    inner = [conv_reference(features[f"C{level}"], *weights(layer))
             for level, layer in zip((3, 4, 5), fpn.inner_blocks)]
    last = inner[2]
    expected = {"P5": conv_reference(last, *weights(fpn.layer_blocks[2]))}
    for i, level in ((1, 4), (0, 3)):
        last = inner[i] + nearest_reference(last, inner[i].shape[1:3])
        expected[f"P{level}"] = conv_reference(last, *weights(fpn.layer_blocks[i]))
    expected["P6"] = conv_reference(expected["P5"], *weights(fpn.p6[-1]), stride=2)
    expected["P7"] = conv_reference(np.maximum(expected["P6"], 0), *weights(fpn.p7[-1]), stride=2)
    for key, value in expected.items():
        np.testing.assert_allclose(result[key], value, atol=1e-4, err_msg=key)


def test_maxpool_level_is_p5_subsampled_and_p6_from_c5():
    rng = np.random.default_rng(1)
    features = {f"C{level}": tf.constant(rng.normal(size=(1, 2 ** (7 - level) + 1, 9, 4)).astype(np.float32))
                for level in (2, 3, 4, 5)}
    pyramid = FPN((2, 3, 4, 5), 4, "maxpool")(features)
    np.testing.assert_array_equal(pyramid["P6"].numpy(), pyramid["P5"].numpy()[:, ::2, ::2])
    inputs = {k: v for k, v in features.items() if k != "C2"}
    c5_fpn, p5_fpn = FPN((3, 4, 5), 6, "p6p7", p6_from="c5"), FPN((3, 4, 5), 6, "p6p7", p6_from="p5")
    c5_fpn(inputs), p5_fpn(inputs)
    assert c5_fpn.p6[-1].kernel.shape[2] == 4 and p5_fpn.p6[-1].kernel.shape[2] == 6  # reads C5 (4) or P5 (6)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="extra_block"):
        FPN(extra_block="p6")
    with pytest.raises(ValueError, match="consecutive"):
        FPN((3, 5))
    with pytest.raises(ValueError, match="p6_from"):
        FPN(p6_from="c4")
