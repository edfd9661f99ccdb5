"""No retrace after the first training step (issue 18, item 5): the train step of a model fit through the recipe is
traced once per input signature, also after `train_on_batch`.

Keras 3 (TF backend, no distribution strategy) builds the optimizer inside the first train step, and tf.function
then traces the step twice; `Detector.make_train_function` builds it first. Traces are counted by a Python side
effect in `Detector.compute_loss`, which runs once per trace of the train (and test) step and never per step.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

import kdet
from kdet.models import base
from kdet.models.yolo_v2 import TinyYOLOv2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["model.image_size=[64, 64]", "data.options.image_size=[64, 64]", "data.options.num_images=12",
         "data.max_eval_images=4", "train.batch_size=2", "train.epochs=2", "train.steps_per_epoch=2",
         "train.eval_every=0"]
MODELS = {
    "retinanet": ("retinanet_shapes.yaml", ["model.args.fpn_channels=16", "model.args.base_width=8"]),
    "faster_rcnn": ("faster_rcnn_vgg16_shapes.yaml",
                    ["model.args.backbone=resnet_fpn", "model.args.depth=18", "model.args.base_width=8",
                     "model.args.fpn_channels=16", "model.args.roi_pooling=null",
                     "model.args.anchor_sizes=[[16], [32], [64], [128], [256]]", "model.args.representation_size=32",
                     "model.args.rpn_pre_nms_top_n_train=200", "model.args.rpn_post_nms_top_n_train=50",
                     "model.args.box_batch_size_per_image=16"]),
    "yolov2": ("yolov2_tiny_shapes.yaml", ["model.args.multiscale_sizes=[]"]),
}


@pytest.fixture
def traces(monkeypatch):
    """[(training, signature)] of every trace of a train / test step; signature = shapes and dtypes of x and y."""
    seen = []
    compute_loss = base.Detector.compute_loss

    def counting(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        signature = tf.nest.map_structure(lambda t: (t.dtype.name, tuple(t.shape)), (x, y))
        seen.append((training, str(signature)))
        return compute_loss(self, x, y, y_pred, sample_weight, training)

    monkeypatch.setattr(base.Detector, "compute_loss", counting)
    return seen


@pytest.mark.parametrize("name", list(MODELS))
def test_fit_through_the_recipe_traces_the_train_step_once(tmp_path, traces, name):
    config, overrides = MODELS[name]
    result = kdet.train(os.path.join(REPO, "configs", config),
                        overrides=SMALL + overrides + [f"train.output_dir={tmp_path}"], verbose=0)
    assert int(result["model"].optimizer.iterations.numpy()) == 4   # 2 epochs x 2 steps ran
    train = [signature for training, signature in traces if training]
    assert len(train) == 1, f"{name}: the train step was traced {len(train)} times: {train}"
    assert len([1 for training, _ in traces if not training]) <= 1  # the validation step: once at most


def test_fit_after_train_on_batch_traces_only_the_new_signature(traces):
    """train_on_batch traces the step for its eager batch; fit traces it once more for the dataset's (relaxed)
    signature, and neither twice (a Keras user's own compile and data, no recipe)."""
    model = TinyYOLOv2(3, image_size=(64, 64), width_multiplier=0.25, multiscale_sizes=())
    model.compile(optimizer="adam")
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    targets = {"boxes": np.array([[[8, 8, 40, 40]], [[16, 4, 60, 30]]], np.float32),
               "labels": np.array([[0], [2]], np.int32)}
    model.train_on_batch(images, targets)
    model.train_on_batch(images, targets)
    assert len(traces) == 1
    dataset = tf.data.Dataset.from_tensor_slices((images, targets)).repeat(3).batch(2)  # batch dimension None
    model.fit(dataset, epochs=2, verbose=0)
    train = [signature for training, signature in traces if training]
    assert len(train) == 2 and train[0] != train[1], train
    assert int(model.optimizer.iterations.numpy()) == 2 + 2 * 3
