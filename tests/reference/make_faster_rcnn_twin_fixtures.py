"""Generate tests/fixtures/faster_rcnn_twin.npz: torchvision's fasterrcnn_resnet50_fpn (v1) on seeded weights.

Needs torch + torchvision (never a kdet dependency). Run it in the scratch venv that sees the system packages:

    python3 -m venv --system-site-packages /tmp/tvenv
    /tmp/tvenv/bin/pip install "torch==2.14.1" "torchvision==0.29.1"
    /tmp/tvenv/bin/python tests/reference/make_faster_rcnn_twin_fixtures.py

No weights are stored: both sides build them with kdet.convert.torchvision.seeded_state_dict(shapes, WEIGHT_SEED)
(numpy only); then the class output of the box predictor is rescaled (CLS_WEIGHT_SCALE, CLS_BIAS, BACKGROUND_BIAS,
stored in the fixture) so that random-weight class scores spread above the 0.05 threshold and the per-class NMS has work to do.
The fixture holds the input images and, in kdet's conventions (NHWC, yxyx, deltas ty, tx, th, tw): a channel slice of
C2-C5 and P2-P6, the RPN outputs and anchors at every ANCHOR_STRIDE-th anchor, all proposals, the box head's
outputs for a subsample of torchvision's proposals (kdet's test feeds it the same proposals), and the detections.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.detection.rpn import concat_box_prediction_layers

sys.path.insert(0, str(Path(__file__).resolve().parent))  # twin_common, when run as tests/reference/make_X.py
from twin_common import (anchor_subsample, detection_arrays, feature_slices, fixture_header,  # noqa: E402
                         load_state, seeded_state, smooth_images, torch_inputs, write_fixture, yxyx)

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "faster_rcnn_twin.npz"
IMAGE_SIZE = (160, 224)  # multiples of 32: torchvision's batch padding adds nothing, so both see the same pixels
NUM_CLASSES = 91         # torchvision's COCO layout: 0 = background, kdet num_classes = 90
WEIGHT_SEED = 6
CLS_WEIGHT_SCALE = 8.0
CLS_BIAS = -2.0
BACKGROUND_BIAS = 6.0    # background wins most RoIs, so fewer (RoI, class) pairs pass 0.05 than kdet's top-k keeps
FEATURE_CHANNELS = 4     # channels kept per feature level
ANCHOR_STRIDE = 37       # every 37th anchor's RPN outputs are kept
ROI_STRIDE = 10          # every 10th proposal's box-head outputs are kept
CLASS_STRIDE = 7         # every 7th class of the box regression is kept


def twin_state(model):
    """Seeded weights, with the box predictor's class output rescaled so random-weight scores clear 0.05."""
    shapes, state = seeded_state(model, WEIGHT_SEED)
    state["roi_heads.box_predictor.cls_score.weight"] *= CLS_WEIGHT_SCALE
    state["roi_heads.box_predictor.cls_score.bias"][:] = CLS_BIAS
    state["roi_heads.box_predictor.cls_score.bias"][0] = BACKGROUND_BIAS
    return shapes, state


def main():
    torch.manual_seed(0)
    height, width = IMAGE_SIZE
    # min_size / max_size equal to the image size: the transform's resize is the identity.
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                    min_size=height, max_size=width).eval()
    shapes, state = twin_state(model)
    load_state(model, shapes, state)

    images = smooth_images(np.random.default_rng(WEIGHT_SEED), 2, height, width)
    inputs = torch_inputs(images)
    data = {**fixture_header(shapes, WEIGHT_SEED), "images": images, "cls_weight_scale": np.float32(CLS_WEIGHT_SCALE),
            "cls_bias": np.float32(CLS_BIAS), "background_bias": np.float32(BACKGROUND_BIAS),
            "num_classes": np.int64(NUM_CLASSES), "feature_channels": np.int64(FEATURE_CHANNELS),
            "roi_stride": np.int64(ROI_STRIDE), "class_stride": np.int64(CLASS_STRIDE)}
    with torch.no_grad():
        image_list, _ = model.transform(inputs)
        assert tuple(image_list.tensors.shape[-2:]) == IMAGE_SIZE, image_list.tensors.shape
        body = model.backbone.body(image_list.tensors)
        data.update(feature_slices("C", body.values(), (2, 3, 4, 5), FEATURE_CHANNELS))
        pyramid = model.backbone.fpn(body)
        data.update(feature_slices("P", pyramid.values(), (2, 3, 4, 5, 6), FEATURE_CHANNELS))
        features = list(pyramid.values())
        objectness, deltas = model.rpn.head(features)
        # torchvision's own flattening (level, location, anchor), as the RPN's loss and proposals see it.
        flat_objectness, flat_deltas = concat_box_prediction_layers(objectness, deltas)
        anchors = model.rpn.anchor_generator(image_list, features)[0]
        keep, anchor_data = anchor_subsample(anchors, ANCHOR_STRIDE)
        data.update(anchor_data)
        data["rpn_objectness"] = flat_objectness.reshape(2, -1).numpy()[:, keep]
        data["rpn_box_deltas"] = yxyx(flat_deltas.reshape(2, -1, 4).numpy()[:, keep])

        proposals, _ = model.rpn(image_list, pyramid)
        pooled = model.roi_heads.box_roi_pool(pyramid, proposals, image_list.image_sizes)
        class_logits, box_regression = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
        counts = [len(p) for p in proposals]
        rows = np.arange(0, min(counts), ROI_STRIDE)
        classes = np.arange(0, NUM_CLASSES, CLASS_STRIDE)
        class_logits = np.split(class_logits.numpy(), np.cumsum(counts)[:-1])
        box_regression = np.split(yxyx(box_regression.numpy().reshape(-1, NUM_CLASSES, 4)), np.cumsum(counts)[:-1])
        for i, boxes in enumerate(proposals):
            data[f"proposals{i}"] = yxyx(boxes.numpy())
        data["roi_rows"] = rows
        data["roi_classes"] = classes
        data["roi_class_logits"] = np.stack([logits[rows] for logits in class_logits])
        data["roi_box_regression"] = np.stack([deltas[rows][:, classes] for deltas in box_regression])
        above = [int((torch.softmax(torch.from_numpy(logits), -1)[:, 1:] > 0.05).sum()) for logits in class_logits]
        print("proposals per image:", counts, "(class, RoI) pairs above 0.05:", above)
        detections = model(inputs)
    data.update(detection_arrays(detections))
    write_fixture(OUT, data)


if __name__ == "__main__":
    main()
