"""The one training recipe (kdet.training.recipe / run): exact steps per epoch, user callbacks, the time budget,
the read report, class names in the saved model, and what a model declares through `data_needs`."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdet
from kdet.config import load_config
from kdet.training import recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSLOC = os.path.join(REPO, "configs/classloc_shapes.yaml")
TINY = ["data.options.num_images=40", "model.image_size=[48, 48]", "data.options.image_size=[48, 48]",
        "model.args.widths=[8, 16, 16, 16]", "model.args.hidden=16", "train.batch_size=8", "train.eval_every=0",
        "data.max_eval_images=16"]


def _config(tmp_path, *overrides):
    return load_config(CLASSLOC, TINY + [f"train.output_dir={tmp_path}", *overrides])


class _Steps(keras.callbacks.Callback):
    """A user callback: counts the training batches of each epoch."""

    def __init__(self):
        super().__init__()
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1


# 40 training images in batches of 8 = 5 batches per pass over the data.
@pytest.mark.parametrize("steps_per_epoch, expected", [(3, 3), (7, 7), (None, 5)])
def test_every_epoch_runs_the_steps_it_was_asked_for(tmp_path, steps_per_epoch, expected):
    counter = _Steps()
    config = _config(tmp_path, "train.epochs=4", f"train.steps_per_epoch={steps_per_epoch or 'null'}")
    result = kdet.train(config, callbacks=[counter], verbose=0)
    assert counter.per_epoch == [expected] * 4  # the user's callback ran, and no epoch ran out of data
    assert [row["steps"] for row in result["history"]] == [expected] * 4
    assert int(result["model"].optimizer.iterations.numpy()) == 4 * expected
    assert result["epochs"] == 4


def test_the_saved_model_carries_its_class_names_and_loads_with_keras(tmp_path):
    result = kdet.train(_config(tmp_path, "train.epochs=1", "train.steps_per_epoch=2"), verbose=0)
    model = keras.saving.load_model(result["model_file"])
    assert model.class_names == ["circle", "square", "triangle"]
    images = np.zeros([1, 48, 48, 3], np.uint8)
    np.testing.assert_allclose(model.predict(images, verbose=0)["boxes"],
                               result["model"].predict(images, verbose=0)["boxes"], atol=1e-5)
    assert "images skipped" in result["report"]


def test_a_time_budget_ends_training_early(tmp_path):
    config = _config(tmp_path, "train.epochs=50", "train.steps_per_epoch=5", "train.budget_seconds=0.5",
                     "train.budget_clock=wall")
    result = kdet.train(config, verbose=0)
    assert result["budget_exhausted"]
    assert 1 <= result["epochs"] < 50


def test_the_budget_counts_training_only():
    """Validation and the work between epochs (evaluation, checkpoints) do not spend the budget."""
    import time
    from types import SimpleNamespace

    from kdet.training.callbacks import TimeBudget
    budget = TimeBudget(0.3, clock="wall")
    budget.set_model(SimpleNamespace(stop_training=False))
    budget.on_train_begin()
    budget.on_epoch_begin(0)
    budget.on_train_batch_end(0)                   # the first step (tracing) starts the clock
    budget.on_test_begin()
    time.sleep(0.4)                                # validation
    budget.on_test_end()
    budget.on_epoch_end(0)
    time.sleep(0.4)                                # evaluation, checkpoint
    budget.on_epoch_begin(1)
    budget.on_train_batch_end(0)
    assert not budget.exhausted and budget.used() < 0.1
    time.sleep(0.35)                               # training
    budget.on_train_batch_end(1)
    assert budget.exhausted and budget.model.stop_training


def test_to_keras_gives_the_layout_a_user_pipeline_yields():
    """kdet's own batches reach the model as (images, {"boxes", "labels"}) in the model's box format."""
    model = kdet.models.ClassLocModel(num_classes=3, image_size=(48, 64), widths=(8, 8), hidden=8,
                                      bounding_box_format="xyxy")
    batch = {"images": tf.zeros([2, 48, 64, 3]),
             "bounding_boxes": {"boxes": tf.constant([[[1.0, 2.0, 11.0, 22.0]], [[0.0, 0.0, 0.0, 0.0]]]),
                                "labels": tf.constant([[2], [-1]])}}
    x, y = recipe.to_keras(batch, model)
    assert x.shape == (2, 48, 64, 3)
    np.testing.assert_allclose(y["boxes"][0, 0], [2.0, 1.0, 22.0, 11.0])  # yxyx -> xyxy
    np.testing.assert_array_equal(y["labels"], [[2], [-1]])


def test_history_survives_in_the_run_directory(tmp_path):
    kdet.train(_config(tmp_path, "train.epochs=2", "train.steps_per_epoch=2"), verbose=0)
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(np.isfinite(row["loss"]) and row["seconds"] > 0 for row in rows)
    assert (tmp_path / "model.keras").is_file() and (tmp_path / "last.weights.h5").is_file()


@pytest.mark.slow
def test_a_yolov2_config_trains_multiscale_through_kdet_train(tmp_path, monkeypatch):
    """The model declares multi-scale (data_needs); `kdet.train` applies it: the train step sees several sizes."""
    from kdet.models import MODELS
    from kdet.models.yolo_v2 import YOLOv2
    seen = []

    class Recording(YOLOv2):
        def loss_from_targets(self, y, y_pred, images, training=True):
            if not training:  # the validation pass
                return super().loss_from_targets(y, y_pred, images, training)
            record = tf.py_function(lambda size: seen.append(int(size)) or size, [tf.shape(images)[1]], tf.int32)
            with tf.control_dependencies([record]):
                return super().loss_from_targets(y, y_pred, images, training)

    monkeypatch.setitem(MODELS, "yolo_v2", Recording)
    config = load_config(os.path.join(REPO, "configs/yolov2_shapes.yaml"), [
        "data.options.num_images=16", "data.max_eval_images=8", "train.batch_size=2", "train.epochs=1",
        "train.steps_per_epoch=24", "model.args.multiscale_every=2", f"train.output_dir={tmp_path}"])
    result = kdet.train(config, verbose=0)
    assert result["model"].data_needs.multiscale_sizes == (96, 128, 160)
    assert len(seen) == 24 and set(seen) <= {96, 128, 160} and len(set(seen)) >= 2, seen
    assert all(seen[i] == seen[i + 1] for i in range(0, 24, 2))  # a new size every 2 batches
