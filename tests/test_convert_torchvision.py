"""kdet.convert.torchvision: state dict checks, layouts, seeded weights, and the retinanet_resnet50_fpn twin.

The twin fixture comes from tests/reference/make_retinanet_twin_fixtures.py (torch needed there, not here).
"""
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.backbones.resnet import ResNet
from kdet.convert.torchvision import (Entry, box_delta_permutation, load_state_dict, resnet_entries,
                                      seeded_state_dict, torch_shapes)
from kdet.errors import ConfigError, KdetError
from kdet.models.retinanet import RetinaNet
from tests.testing import check_dense_twin_outputs

FIXTURE = Path(__file__).parent / "fixtures" / "retinanet_twin.npz"


@pytest.fixture(scope="module")
def resnet():
    model = ResNet(18, base_width=2)
    model(tf.zeros([1, 32, 32, 3]))
    return model


def test_layouts():
    conv = keras.layers.Conv2D(5, (3, 2), use_bias=False)
    conv.build((None, 8, 8, 4))
    oihw = np.arange(5 * 4 * 3 * 2, dtype=np.float32).reshape(5, 4, 3, 2)
    entry = Entry("w", conv.kernel, "conv")
    assert entry.torch_shape() == (5, 4, 3, 2)
    hwio = entry.to_keras(oihw)
    assert hwio[1, 0, 2, 4] == oihw[4, 2, 1, 0]
    depthwise = keras.layers.DepthwiseConv2D(3)
    depthwise.build((None, 8, 8, 6))
    assert Entry("w", depthwise.kernel, "depthwise").torch_shape() == (6, 1, 3, 3)
    dense = keras.layers.Dense(3)
    dense.build((None, 7))
    assert Entry("w", dense.kernel, "linear").torch_shape() == (3, 7)
    # torchvision (dx, dy, dw, dh) per anchor -> kdet (dy, dx, dh, dw)
    assert box_delta_permutation(2) == (1, 0, 3, 2, 5, 4, 7, 6)


def test_conv_transpose_layout_gives_torch_conv_transpose():
    """torch ConvTranspose2d (Cin, Cout, 2, 2) stride 2 (Mask R-CNN's conv5_mask): out[2i + a, 2j + b, o] =
    sum_c x[i, j, c] w[c, o, a, b] + bias[o], written in numpy; the converted Keras Conv2DTranspose gives it."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 3, 5, 4)).astype(np.float32)
    weight = rng.normal(size=(4, 6, 2, 2)).astype(np.float32)
    bias = rng.normal(size=6).astype(np.float32)
    layer = keras.layers.Conv2DTranspose(6, 2, strides=2)
    layer.build(x.shape)
    kernel, bias_entry = Entry("w", layer.kernel, "conv_transpose"), Entry("b", layer.bias)
    assert kernel.torch_shape() == (4, 6, 2, 2)
    layer.kernel.assign(kernel.to_keras(weight))
    layer.bias.assign(bias_entry.to_keras(bias))
    expected = np.zeros((1, 6, 10, 6), np.float32) + bias
    for a in range(2):
        for b in range(2):
            expected[0, a::2, b::2] += np.einsum("ijc,co->ijo", x[0], weight[:, :, a, b])
    np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-5)


def test_missing_unexpected_and_mismatched_names_are_listed(resnet):
    entries = resnet_entries(resnet, prefix="")
    state = seeded_state_dict({e.torch_name: e.torch_shape() for e in entries}, seed=1)
    before = [w.numpy().copy() for w in resnet.weights]
    broken = dict(state)
    del broken["layer2.0.conv1.weight"]
    broken["fc.weight"] = np.zeros((10, 16), np.float32)
    broken["layer1.0.bn1.num_batches_tracked"] = np.array(3)  # never needed, never reported
    broken["conv1.weight"] = np.zeros((2, 3, 5, 5), np.float32)
    with pytest.raises(KdetError) as error:
        load_state_dict(resnet, broken, table=entries)
    message = str(error.value)
    assert "missing (1): layer2.0.conv1.weight" in message
    assert "unexpected (1): fc.weight" in message
    assert "conv1.weight: state (2, 3, 5, 5) != expected (2, 3, 7, 7)" in message
    assert "num_batches_tracked" not in message
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, resnet.weights)), "nothing may change"


def test_npz_round_trip_and_values_land_in_place(resnet, tmp_path):
    entries = resnet_entries(resnet, prefix="")
    state = seeded_state_dict({e.torch_name: e.torch_shape() for e in entries}, seed=2)
    np.savez(tmp_path / "state.npz", **state)
    assert load_state_dict(resnet, tmp_path / "state.npz", table=entries) == len(entries)
    np.testing.assert_array_equal(resnet.conv1[-1].kernel.numpy(), state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(resnet.stages[1][0].downsample_bn.moving_variance.numpy(),
                                  state["layer2.0.downsample.1.running_var"])
    with pytest.raises(ConfigError, match="no such state dict"):
        load_state_dict(resnet, tmp_path / "absent.pth", table=entries)


def test_seeded_weights_do_not_depend_on_name_order():
    shapes = {"a.weight": (4, 3, 3, 3), "a.bias": (4,), "bn.running_var": (4,), "bn.weight": (4,)}
    forward = seeded_state_dict(shapes, seed=5)
    backward = seeded_state_dict(dict(reversed(list(shapes.items()))), seed=5)
    assert all(np.array_equal(forward[k], backward[k]) for k in shapes)
    assert not np.array_equal(forward["a.weight"], seeded_state_dict(shapes, seed=6)["a.weight"])
    assert forward["bn.running_var"].min() >= 0.5
    np.testing.assert_allclose(forward["a.weight"].std(), np.sqrt(1 / 27), rtol=0.5)


def relative_error(result, expected):
    return float(np.max(np.abs(result - expected)) / np.max(np.abs(expected)))


def test_retinanet_resnet50_fpn_twin():
    with np.load(FIXTURE) as data:
        fixture = dict(data)
    height, width = fixture["images"].shape[1:3]
    model = RetinaNet(int(fixture["num_classes"]), image_size=(height, width), max_detections=100)
    shapes = torch_shapes(model)
    expected_shapes = {name: tuple(eval(shape)) for name, shape in zip(fixture["torch_names"], fixture["torch_shapes"])
                       if not name.endswith("num_batches_tracked")}
    assert shapes == expected_shapes, "kdet's RetinaNet no longer has torchvision's structure"
    state = seeded_state_dict(shapes, int(fixture["weight_seed"]))
    state["head.classification_head.cls_logits.weight"] *= fixture["cls_weight_scale"]
    state["head.classification_head.cls_logits.bias"][:] = fixture["cls_bias"]
    load_state_dict(model, state)

    images = tf.constant(fixture["images"])
    features = model.backbone(model.normalize(images))
    pyramid = model.fpn(features)
    for name, value in list(features.items())[1:] + list(pyramid.items()):
        expected = fixture[name]
        assert relative_error(value.numpy()[..., :expected.shape[-1]], expected) <= 1e-3, name
    check_dense_twin_outputs(model, images, fixture)  # anchors exact


def test_faster_rcnn_backbone_weights(tmp_path):
    """kdet.convert.backbone_weights: a .weights.h5 round trip, and torchvision ImageNet state dicts (ResNet with its
    fc.*, VGG-16 with its classifier.*, which a narrow box head cannot take) land in the backbone."""
    from kdet.convert.backbone_weights import backbone_table, load_backbone_weights, save_backbone_weights
    from kdet.models.faster_rcnn import FasterRCNN

    small = dict(image_size=(32, 32), representation_size=8, max_detections=5)
    resnet = dict(backbone="resnet_fpn", depth=18, base_width=4, fpn_channels=8, **small)
    keras.utils.set_random_seed(0)
    source = FasterRCNN(2, **resnet)
    path = save_backbone_weights(source, tmp_path / "backbone.weights.h5")
    target = FasterRCNN(2, **resnet)
    assert load_backbone_weights(target, path) is None
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(source.backbone.weights, target.backbone.weights))
    with pytest.raises(ConfigError, match="cannot load backbone weights"):
        load_backbone_weights(FasterRCNN(2, **{**resnet, "depth": 34}), path)

    shapes = {e.torch_name: e.torch_shape() for e in backbone_table(target)}
    state = dict(seeded_state_dict(shapes, seed=3), **{"fc.weight": np.zeros((1000, 32), np.float32),
                                                       "fc.bias": np.zeros(1000, np.float32)})
    np.savez(tmp_path / "resnet18.npz", **state)
    assert load_backbone_weights(target, tmp_path / "resnet18.npz") == len(shapes)
    np.testing.assert_array_equal(target.backbone.conv1[-1].kernel.numpy(), state["conv1.weight"].transpose(2, 3, 1, 0))

    vgg = FasterRCNN(2, backbone="vgg16", vgg_widths=(4, 4, 8, 8, 8), anchor_sizes=((8, 16, 32),), **small)
    shapes = {e.torch_name: e.torch_shape() for e in backbone_table(vgg)}
    assert sorted(shapes)[-2:] == ["features.7.bias", "features.7.weight"] and "features.28.weight" in shapes
    state = dict(seeded_state_dict(shapes, seed=4), **{"classifier.0.weight": np.zeros((16, 8 * 7 * 7), np.float32)})
    assert load_backbone_weights(vgg, state) == len(shapes)
    conv5_3 = vgg.backbone.stages[4][0][2][0]
    np.testing.assert_array_equal(conv5_3.kernel.numpy(), state["features.28.weight"].transpose(2, 3, 1, 0))
