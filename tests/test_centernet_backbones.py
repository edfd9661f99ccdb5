"""CenterNet's DLA-34 and Hourglass-104 trunks: parameter counts against the reference, the depthwise transposed conv
against a numpy transposed conv, odd sizes, a short fit, and builtins-only TFLite.

Reference counts: CenterNet (xingyizhou/CenterNet) pose_dla_dcn.DLASeg("dla34", heads, pretrained=False,
down_ratio=4, final_kernel=1, last_level=5, head_conv=256) and large_hourglass.HourglassNet(heads, 2) with heads
{"hm": 80, "wh": 2, "reg": 2}, counted with torch (sum of p.numel() over parameters; BN running statistics are
buffers, not counted). DLA: 19,675,892 (trunk 19,211,168 of which 638,064 are the DCNs' offset/mask convs, heads
464,724; `pretrained=True` adds the unused 1000-class fc, 513,000 more). Hourglass-104: 191,284,008 (trunk
187,700,352, heads 3,583,656: one set per stack).
"""
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.backbones.dla import DLA34Trunk, DLABlock, Tree
from kdet.backbones.hourglass import Hourglass104Trunk
from kdet.necks.dla_up import DepthwiseTransposedConv2D
from kdet.ops import builtins_only

TWIN = Path(__file__).parent / "fixtures" / "dla34_twin.npz"  # tests/reference/make_dla_twin_fixtures.py

HEADS = {"hm": 80, "wh": 2, "reg": 2}
DLA34_REFERENCE = {"trunk": 19_211_168, "dcn_offsets": 638_064, "dead_projections": 41_728, "heads": 464_724}
HOURGLASS104_REFERENCE = {"trunk": 187_700_352, "heads": 3_583_656}
NARROW_DLA = dict(channels=(4, 8, 8, 16, 16, 32))
NARROW_HOURGLASS = dict(dims=(8, 8, 12, 12, 12, 16), modules=(1, 1, 1, 1, 1, 2), pre_channels=4, cnv_dim=8)


def centernet_heads(in_channels, head_conv):
    """The reference's heads: per output, 3x3 conv (bias) -> ReLU -> 1x1 conv (bias)."""
    return [keras.Sequential([keras.Input((None, None, in_channels)),
                              keras.layers.Conv2D(head_conv, 3, padding="same", activation="relu"),
                              keras.layers.Conv2D(classes, 1)]) for classes in HEADS.values()]


def count(weights):
    return sum(math.prod(w.shape) for w in weights)


def count_trunk(trunk):
    """Trainable parameters of a full-size trunk, its variables created symbolically and never initialised (the
    count needs shapes only; initialising 190 M random values alone takes ~30 s on a loaded 2-core machine)."""
    with keras.StatelessScope(initialize_variables=False):
        outputs = trunk(keras.KerasTensor((1, 128, 128, 3)))
        return count(trunk.trainable_weights), outputs


def test_dla34_parameter_count_matches_centernet():
    dcn, _ = count_trunk(DLA34Trunk())
    plain, _ = count_trunk(DLA34Trunk(deformable=False))
    # The reference builds 1x1 projections in the depth-2 trees of levels 3 and 4 (64 -> 128 and 128 -> 256, conv +
    # BN: 8,192 + 256 + 32,768 + 512) whose output nothing uses; kdet leaves them out.
    assert dcn == DLA34_REFERENCE["trunk"] - DLA34_REFERENCE["dead_projections"] == 19_169_440
    assert dcn - plain == DLA34_REFERENCE["dcn_offsets"]  # 14 DCNs' offset/mask convs: 27 * 9 * Cin + 27 each
    heads = centernet_heads(64, 256)
    assert count([w for h in heads for w in h.trainable_weights]) == DLA34_REFERENCE["heads"]
    # With heads: 19,634,164 here, 19,675,892 in the reference.


def test_hourglass104_parameter_count_matches_centernet():
    trunk_count, outputs = count_trunk(Hourglass104Trunk())
    assert trunk_count == HOURGLASS104_REFERENCE["trunk"]
    assert [tuple(o.shape) for o in outputs] == [(1, 32, 32, 256)] * 2
    heads = [h for _ in range(2) for h in centernet_heads(256, 256)]  # one set per stack, as the reference
    assert count([w for h in heads for w in h.trainable_weights]) == HOURGLASS104_REFERENCE["heads"]
    assert trunk_count + HOURGLASS104_REFERENCE["heads"] == 191_284_008


def transposed_conv_reference(x, kernel, factor):
    """torch ConvTranspose2d(C, C, 2f, stride f, padding f // 2, groups=C) by scattering: x [B, h, w, C], kernel
    [2f, 2f, C] (torch's weight[c, 0] in [ky, kx, c] order) -> [B, h * f, w * f, C]."""
    batch, height, width, channels = x.shape
    size, pad = 2 * factor, factor // 2
    out = np.zeros((batch, height * factor + 2 * size, width * factor + 2 * size, channels), np.float64)
    for i in range(height):
        for j in range(width):
            for ky in range(size):
                for kx in range(size):
                    out[:, size + i * factor - pad + ky, size + j * factor - pad + kx] += x[:, i, j] * kernel[ky, kx]
    return out[:, size:size + height * factor, size:size + width * factor]


def fill_up_weights(size):
    """CenterNet's fill_up_weights for one channel of a [size, size] transposed-conv kernel."""
    f = math.ceil(size / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    return np.array([[(1 - abs(i / f - c)) * (1 - abs(j / f - c)) for j in range(size)] for i in range(size)])


@pytest.mark.parametrize("factor", [2, 4])
def test_depthwise_transposed_conv_is_torchs_grouped_transposed_conv(factor):
    rng = np.random.default_rng(factor)
    x = rng.normal(size=(2, 5, 3, 3)).astype(np.float32)
    layer = DepthwiseTransposedConv2D(factor)
    layer(x)
    kernel = layer.depthwise.kernel.numpy()[:, :, :, 0]
    np.testing.assert_allclose(kernel, np.repeat(fill_up_weights(2 * factor)[:, :, None], 3, axis=2), atol=1e-7)
    torch_kernel = rng.normal(size=kernel.shape).astype(np.float32)
    layer.depthwise.kernel.assign(torch_kernel[::-1, ::-1, :, None])  # Keras holds torch's kernel flipped
    np.testing.assert_allclose(layer(x).numpy(), transposed_conv_reference(x, torch_kernel, factor), atol=1e-5)
    cut = layer(x, reference=tf.zeros([2, 9, 5, 1]))
    np.testing.assert_allclose(cut.numpy(), transposed_conv_reference(x, torch_kernel, factor)[:, :9, :5], atol=1e-5)


def test_trunks_give_stride_four_maps_at_any_size():
    dla = DLA34Trunk(**NARROW_DLA)
    hourglass = Hourglass104Trunk(**NARROW_HOURGLASS)
    assert (dla.out_channels, hourglass.out_channels) == (8, 8)
    for size in [(64, 64), (33, 47), (37, 29)]:
        x = tf.random.normal([2, *size, 3], seed=1)
        expected = (2, math.ceil(size[0] / 4), math.ceil(size[1] / 4), 8)
        features = dla(x)
        assert len(features) == 1 and tuple(features[0].shape) == expected, size
        features = hourglass(x)
        assert [tuple(f.shape) for f in features] == [expected] * 2, size
        # Intermediate supervision: the two stacks' maps are different functions of the image.
        assert not np.allclose(features[0].numpy(), features[1].numpy())


def test_dla_levels_are_ceil_of_their_stride():
    dla = DLA34Trunk(**NARROW_DLA, deformable=False)
    levels = dla.base(tf.zeros([1, 37, 29, 3]))
    assert [tuple(level.shape) for level in levels] == [
        (1, math.ceil(37 / 2 ** i), math.ceil(29 / 2 ** i), c) for i, c in enumerate(NARROW_DLA["channels"])]


def fit_model(trunk, size=(32, 32)):
    """trunk + a 1x1 conv on the last map, MSE to a per-pixel target. Eager steps: tracing and optimising the
    train-step graph of these many small layers takes ~100 s, a dozen eager steps a few seconds."""
    inputs = keras.Input((*size, 3))
    outputs = keras.layers.Conv2D(1, 1, name="head")(trunk(inputs)[-1])
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", run_eagerly=True)
    return model


@pytest.mark.parametrize("name", ["dla", "hourglass"])
def test_narrow_trunk_fits(name):
    trunk = DLA34Trunk(**NARROW_DLA) if name == "dla" else \
        Hourglass104Trunk(dims=(8, 8, 12), modules=(1, 1, 1), pre_channels=4, cnv_dim=8)  # a 2-level hourglass
    model = fit_model(trunk)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    # A learnable target: the mean of the image's 4x4 cell, positive part of the first channel.
    target = np.maximum(images[..., :1].reshape(4, 8, 4, 8, 4, 1).mean(axis=(2, 4)), 0)
    history = model.fit(images, target, batch_size=4, epochs=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(history))
    assert history[-1] < 0.5 * history[0], history
    # Every BN beta starts at 0: all of them moved, so the gradient reaches every block.
    assert all(np.any(w.numpy() != 0) for w in trunk.trainable_weights if "beta" in w.path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dla", "hourglass"])
def test_narrow_trunk_converts_to_builtins_only_tflite(name, tmp_path):
    """Traced under builtins_only() (DeformConv2D's gather twin), saved as kdet.export does (from_saved_model
    freezes the Keras variables), converted with TFLITE_BUILTINS only: LiteRT gives Keras's maps."""
    from ai_edge_litert.interpreter import Interpreter

    trunk = DLA34Trunk(**NARROW_DLA) if name == "dla" else Hourglass104Trunk(**NARROW_HOURGLASS)
    images = np.random.default_rng(1).normal(size=(1, 37, 45, 3)).astype(np.float32)
    expected = [f.numpy() for f in trunk(images)]
    with builtins_only():
        archive = keras.export.ExportArchive()
        archive.track(trunk)
        archive.add_endpoint("serving_default", lambda x: {f"map{i}": f for i, f in enumerate(trunk(x))},
                             input_signature=[tf.TensorSpec(images.shape, tf.float32, name="images")])
        archive.write_out(str(tmp_path / "trunk"), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "trunk"), signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # fails loudly on any non-builtin op
    result = Interpreter(model_content=converter.convert(), num_threads=2).get_signature_runner()(images=images)
    assert len(result) == len(expected)
    for i, value in enumerate(expected):
        np.testing.assert_allclose(result[f"map{i}"], value, atol=1e-4 * max(1.0, np.abs(value).max()))


def load_reference_state(trunk, state):
    """Copy CenterNet's DLASeg trunk parameters (torch names, NCHW / OIHW) into a built DLA34Trunk."""
    used = set()

    def take(name):
        used.add(name)
        return state[name]

    def conv(layer, prefix, bias=False):
        layer.kernel.assign(take(f"{prefix}.weight").transpose(2, 3, 1, 0))
        if bias:
            layer.bias.assign(take(f"{prefix}.bias"))

    def bn(layer, prefix):
        for variable, key in ((layer.gamma, "weight"), (layer.beta, "bias"), (layer.moving_mean, "running_mean"),
                              (layer.moving_variance, "running_var")):
            variable.assign(take(f"{prefix}.{key}"))

    def tree(layer, prefix):
        if isinstance(layer, DLABlock):
            conv(layer.conv1[-1], f"{prefix}.conv1"), bn(layer.bn1, f"{prefix}.bn1")
            conv(layer.conv2[-1], f"{prefix}.conv2"), bn(layer.bn2, f"{prefix}.bn2")
            return
        tree(layer.tree1, f"{prefix}.tree1"), tree(layer.tree2, f"{prefix}.tree2")
        if layer.levels == 1:
            conv(layer.root.conv, f"{prefix}.root.conv"), bn(layer.root.bn, f"{prefix}.root.bn")
        if layer.project is not None:
            conv(layer.project[0], f"{prefix}.project.0"), bn(layer.project[1], f"{prefix}.project.1")

    def ida(layer, prefix):
        for k, (proj, up, node) in enumerate(zip(layer.proj, layer.up, layer.node)):
            for block, name in ((proj, f"proj_{k + 1}"), (node, f"node_{k + 1}")):
                dcn = block.conv
                dcn.kernel.assign(take(f"{prefix}.{name}.conv.weight").transpose(2, 3, 1, 0))
                dcn.bias.assign(take(f"{prefix}.{name}.conv.bias"))
                dcn.offset_kernel.assign(take(f"{prefix}.{name}.conv.conv_offset_mask.weight").transpose(2, 3, 1, 0))
                dcn.offset_bias.assign(take(f"{prefix}.{name}.conv.conv_offset_mask.bias"))
                bn(block.bn, f"{prefix}.{name}.actf.0")
            # torch [C, 1, K, K] -> Keras [K, K, C, 1], flipped (see DepthwiseTransposedConv2D)
            up.depthwise.kernel.assign(take(f"{prefix}.up_{k + 1}.weight").transpose(2, 3, 0, 1)[::-1, ::-1])

    base = trunk.base
    conv(base.base_layer[1], "base.base_layer.0"), bn(base.base_layer[2], "base.base_layer.1")
    for level, name in ((base.level0, "base.level0"), (base.level1, "base.level1")):
        convs = [layer for layer in level if isinstance(layer, keras.layers.Conv2D)]
        bns = [layer for layer in level if isinstance(layer, keras.layers.BatchNormalization)]
        for i, (c, b) in enumerate(zip(convs, bns)):
            conv(c, f"{name}.{3 * i}"), bn(b, f"{name}.{3 * i + 1}")
    for i, level in enumerate(base.trees):
        assert isinstance(level, Tree)
        tree(level, f"base.level{i + 2}")
    for i, layer in enumerate(trunk.dla_up.ida):
        ida(layer, f"dla_up.ida_{i}")
    ida(trunk.ida_up, "ida_up")
    return set(state) - used


def test_dla34_trunk_equals_centernet_reference():
    """A narrow DLA-34 trunk with random weights, BN statistics and DCN offsets gives the reference's output."""
    data = np.load(TWIN)
    state = {key[len("state/"):]: data[key] for key in data.files if key.startswith("state/")}
    trunk = DLA34Trunk(channels=(4, 4, 8, 8, 16, 16))
    trunk(data["input"])
    unused = load_reference_state(trunk, state)
    # Only the projection the reference builds but never uses is left over (a depth-2 tree with a width change:
    # level 4 here, 8 -> 16).
    assert unused == {f"base.level4.project.{key}" for key in
                      ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var")}
    output = trunk(data["input"])[0].numpy()
    assert np.abs(data["output"]).mean() > 0.01
    np.testing.assert_allclose(output, data["output"], atol=2e-5 * max(1.0, np.abs(data["output"]).max()))


@pytest.mark.parametrize("name", ["dla", "hourglass"])
def test_trunk_keras_round_trip(name, tmp_path):
    trunk = DLA34Trunk(**NARROW_DLA) if name == "dla" else Hourglass104Trunk(**NARROW_HOURGLASS)
    x = np.random.default_rng(2).normal(size=(1, 35, 41, 3)).astype(np.float32)
    expected = [f.numpy() for f in trunk(x)]
    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, trunk(inputs)).save(tmp_path / "trunk.keras")
    loaded = keras.saving.load_model(tmp_path / "trunk.keras")
    outputs = loaded(x)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]  # Keras unwraps a one-output list
    assert len(outputs) == len(expected)
    for value, reference in zip(outputs, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(value), reference, atol=1e-5)
