"""kdet FCNResNet vs torchvision fcn_resnet50 on the same seeded weights (fixture from tests/reference)."""
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from kdet.backbones.resnet_dilated import DilatedResNet
from kdet.convert.torchvision import load_state_dict, seeded_state_dict, torch_shapes
from kdet.models import MODELS
from kdet.convert.torchvision import fcn_resnet_table
from kdet.models.fcn_resnet import FCNResNet

FIXTURE = Path(__file__).parent / "fixtures" / "fcn_resnet50_twin.npz"


@pytest.fixture(scope="module")
def twin():
    data = np.load(FIXTURE)
    height, width = data["image"].shape[1:3]
    model = FCNResNet(int(data["num_classes"]) - 1, (height, width), depth=50, aux_loss=True)
    shapes = torch_shapes(model, fcn_resnet_table)
    load_state_dict(model, seeded_state_dict(shapes, int(data["weight_seed"])), table=fcn_resnet_table)
    return model, data


def test_table_covers_torchvisions_state_dict_exactly(twin):
    model, data = twin
    expected = {n: s for n, s in zip(data["torch_names"], data["torch_shapes"]) if not n.endswith("batches_tracked")}
    shapes = torch_shapes(model, fcn_resnet_table)
    assert set(shapes) == set(expected)
    assert all(str(list(shapes[n])) == expected[n] for n in shapes)


def test_outputs_equal_torchvision(twin):
    model, data = twin
    features = model.backbone(model.normalize(data["image"]))
    for name, key in (("layer3", "C4"), ("layer4", "C5")):
        ours = features[key].numpy()[..., :data[name].shape[-1]]
        assert ours.shape == data[name].shape  # output stride 8: ceil(45 / 8) x ceil(61 / 8)
        np.testing.assert_allclose(ours, data[name], rtol=1e-4, atol=1e-4 * np.abs(data[name]).max())
    outputs = model(data["image"])
    for key, name in (("logits", "out"), ("aux_logits", "aux")):
        scale = np.abs(data[name]).max()
        np.testing.assert_allclose(outputs[key].numpy(), data[name], atol=1e-4 * scale)
    assert (model.predict_on_batch(data["image"])["masks"] == data["out"].argmax(-1)).mean() > 0.999


def test_dilated_resnet_strides_and_registration():
    backbone = DilatedResNet(50, base_width=8)
    features = backbone(np.zeros((1, 45, 61, 3), np.float32))
    assert [tuple(features[f"C{i}"].shape[1:3]) for i in (2, 3, 4, 5)] == [(12, 16), (6, 8), (6, 8), (6, 8)]
    dilations = [[block.conv2[-1].dilation_rate[0] for block in stage] for stage in backbone.stages[2:]]
    assert dilations == [[1, 2, 2, 2, 2, 2], [2, 4, 4]]  # torchvision: first block keeps the previous dilation
    with pytest.raises(ValueError, match="False before True"):
        DilatedResNet(50, (True, False, True))
    assert MODELS["fcn_resnet"] is FCNResNet


def test_small_fcn_resnet_round_trips_its_config_and_adds_half_the_aux_loss():
    import keras
    keras.utils.set_random_seed(0)
    model = FCNResNet(2, (32, 40), base_width=8)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 40, 3)).astype(np.uint8)
    out = model(images)
    assert out["logits"].shape == out["aux_logits"].shape == (2, 32, 40, 3)
    assert FCNResNet.from_config(model.get_config()).get_config() == model.get_config()
    masks = np.random.default_rng(1).integers(0, 3, (2, 32, 40, 1)).astype(np.int32)
    total = float(model.compute_loss(x=tf.constant(images), y=masks, y_pred=out))  # a tensor: image_hw needs one
    parts = {m.name: float(m.result()) for m in model.metrics if m.name in ("pixel_loss", "aux_loss")}
    assert total == pytest.approx(parts["pixel_loss"] + 0.5 * parts["aux_loss"], rel=1e-5)
