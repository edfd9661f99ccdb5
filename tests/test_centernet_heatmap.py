"""`kdet predict --heatmap`: the class-max heatmap of a model with heatmaps (CenterNet) drawn over the image beside
the box picture; its colours, its cells mapped onto the image's pixels, and the refusal of models without one."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kdet.errors import KdetError
from kdet.inference.predict import heatmap_in_image, predict_images
from kdet.inference.visualize import draw_heatmap, heat_colors
from kdet.models.centernet import CenterNet
from tests.testing import make_tiny_detector


def test_heat_colours_and_blending():
    np.testing.assert_array_equal(heat_colors([0.0, 1 / 3, 0.5, 2 / 3, 1.0, 1.5]),
                                  [[0, 0, 0], [255, 0, 0], [255, 128, 0], [255, 255, 0], [255, 255, 255],
                                   [255, 255, 255]])
    image = np.full((2, 3, 3), 100, np.uint8)
    heat = np.array([[0.0, 0.5, 1.0], [0.25, 0.75, 0.0]])
    drawn = draw_heatmap(image, heat, alpha=0.7)
    # pixel = (1 - 0.7 h) * image + 0.7 h * colour(h)
    expected = (1 - 0.7 * heat[..., None]) * 100 + 0.7 * heat[..., None] * heat_colors(heat)
    np.testing.assert_array_equal(drawn, np.round(expected).astype(np.uint8))
    assert (drawn[0, 0] == 100).all() and (drawn[1, 2] == 100).all()      # no heat: the image as it was
    with pytest.raises(KdetError, match="heatmap"):
        draw_heatmap(image, heat[:, :2])


class _PlantedHeatmaps:
    """A stand-in with a fixed [1, h, w, 2] heatmap at stride 4 (what heatmap_in_image reads of a model)."""
    stride, image_size = 4, (20, 24)

    def __init__(self):
        self.seen = None
        self.maps = np.zeros((1, 5, 6, 2), np.float32)
        self.maps[0, 1, 2, 0], self.maps[0, 1, 2, 1] = 0.3, 0.9   # the class max is taken
        self.maps[0, 4, 5, 1] = 0.6                               # the bottom-right cell

    def heatmaps(self, images):
        self.seen = np.asarray(images).shape
        return self.maps


def test_heatmap_cells_cover_the_image_pixels_they_came_from():
    """A 40 x 48 image is stretched to the model's 20 x 24: image pixel (y, x) is input pixel (y / 2, x / 2), in
    heatmap cell (y // 8, x // 8)."""
    model = _PlantedHeatmaps()
    heat = heatmap_in_image(model, np.zeros((40, 48, 3), np.uint8))
    assert model.seen == (1, 20, 24, 3) and heat.shape == (40, 48)
    rows, cols = np.meshgrid(np.arange(40) // 8, np.arange(48) // 8, indexing="ij")
    np.testing.assert_array_equal(heat, model.maps[0].max(axis=-1)[rows, cols])
    assert heat[8:16, 16:24].min() == heat[8:16, 16:24].max() == np.float32(0.9)
    assert heat[32:, 40:].min() == np.float32(0.6) and heat[:8].max() == 0


def test_predict_writes_the_centernet_heatmap_beside_the_boxes(tmp_path):
    keras.utils.set_random_seed(0)
    model = CenterNet(3, image_size=(64, 64), max_detections=5, depth=18, base_width=8, deconv_filters=(16, 16, 16),
                      head_conv=8, deformable=False)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(tmp_path / "cells.png")
    image = np.asarray(Image.open(tmp_path / "cells.png"))
    [result] = predict_images(model, [tmp_path / "cells.png"], tmp_path / "out", score_threshold=0.0, heatmap=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cells.json", "cells.png", "cells_heatmap.png"]
    heat = heatmap_in_image(model, image)
    # the model's heatmaps = the sigmoid of its heatmap logits on the stretched input, max over classes
    resized = tf.image.resize(image[None].astype(np.float32), (64, 64)).numpy()
    logits = model(resized)["heatmap"].numpy()[0]
    np.testing.assert_allclose(heat[0, 0], 1 / (1 + np.exp(-logits[0, 0].max())), rtol=1e-5)
    np.testing.assert_allclose(heat[47, 79], 1 / (1 + np.exp(-logits[15, 15].max())), rtol=1e-5)
    picture = np.asarray(Image.open(result["heatmap_picture"]))
    np.testing.assert_array_equal(picture, draw_heatmap(image, heat))


def test_models_without_heatmaps_refuse_the_flag(tmp_path, capsys):
    from kdet.cli import main
    model, images = make_tiny_detector(batch=1)
    with pytest.raises(KdetError, match="--heatmap: TinyGridDetector has no heatmaps"):
        predict_images(model, images, tmp_path / "out", heatmap=True)
    assert not (tmp_path / "out").exists()                        # refused before any picture is written
    model.save(tmp_path / "grid.keras")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", "--checkpoint", str(tmp_path / "grid.keras"), str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "out"), "--heatmap"]) == 2
    assert "TinyGridDetector has no heatmaps" in capsys.readouterr().err


def test_cli_heatmap_flag_with_a_centernet_file(tmp_path, capsys):
    from kdet.cli import main
    keras.utils.set_random_seed(1)
    model = CenterNet(3, image_size=(64, 64), max_detections=5, depth=18, base_width=8, deconv_filters=(16, 16, 16),
                      head_conv=8, deformable=False, class_names=["a", "b", "c"])
    model(np.zeros((1, 64, 64, 3), np.float32))
    model.save(tmp_path / "cn.keras")
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    assert main(["predict", "--checkpoint", str(tmp_path / "cn.keras"), str(tmp_path / "grey.png"), "--out",
                 str(tmp_path / "out"), "--heatmap", "--no-save-json"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grey.png", "grey_heatmap.png"]
    assert np.asarray(Image.open(tmp_path / "out" / "grey_heatmap.png")).shape == (40, 60, 3)
    capsys.readouterr()
