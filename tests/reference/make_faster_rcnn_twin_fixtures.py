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
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from kdet.convert.torchvision import seeded_state_dict

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


def smooth_images(rng, count, height, width):
    """uint8 images with structure at several scales (random-init nets turn pure noise into flat features)."""
    coarse = rng.uniform(0, 255, (count, 3, height // 16 + 1, width // 16 + 1)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(height, width), mode="bilinear",
                                         align_corners=False).numpy()
    images = up + rng.normal(0, 20, up.shape)
    return np.clip(images, 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def twin_state(model):
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = seeded_state_dict(shapes, WEIGHT_SEED)
    state["roi_heads.box_predictor.cls_score.weight"] *= CLS_WEIGHT_SCALE
    state["roi_heads.box_predictor.cls_score.bias"][:] = CLS_BIAS
    state["roi_heads.box_predictor.cls_score.bias"][0] = BACKGROUND_BIAS
    return shapes, state


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def yxyx(boxes):
    return boxes[..., [1, 0, 3, 2]]


def main():
    torch.manual_seed(0)
    height, width = IMAGE_SIZE
    # min_size / max_size equal to the image size: the transform's resize is the identity.
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                    min_size=height, max_size=width).eval()
    shapes, state = twin_state(model)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    missing = [k for k in shapes if k not in state and not k.endswith("num_batches_tracked")]
    assert not missing, missing

    images = smooth_images(np.random.default_rng(WEIGHT_SEED), 2, height, width)
    inputs = [torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255.0) for image in images]
    data = {"versions": np.array([torch.__version__, torchvision.__version__]), "images": images,
            "weight_seed": np.int64(WEIGHT_SEED), "cls_weight_scale": np.float32(CLS_WEIGHT_SCALE),
            "cls_bias": np.float32(CLS_BIAS), "background_bias": np.float32(BACKGROUND_BIAS), "num_classes": np.int64(NUM_CLASSES),
            "torch_names": np.array(list(shapes)), "torch_shapes": np.array([str(list(s)) for s in shapes.values()]),
            "feature_channels": np.int64(FEATURE_CHANNELS), "roi_stride": np.int64(ROI_STRIDE),
            "class_stride": np.int64(CLASS_STRIDE)}
    with torch.no_grad():
        image_list, _ = model.transform(inputs)
        assert tuple(image_list.tensors.shape[-2:]) == IMAGE_SIZE, image_list.tensors.shape
        body = model.backbone.body(image_list.tensors)
        for name, level in zip(body, (2, 3, 4, 5)):
            data[f"C{level}"] = nhwc(body[name][:, :FEATURE_CHANNELS])
        pyramid = model.backbone.fpn(body)
        for name, level in zip(pyramid, (2, 3, 4, 5, 6)):
            data[f"P{level}"] = nhwc(pyramid[name][:, :FEATURE_CHANNELS])
        features = list(pyramid.values())
        objectness, deltas = model.rpn.head(features)
        # torchvision's own flattening (level, location, anchor), as the RPN's loss and proposals see it.
        from torchvision.models.detection.rpn import concat_box_prediction_layers
        flat_objectness, flat_deltas = concat_box_prediction_layers(objectness, deltas)
        anchors = model.rpn.anchor_generator(image_list, features)[0]
        keep = np.arange(0, anchors.shape[0], ANCHOR_STRIDE)
        data["anchor_index"] = keep
        data["num_anchors"] = np.int64(anchors.shape[0])
        data["anchors"] = yxyx(anchors.numpy()[keep])
        data["rpn_objectness"] = flat_objectness.reshape(2, -1).numpy()[:, keep]
        data["rpn_box_deltas"] = flat_deltas.reshape(2, -1, 4).numpy()[:, keep][..., [1, 0, 3, 2]]

        proposals, _ = model.rpn(image_list, pyramid)
        pooled = model.roi_heads.box_roi_pool(pyramid, proposals, image_list.image_sizes)
        class_logits, box_regression = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
        counts = [len(p) for p in proposals]
        rows = np.arange(0, min(counts), ROI_STRIDE)
        classes = np.arange(0, NUM_CLASSES, CLASS_STRIDE)
        class_logits = np.split(class_logits.numpy(), np.cumsum(counts)[:-1])
        box_regression = np.split(box_regression.numpy().reshape(-1, NUM_CLASSES, 4)[..., [1, 0, 3, 2]],
                                  np.cumsum(counts)[:-1])
        for i, boxes in enumerate(proposals):
            data[f"proposals{i}"] = yxyx(boxes.numpy())
        data["roi_rows"] = rows
        data["roi_classes"] = classes
        data["roi_class_logits"] = np.stack([logits[rows] for logits in class_logits])
        data["roi_box_regression"] = np.stack([deltas[rows][:, classes] for deltas in box_regression])
        above = [int((torch.softmax(torch.from_numpy(logits), -1)[:, 1:] > 0.05).sum()) for logits in class_logits]
        print("proposals per image:", counts, "(class, RoI) pairs above 0.05:", above)
        detections = model(inputs)
    for i, det in enumerate(detections):
        data[f"det{i}_boxes"] = yxyx(det["boxes"].numpy())
        data[f"det{i}_scores"] = det["scores"].numpy()
        data[f"det{i}_labels"] = det["labels"].numpy().astype(np.int32)
        print(f"image {i}: {len(det['boxes'])} detections, scores {det['scores'][:3].numpy()} ... "
              f"{det['scores'][-3:].numpy()}, labels {np.unique(det['labels'].numpy()).size} distinct")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
