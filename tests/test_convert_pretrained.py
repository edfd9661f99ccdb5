"""Pretrained torchvision weights in one step: a .pth read without torch, `kdet convert torchvision` writing a
.keras model with class names that `kdet predict` and `kdet export` take without a config."""
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from kdet.cli import main
from kdet.convert import pretrained
from kdet.convert.pth import read_pth
from kdet.errors import DataError
from kdet.models import RetinaNet

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_RETINANET = dict(num_classes=3, image_size=(64, 64), depth=18, base_width=4, fpn_channels=8, head_convs=1,
                      max_detections=10)  # as in tests/reference/make_pth_fixture.py


def test_pth_reader_equals_torch_for_views_dtypes_and_checkpoints():
    state = read_pth(FIXTURES / "tiny_state.pth")
    assert state["epoch"] == 3
    with np.load(FIXTURES / "tiny_state.npz") as reference:
        assert sorted(state["model"]) == sorted(reference.files)
        for name in reference.files:
            assert state["model"][name].dtype == reference[name].dtype, name
            np.testing.assert_array_equal(state["model"][name], reference[name], err_msg=name)


def test_pth_reader_refuses_code_and_non_torch_files(tmp_path):
    class Evil:
        def __reduce__(self):
            import os
            return os.system, ("echo owned",)

    buffer = io.BytesIO()
    pickle.dump({"weight": Evil()}, buffer)
    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as archive:
        archive.writestr("evil/data.pkl", buffer.getvalue())
    with pytest.raises(DataError, match=r"evil.pth: holds (posix|os)\.system, which a state dict does not need"):
        read_pth(tmp_path / "evil.pth")
    (tmp_path / "old.pth").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DataError, match="old.pth: not a torch.save zip archive"):
        read_pth(tmp_path / "old.pth")


def test_coco_names_and_ids_are_cocos(shared_data):
    names = yaml.safe_load((shared_data / "coco8" / "coco8" / "coco8.yaml").read_text())["names"]
    assert list(pretrained.COCO_NAMES) == [names[i] for i in range(80)]
    assert len(pretrained.COCO_CATEGORY_IDS) == 80 and pretrained.COCO_CATEGORY_IDS[-1] == 90
    twin = pretrained.build_twin("fasterrcnn_resnet50_fpn")
    assert twin.class_names == list(pretrained.COCO_NAMES) and twin.label_ids == pretrained.COCO_CATEGORY_IDS


def test_convert_then_predict_and_export_without_a_config(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(pretrained.ARCHITECTURES, "tiny_retinanet",
                        lambda: RetinaNet(class_names=["cat", "dog", "cow"], **TINY_RETINANET))
    out = tmp_path / "tiny.keras"
    assert main(["convert", "torchvision", "--arch", "tiny_retinanet", "--weights",
                 str(FIXTURES / "tiny_retinanet.pth"), "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"tiny_retinanet: 124 tensors from {FIXTURES / 'tiny_retinanet.pth'}" \
                                              f" -> {out}"
    import keras
    model = keras.saving.load_model(out)
    assert model.class_names == ["cat", "dog", "cow"]
    # the weights are torch's: the fixture's first conv, OIHW -> HWIO
    state = read_pth(FIXTURES / "tiny_retinanet.pth")
    from kdet.convert.torchvision import table_for
    conv1 = next(e.variable for e in table_for(model) if e.torch_name == "backbone.body.conv1.weight")
    np.testing.assert_array_equal(conv1.numpy(), state["backbone.body.conv1.weight"].transpose(2, 3, 1, 0))

    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", "--checkpoint", str(out), str(tmp_path / "a.png"), "--out", str(tmp_path / "pred"),
                 "--score-threshold", "0"]) == 0
    result = json.loads((tmp_path / "pred" / "a.json").read_text())
    assert result["names"] and set(result["names"]) <= {"cat", "dog", "cow"}
    assert main(["export", "--checkpoint", str(out), "--format", "saved_model", "--out", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "tiny" / "1" / "saved_model.pb").is_file()
    assert main(["convert", "torchvision", "--arch", "resnet9000", "--weights", "x.pth", "--output", "y.keras"]) == 2
    assert "--arch 'resnet9000': choose one of" in capsys.readouterr().err


def test_mask_rcnn_twin_has_torchvisions_state_dict_layout():
    """maskrcnn_resnet50_fpn: 307 tensors (BN statistics included, num_batches_tracked not), 91 box and mask columns,
    the key set checked against torchvision 0.29's builder when this was written."""
    from kdet.convert.torchvision import torch_shapes
    shapes = {name: tuple(shape) for name, shape in
              torch_shapes(pretrained.build_twin("maskrcnn_resnet50_fpn")).items()}
    assert len(shapes) == 307
    assert shapes["roi_heads.mask_predictor.mask_fcn_logits.weight"] == (91, 256, 1, 1)
    assert shapes["roi_heads.mask_predictor.conv5_mask.weight"] == (256, 256, 2, 2)
    assert shapes["roi_heads.box_predictor.cls_score.weight"] == (91, 1024)
    assert shapes["roi_heads.mask_head.3.0.weight"] == (256, 256, 3, 3)
