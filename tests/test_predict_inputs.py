"""`kdet predict` conveniences: files / folders / globs / arrays, collision-free names, JPEG for JPEG, JSON only,
scaled drawing, one summary line per image, strict JSON, and a .keras model without a config."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from kdet.errors import KdetError
from kdet.inference.inputs import image_items, image_paths, output_names
from kdet.inference.predict import predict_images, summary_line
from kdet.inference.visualize import draw_detections, draw_instance_masks, scaled_sizes
from kdet.jsonio import dumps, write_json
from tests.testing import make_tiny_detector


def _write(path, size=(40, 50), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(path, format=fmt)
    return path


def test_files_folders_and_globs_expand_once_in_order(tmp_path):
    a, b = _write(tmp_path / "a" / "x.jpg", fmt="JPEG"), _write(tmp_path / "b" / "x.png")
    c = _write(tmp_path / "a" / "y.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    found = image_paths([tmp_path / "a", str(tmp_path / "**" / "*.png")])
    assert [p.resolve() for p in found] == [a.resolve(), c.resolve(), b.resolve()]  # y.png only once
    with pytest.raises(KdetError, match="no file matches this pattern"):
        image_paths([str(tmp_path / "*.bmp")])
    with pytest.raises(KdetError, match="missing.jpg: no such image file or folder"):
        image_paths([tmp_path / "missing.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdetError, match="folder has no image files"):
        image_paths([tmp_path / "empty"])


def test_output_names_never_collide(tmp_path):
    assert output_names([tmp_path / "a" / "x.jpg", tmp_path / "b" / "y.jpg"]) == ["x", "y"]
    assert output_names([tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg"]) == ["a__x", "b__x"]
    assert output_names([tmp_path / "x.jpg", tmp_path / "x.png"]) == ["x_jpg", "x_png"]


def test_arrays_and_tensors_are_items():
    batch = np.zeros([2, 8, 9, 3], np.uint8)
    assert [name for name, _ in image_items(batch)] == ["image_0", "image_1"]
    assert image_items(batch[0])[0][1].shape == (8, 9, 3)
    with pytest.raises(KdetError, match=r"expected \[H, W, 3\]"):
        image_items(np.zeros([8, 9], np.uint8))


def test_predict_writes_jpeg_for_jpeg_json_only_and_arrays_without_files(tmp_path):
    model, images = make_tiny_detector(batch=2)
    jpg, png = _write(tmp_path / "in" / "p.jpg", (64, 80), "JPEG"), _write(tmp_path / "in" / "q.png", (70, 90))
    results = predict_images(model, [tmp_path / "in"], tmp_path / "out", ["a", "b", "c"], score_threshold=0.0)
    assert [r["picture"].rsplit(".", 1)[1] for r in results] == ["jpg", "png"]
    assert Image.open(results[0]["picture"]).format == "JPEG"
    stored = json.loads((tmp_path / "out" / "p.json").read_text())
    assert stored["boxes"] == results[0]["boxes"] and stored["names"] == results[0]["names"]
    assert summary_line(results[0]).startswith(f"{jpg}: {len(results[0]['names'])} object")
    only_json = predict_images(model, [png], tmp_path / "json_only", score_threshold=0.0, save_images=False)
    assert sorted(p.name for p in (tmp_path / "json_only").iterdir()) == ["q.json"]
    assert "picture" not in only_json[0]
    from_arrays = predict_images(model, images, None, score_threshold=0.0)
    assert len(from_arrays) == 2 and not any("json" in r for r in from_arrays)
    # the same image as a file (PNG, lossless) and as an array gives the same boxes
    _write(tmp_path / "same.png", (64, 80))
    array = np.asarray(Image.open(tmp_path / "same.png"))
    assert predict_images(model, array, None, score_threshold=0.0)[0]["boxes"] == \
        predict_images(model, [tmp_path / "same.png"], None, score_threshold=0.0)[0]["boxes"]


def test_drawing_scales_with_the_image_and_masks_are_drawn():
    assert scaled_sizes(480, 640) == (2, 11)
    assert scaled_sizes(2000, 3000)[0] > scaled_sizes(480, 640)[0]
    image = np.zeros([200, 300, 3], np.uint8)
    wide = draw_detections(np.zeros([1500, 2000, 3], np.uint8), [[100, 100, 900, 900]], [0])
    assert (wide[100:106, 500].sum(axis=-1) > 0).all() and wide[106, 500].sum() == 0  # 6 px at 2000 px wide
    mask = np.zeros([1, 200, 300], np.uint8)
    mask[0, 50:100, 60:120] = 1
    drawn = draw_instance_masks(image, mask, [1])
    assert drawn[75, 90].sum() > 0 and drawn[10, 10].sum() == 0
    assert (drawn[50, 90] >= drawn[75, 90]).all() and drawn[50, 90].sum() > drawn[75, 90].sum()  # outline


def test_json_is_strict(tmp_path):
    text = dumps({"ap": float("nan"), "x": [np.float32(1.5), float("inf")], "n": np.int64(3)})
    assert json.loads(text) == {"ap": None, "x": [1.5, None], "n": 3}
    path = write_json({"v": math.nan}, tmp_path / "r.json")
    assert path.read_text().strip().endswith("}") and "NaN" not in path.read_text()
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_predicts_a_folder_with_a_keras_file_and_no_config(tmp_path, capsys):
    from kdet.cli import main
    model, _ = make_tiny_detector(batch=2, class_names=["cat", "dog", "cow"])
    model.save(tmp_path / "m.keras")
    _write(tmp_path / "in" / "a.png", (64, 80))
    _write(tmp_path / "in" / "b.jpg", (50, 70), "JPEG")
    assert main(["predict", "--checkpoint", str(tmp_path / "m.keras"), str(tmp_path / "in"), "--out",
                 str(tmp_path / "out"), "--score-threshold", "0", "--no-save-json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(str(tmp_path / "in" / "a.png") + ": ") and " ms" in lines[0]
    assert lines[-1] == f"2 images; pictures written to {tmp_path / 'out'}/"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.jpg"]
    assert main(["predict", str(tmp_path / "in")]) == 2
    assert "predict needs a config (--config) or a model file" in capsys.readouterr().err
