"""ResNet / ResNeXt backbone: torch-equal padding and sizes, BasicBlock and ResNeXt-50 32x4d numerics against
torchvision (fixtures), freezing."""
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.backbones.resnet import RESNEXT, ResNet
from kdet.layers.grouped_conv import GroupedConv2D
from kdet.models.faster_rcnn import FasterRCNN
from kdet.models.retinanet import RetinaNet
from kdet.convert.torchvision import load_state_dict, resnet_entries, seeded_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "retinanet_twin.npz"
RESNEXT_FIXTURE = Path(__file__).parent / "fixtures" / "resnext50_twin.npz"


@pytest.mark.parametrize("depth,size", [(18, (33, 50)), (50, (97, 131))])
def test_feature_sizes_are_ceil_of_stride(depth, size):
    resnet = ResNet(depth, base_width=4)
    features = resnet(tf.zeros([1, *size, 3]))
    expansion = 4 if depth >= 50 else 1
    for level in (2, 3, 4, 5):
        expected = (1, math.ceil(size[0] / 2 ** level), math.ceil(size[1] / 2 ** level),
                    4 * 2 ** (level - 2) * expansion)
        assert tuple(features[f"C{level}"].shape) == expected
        assert resnet.out_channels[f"C{level}"] == expected[-1]


def test_block_counts_match_torchvision():
    # torchvision resnet50 has 3 + 4 + 6 + 3 bottlenecks, resnet101 3 + 4 + 23 + 3, resnet18 2 x 4 basic blocks.
    assert [len(s) for s in ResNet(50, base_width=4).stages] == [3, 4, 6, 3]
    assert [len(s) for s in ResNet(101, base_width=4).stages] == [3, 4, 23, 3]
    assert [len(s) for s in ResNet(18, base_width=4).stages] == [2, 2, 2, 2]


def test_stride_two_conv_pads_symmetrically_like_torch():
    # A 3x3 stride-2 conv of ones over an all-ones image counts the real pixels under each window: with torch's
    # symmetric padding the top-left output sees 4 pixels and the bottom-right of a 6x6 image sees 9 (TF "same"
    # would pad only bottom/right and give 9 top-left, 6 bottom-right).
    resnet = ResNet(18, base_width=1)
    resnet(tf.zeros([1, 32, 32, 3]))
    block = resnet.stages[1][0]
    pad, conv = block.conv1
    conv.kernel.assign(np.ones(conv.kernel.shape, np.float32))
    out = conv(pad(tf.ones([1, 6, 6, 1]))).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(out, [[4, 6, 6], [6, 9, 9], [6, 9, 9]])


def test_builtins_shortcut_is_one_strided_conv_with_the_same_features(depth=18, size=(33, 41)):
    """Under builtins_only (the TFLite trace) a downsampling shortcut is one stride-2 1x1 conv, not a stride-2
    slice (which XNNPACK does not run) + conv, with the default path's features, odd sizes included (Bottleneck
    blocks share the shortcut code)."""
    from kdet.ops.mode import builtins_only
    resnet = ResNet(depth, base_width=4)
    images = tf.constant(np.random.default_rng(3).normal(0, 1, (2, *size, 3)), tf.float32)
    resnet(images)
    default = tf.function(lambda x: resnet(x))
    with builtins_only():
        twin = tf.function(lambda x: resnet(x))
        graph = twin.get_concrete_function(images).graph
    strided_pointwise = [op for op in graph.get_operations() if op.type == "Conv2D" and op.get_attr("strides") ==
                         [1, 2, 2, 1] and tuple(op.inputs[1].shape[:2]) == (1, 1)]
    assert len(strided_pointwise) == 3  # the shortcuts of layer2, layer3, layer4
    assert "StridedSlice" not in {op.type for op in graph.get_operations()}
    default, twin = default(images), twin(images)
    for key in default:
        np.testing.assert_allclose(twin[key].numpy(), default[key].numpy(), rtol=1e-5, atol=1e-4)


def test_batch_norm_epsilon_is_torch_default():
    resnet = ResNet(18, base_width=2)
    resnet(tf.zeros([1, 32, 32, 3]))
    assert resnet.bn1.epsilon == 1e-5 and resnet.stages[0][0].bn2.epsilon == 1e-5


def test_basic_block_resnet18_matches_torchvision_fixture():
    with np.load(FIXTURE) as data:
        fixture = dict(data)
    resnet = ResNet(18)
    images = tf.constant(fixture["images"], tf.float32)
    resnet(images)
    entries = resnet_entries(resnet, prefix="")
    state = seeded_state_dict({e.torch_name: e.torch_shape() for e in entries}, int(fixture["weight_seed"]))
    load_state_dict(resnet, state, table=entries)
    features = resnet((images / 255.0 - 0.5) / 0.25)
    for level in (2, 3, 4, 5):
        expected = fixture[f"resnet18_C{level}"]
        result = features[f"C{level}"].numpy()[..., :expected.shape[-1]]
        assert np.max(np.abs(result - expected)) <= 1e-4 * np.max(np.abs(expected)), f"C{level}"


def test_resnext50_32x4d_matches_torchvision_fixture():
    with np.load(RESNEXT_FIXTURE) as data:
        fixture = dict(data)
    resnet = ResNet(**RESNEXT["resnext50_32x4d"])
    images = tf.constant(fixture["images"], tf.float32)
    resnet(images)
    entries = resnet_entries(resnet, prefix="")
    # The same parameter names and shapes as torchvision's resnext50_32x4d (whose fc.* is the classifier).
    expected = {str(n): s for n, s in zip(fixture["torch_names"], fixture["torch_shapes"])
                if not str(n).startswith("fc.") and not str(n).endswith("num_batches_tracked")}
    assert {e.torch_name: str(list(e.torch_shape())) for e in entries} == expected
    state = seeded_state_dict({e.torch_name: e.torch_shape() for e in entries}, int(fixture["weight_seed"]))
    load_state_dict(resnet, state, table=entries)
    features = resnet((images / 255.0 - 0.5) / 0.25)
    for level in (2, 3, 4, 5):
        expected = fixture[f"C{level}"]
        result = features[f"C{level}"].numpy()[..., :expected.shape[-1]]
        assert result.shape == expected.shape, level
        assert np.max(np.abs(result - expected)) <= 1e-4 * np.max(np.abs(expected)), f"C{level}"


def test_resnext_widths_follow_torchvision():
    # torchvision Bottleneck width = int(planes * width_per_group / 64) * groups: ResNeXt-50 32x4d layer1 is
    # 64 -> 128 (grouped 3x3, 32 groups of 4) -> 256; ResNeXt-101 32x8d layer4 is 512 * 8 / 64 * 32 = 2048 wide.
    # (Built from the constructor only: the 88M-parameter ResNeXt-101 is not materialised.)
    r50 = ResNet(**RESNEXT["resnext50_32x4d"])
    block = r50.stages[0][0]
    assert isinstance(block.conv2[-1], GroupedConv2D)
    assert (block.conv1[-1].filters, block.conv2[-1].filters, block.conv2[-1].groups) == (128, 128, 32)
    assert block.conv3[-1].filters == 256
    r101 = ResNet(**RESNEXT["resnext101_32x8d"])
    assert [len(s) for s in r101.stages] == [3, 4, 23, 3]
    assert (r101.stages[3][0].conv2[-1].filters, r101.stages[3][0].conv2[-1].groups) == (2048, 32)
    assert r101.out_channels == {"C2": 256, "C3": 512, "C4": 1024, "C5": 2048}
    config = ResNet.from_config(r50.get_config()).get_config()
    assert config["groups"] == 32 and config["width_per_group"] == 4
    with pytest.raises(ValueError, match="ResNeXt needs depth 50 or 101"):
        ResNet(18, groups=32, width_per_group=4)
    with pytest.raises(ValueError, match="bottleneck width"):
        ResNet(50, base_width=4, groups=32, width_per_group=4)  # int(4 * 4 / 64) * 32 = 0


@pytest.mark.parametrize("cls", [FasterRCNN, RetinaNet])
def test_detectors_build_resnext_and_save_its_arguments(cls):
    model = cls(3, image_size=(64, 64), depth=50, base_width=8, groups=4, width_per_group=16, fpn_channels=16)
    conv2 = model.backbone.stages[0][0].conv2[-1]  # int(8 * 16 / 64) * 4 = 8 channels in 4 groups
    assert isinstance(conv2, GroupedConv2D) and (conv2.filters, conv2.groups) == (8, 4)
    restored = cls.from_config(model.get_config())
    assert (restored.backbone.groups, restored.backbone.width_per_group) == (4, 16)


def test_frozen_stages_and_frozen_batch_norm():
    resnet = ResNet(18, base_width=4, frozen_stages=2)
    x = tf.random.stateless_normal([2, 16, 16, 3], seed=[1, 2]) * 3.0 + 1.0
    resnet(x)
    assert not resnet.conv1[-1].trainable and not resnet.bn1.trainable
    assert all(not block.trainable for block in resnet.stages[0])
    assert all(block.trainable for block in resnet.stages[1])
    # ResNet-18: 20 conv kernels + 20 BN (gamma, beta) = 60 trainable; the stem (3) and layer1 (2 x 6) are frozen
    assert len(resnet.trainable_weights) == 60 - 15

    frozen_bn = ResNet(18, base_width=4, frozen_bn=True)
    # Frozen BN uses the running statistics even in training mode: training and inference agree.
    np.testing.assert_allclose(frozen_bn(x, training=True)["C5"].numpy(), frozen_bn(x, training=False)["C5"].numpy(),
                               atol=1e-6)
    difference = resnet(x, training=True)["C5"].numpy() - resnet(x, training=False)["C5"].numpy()
    assert np.max(np.abs(difference)) > 1e-3  # stages 3-5 of `resnet` still use batch statistics
    assert all(isinstance(w, keras.Variable) for w in frozen_bn.trainable_weights)
    assert not any("gamma" in w.path or "beta" in w.path for w in frozen_bn.trainable_weights)


def test_bad_depth_is_refused():
    with pytest.raises(ValueError, match="depth"):
        ResNet(42)
    with pytest.raises(ValueError, match="frozen_stages"):
        ResNet(18, frozen_stages=6)
