"""TensorBoard (issue 17 item 9): per-step loss and learning rate, each epoch's logs with the evaluation figures, and
predicted images, read back from the event files of a tiny run."""
import glob
import os
from collections import defaultdict

import numpy as np
import tensorflow as tf

import kdet
from kdet.config import load_config
from kdet.training.tensorboard import COLORS, draw_boxes, overlay_mask, prediction_pictures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["data.options.num_images=24", "model.image_size=[48, 48]", "data.options.image_size=[48, 48]",
        "model.args.widths=[8, 16, 16, 16]", "model.args.hidden=16", "train.batch_size=8", "data.max_eval_images=8",
        "train.epochs=2", "train.steps_per_epoch=3", "train.eval_every=1", "train.log_every_steps=2",
        "train.log_images=2", "train.learning_rate=0.002"]


def _events(log_dir):
    """{tag: [(step, value or [decoded images])]} of every event file under log_dir."""
    found = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True)):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if value.metadata.plugin_data.plugin_name == "images":
                    found[value.tag].append((event.step, [tf.io.decode_png(png).numpy() for png in tensor[2:]]))
                else:
                    found[value.tag].append((event.step, float(tensor)))
    return found


def test_a_run_logs_steps_epochs_and_predicted_images(tmp_path):
    config = load_config(os.path.join(REPO, "configs/classloc_shapes.yaml"), TINY + [f"train.output_dir={tmp_path}"])
    result = kdet.train(config, verbose=0)
    events = _events(tmp_path / "logs")
    # 2 epochs x 3 steps, logged every 2 steps: steps 2, 4, 6
    assert [step for step, _ in events["train/loss"]] == [2, 4, 6]
    assert all(np.isfinite(v) and v > 0 for _, v in events["train/loss"])
    assert [round(v, 6) for _, v in events["train/learning_rate"]] == [0.002] * 3
    history = result["history"]
    for name in ("loss", "val_AP", "val_AP50"):
        assert [step for step, _ in events[f"epoch/{name}"]] == [1, 2], name
        np.testing.assert_allclose([v for _, v in events[f"epoch/{name}"]], [row[name] for row in history],
                                   rtol=1e-6, err_msg=name)
    pictures = events["predictions"]
    assert [step for step, _ in pictures] == [1, 2] and all(len(images) == 2 for _, images in pictures)
    assert pictures[0][1][0].shape == (48, 48, 3)
    # the last epoch's pictures are the saved model's predictions on the first validation images
    from kdet.build import load_split
    from kdet.training.recipe import _sample_images
    model = result["model"]
    images = _sample_images(model, config, load_split(config, "val"))
    expected = np.round(prediction_pictures(model, images) * 255).astype(np.uint8)
    np.testing.assert_allclose(np.stack(pictures[-1][1]).astype(int), expected.astype(int), atol=1)
    assert not np.array_equal(expected, np.round(np.asarray(images) / 255 * 255).astype(np.uint8))  # boxes drawn


def test_draw_boxes_outlines_in_the_class_colour():
    image = np.zeros((20, 30, 3), np.float32)
    drawn = draw_boxes(image, [[2, 3, 12, 23]], [1])  # yxyx pixels
    outline = np.zeros((20, 30), bool)
    outline[2, 3:23] = outline[11, 3:23] = outline[2:12, 3] = outline[2:12, 22] = True
    colored = np.all(np.isclose(drawn, COLORS[1]), axis=-1)
    assert colored[outline].mean() > 0.9 and not colored[~outline].any()
    assert np.array_equal(draw_boxes(image, np.zeros((0, 4)), []), image)


def test_overlay_mask_blends_class_colours():
    image = np.full((2, 2, 3), 0.2, np.float32)
    mask = np.array([[0, 1], [3, 0]])
    out = overlay_mask(image, mask, alpha=0.5)
    np.testing.assert_allclose(out[0, 0], 0.2)
    np.testing.assert_allclose(out[0, 1], 0.5 * 0.2 + 0.5 * COLORS[0])
    np.testing.assert_allclose(out[1, 0], 0.5 * 0.2 + 0.5 * COLORS[2])
