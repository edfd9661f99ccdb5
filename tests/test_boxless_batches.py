"""Issue 17 item 1: a batch in which no image has a box trains as all-background, for each detector family.

The batch comes from kdet's own pipeline (boxes [B, 0, 4], as `padded_batch` makes them when no image has one) and
goes through the model's Keras train step: the loss is finite, and so are the weights after the update. RetinaNet's
focal loss, YOLOv2's no-object loss and Faster R-CNN's sampled negatives still push the scores towards background
(a positive loss); SSD (here SSDLite, the same loss) normalises by the number of matched boxes and, with none, has
nothing to learn from (loss 0, as in the paper).
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.data.pipeline import make_tf_dataset
from kdet.data.records import DetectionDataset, Record
from kdet.models import FasterRCNN, RetinaNet, SSDLite, TinyYOLOv2
from kdet.training import recipe

SIZE = (64, 64)
FAMILIES = {
    "retinanet": (lambda: RetinaNet(3, image_size=SIZE, max_detections=20, depth=18, base_width=8, fpn_channels=16,
                                    head_convs=2), "positive"),
    "ssd": (lambda: SSDLite(3, image_size=SIZE, alpha=0.35, extra_widths=(32, 16, 16, 16)), "zero"),
    "yolov2": (lambda: TinyYOLOv2(num_classes=3, image_size=SIZE, width_multiplier=0.0625), "positive"),
    "faster_rcnn": (lambda: FasterRCNN(3, image_size=SIZE, backbone="resnet_fpn", depth=18, base_width=8,
                                       fpn_channels=16, anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
                                       rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=64,
                                       rpn_batch_size_per_image=64, representation_size=64,
                                       box_batch_size_per_image=64, max_detections=20), "positive"),
}


def boxless_batch(size):
    rng = np.random.default_rng(0)
    records = [Record(i, *size, np.zeros((0, 4)), [], image=rng.integers(0, 255, (*size, 3), dtype=np.uint8))
               for i in range(2)]
    return next(iter(make_tf_dataset(DetectionDataset(records, ["a", "b", "c"]), size, 2, training=True)))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_batch_without_boxes_trains_as_all_background(family):
    make, expected = FAMILIES[family]
    keras.utils.set_random_seed(0)
    model = make()
    batch = boxless_batch(tuple(model.image_size))
    assert batch["bounding_boxes"]["boxes"].shape == (2, 0, 4)
    x, y = recipe.to_keras(batch, model)
    model(x)
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    loss = float(model.compute_loss(x, y, model(x, training=True), training=True))
    assert np.isfinite(loss) and (loss > 0 if expected == "positive" else loss == 0.0), loss
    history = model.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0)  # the graph train step
    assert np.isfinite(history.history["loss"][0])
    assert all(np.isfinite(np.asarray(w)).all() for w in model.trainable_weights)
