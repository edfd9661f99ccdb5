"""Generate tests/fixtures/mask_rcnn_twin.npz: torchvision's maskrcnn_resnet50_fpn (v1) on seeded weights.

Needs torch + torchvision (never a kdet dependency); run with the scratch venv's python from the repo root:

    PYTHONPATH=. /work/torchvenv/bin/python tests/reference/make_mask_rcnn_twin_fixtures.py

No weights are stored: both sides build them with kdet.convert.torchvision.seeded_state_dict(shapes, WEIGHT_SEED),
then rescale the box predictor's class output as the Faster R-CNN twin does (CLS_WEIGHT_SCALE, CLS_BIAS,
BACKGROUND_BIAS, stored here) so random-weight scores clear torchvision's 0.05 threshold, and shift the mask logits'
bias by MASK_BIAS so that the binary masks cover a good part of their boxes. One image, in kdet's conventions
(NHWC, yxyx): a channel slice of P2-P6; the mask logits [R, 28, 28, classes] (every CLASS_STRIDE-th class) for
MASK_ROIS (sizes that pick each of P2-P5) run through the mask branch on their own; the final detections; and the
pasted binary masks of the first NUM_MASKS detections (probability > 0.5, torchvision's paste_masks_in_image),
bit-packed along the width.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # twin_common, when run as tests/reference/make_X.py
from twin_common import (detection_arrays, feature_slices, fixture_header, load_state, seeded_state,  # noqa: E402
                         smooth_images, torch_inputs, write_fixture, yxyx)

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "mask_rcnn_twin.npz"
IMAGE_SIZE = (256, 320)  # multiples of 32: torchvision's batch padding adds nothing
NUM_CLASSES = 91         # torchvision's COCO layout: 0 = background, kdet num_classes = 90
WEIGHT_SEED = 8
CLS_WEIGHT_SCALE = 8.0
CLS_BIAS = -2.0
BACKGROUND_BIAS = 6.0    # 25 detections, under the 100 cap: the count itself is compared
MASK_BIAS = 1.0
FEATURE_CHANNELS = 4
# x1, y1, x2, y2 (torchvision's order): 24-250 px wide, so torchvision's level mapper picks P2, P3, P4 and P5.
MASK_ROIS = np.array([[10.0, 12.0, 34.0, 40.0], [40.5, 30.25, 110.0, 95.0], [100.0, 20.0, 270.0, 150.0],
                      [0.0, 0.0, 320.0, 256.0], [200.0, 180.0, 318.0, 250.0], [5.0, 100.0, 60.0, 230.0]], np.float32)
CLASS_STRIDE = 15        # every 15th class of the mask logits is kept
NUM_MASKS = 12           # pasted masks kept


def twin_state(model):
    shapes, state = seeded_state(model, WEIGHT_SEED)
    state["roi_heads.box_predictor.cls_score.weight"] *= CLS_WEIGHT_SCALE
    state["roi_heads.box_predictor.cls_score.bias"][:] = CLS_BIAS
    state["roi_heads.box_predictor.cls_score.bias"][0] = BACKGROUND_BIAS
    state["roi_heads.mask_predictor.mask_fcn_logits.bias"] += MASK_BIAS
    return shapes, state


def main():
    torch.manual_seed(0)
    height, width = IMAGE_SIZE
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                  min_size=height, max_size=width).eval()
    shapes, state = twin_state(model)
    load_state(model, shapes, state)
    images = smooth_images(np.random.default_rng(WEIGHT_SEED), 1, height, width)
    inputs = torch_inputs(images)
    classes = np.arange(0, NUM_CLASSES, CLASS_STRIDE)
    data = {**fixture_header(shapes, WEIGHT_SEED), "images": images, "cls_weight_scale": np.float32(CLS_WEIGHT_SCALE),
            "cls_bias": np.float32(CLS_BIAS), "background_bias": np.float32(BACKGROUND_BIAS),
            "mask_bias": np.float32(MASK_BIAS),
            "num_classes": np.int64(NUM_CLASSES), "feature_channels": np.int64(FEATURE_CHANNELS),
            "mask_classes": classes}
    with torch.no_grad():
        image_list, _ = model.transform(inputs)
        assert tuple(image_list.tensors.shape[-2:]) == IMAGE_SIZE, image_list.tensors.shape
        pyramid = model.backbone(image_list.tensors)
        data.update(feature_slices("P", pyramid.values(), (2, 3, 4, 5, 6), FEATURE_CHANNELS))
        detections = model(inputs)
        rois = torch.from_numpy(MASK_ROIS)
        pooled = model.roi_heads.mask_roi_pool(pyramid, [rois], image_list.image_sizes)
        logits = model.roi_heads.mask_predictor(model.roi_heads.mask_head(pooled))  # [R, 91, 28, 28]
    data["mask_rois"] = yxyx(rois.numpy())
    data["mask_logits"] = logits.numpy()[:, classes].transpose(0, 2, 3, 1)
    data.update(detection_arrays(detections))
    masks = detections[0]["masks"][:NUM_MASKS, 0].numpy() > 0.5  # [K, H, W]
    data["det0_masks_packed"] = np.packbits(masks, axis=-1)
    print("mask areas:", masks.sum(axis=(1, 2)))
    write_fixture(OUT, data)


if __name__ == "__main__":
    main()
