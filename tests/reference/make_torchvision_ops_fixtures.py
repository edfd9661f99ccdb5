"""Generate tests/fixtures/ops_torchvision.npz: torchvision.ops outputs that kdet.ops must reproduce.

Needs torch + torchvision, never part of kdet's dependencies. Run it in a scratch venv that sees the system packages:

    python3 -m venv --system-site-packages /tmp/tvenv
    /tmp/tvenv/bin/pip install "torch==2.14.1" "torchvision==0.29.1"
    /tmp/tvenv/bin/python tests/reference/make_torchvision_ops_fixtures.py

Everything is stored in torchvision's conventions (boxes xyxy, features NCHW); tests/test_ops_torchvision.py
converts to kdet's (yxyx, NHWC). Inputs come from a fixed seed, so rerunning gives the same file.
"""
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "ops_torchvision.npz"


def random_boxes(rng, count, height, width, min_size=1.0, max_size=None):
    """xyxy float32 boxes with corners inside [0, width] x [0, height]."""
    max_size = max_size or max(height, width)
    size = rng.uniform(min_size, max_size, (count, 2))
    x1 = rng.uniform(0, width, count)
    y1 = rng.uniform(0, height, count)
    boxes = np.stack([x1, y1, np.minimum(x1 + size[:, 0], width), np.minimum(y1 + size[:, 1], height)], axis=1)
    return boxes.astype(np.float32)


def roi_boxes(rng, count, height, width):
    """A mix of RoIs (xyxy input pixels): inside, partly and fully outside the image, tiny, zero-size."""
    boxes = random_boxes(rng, count, height, width, min_size=0.5)
    boxes[0] = [-30, -20, 10, 12]              # partly outside (top-left)
    boxes[1] = [width - 8, height - 6, width + 25, height + 40]  # partly outside (bottom-right)
    boxes[2] = [width + 40, 3, width + 60, 20]  # fully outside
    boxes[3] = [5.3, 7.7, 5.3, 7.7]             # zero size
    boxes[4] = [10.2, 3.1, 10.6, 3.3]           # smaller than one cell
    boxes[5] = [0, 0, width, height]            # the whole image
    boxes[6] = [-0.6, -0.4, 2.2, 1.1]           # straddles the border by less than a cell
    return boxes


def main():
    rng = np.random.default_rng(20240531)
    torch.manual_seed(0)
    data = {"versions": np.array([torch.__version__, torchvision.__version__])}

    # box_iou
    boxes1 = random_boxes(rng, 23, 60, 80)
    boxes2 = random_boxes(rng, 17, 60, 80)
    data["iou_boxes1"], data["iou_boxes2"] = boxes1, boxes2
    data["iou"] = torchvision.ops.box_iou(torch.from_numpy(boxes1), torch.from_numpy(boxes2)).numpy()

    # nms: clustered boxes so thresholds matter; case 2 has many tied scores.
    for case, (count, threshold, tie_levels) in enumerate([(150, 0.5, None), (300, 0.3, None), (200, 0.7, 6)]):
        centres = rng.uniform(20, 180, (-(-count // 6), 2)).repeat(6, axis=0)[:count]
        jitter = rng.normal(0, 6, (count, 2))
        size = rng.uniform(10, 40, (count, 2))
        xy = centres + jitter
        boxes = np.concatenate([xy - size / 2, xy + size / 2], axis=1).astype(np.float32)
        scores = rng.uniform(0, 1, count).astype(np.float32)
        if tie_levels:
            scores = np.round(scores * tie_levels) / tie_levels
        keep = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        data[f"nms{case}_boxes"], data[f"nms{case}_scores"] = boxes, scores.astype(np.float32)
        data[f"nms{case}_threshold"] = np.float32(threshold)
        data[f"nms{case}_keep"] = keep.astype(np.int32)

    # batched_nms: the small case uses torchvision's coordinate trick, the large one (> 4000 numbers on CPU)
    # its per-class loop.
    for case, (count, classes, threshold) in enumerate([(400, 5, 0.5), (1500, 20, 0.6)]):
        boxes = random_boxes(rng, count, 300, 400, min_size=8, max_size=80)
        scores = rng.uniform(0, 1, count).astype(np.float32)
        labels = rng.integers(0, classes, count)
        keep = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                           torch.from_numpy(labels), threshold).numpy()
        data[f"bnms{case}_boxes"], data[f"bnms{case}_scores"] = boxes, scores
        data[f"bnms{case}_classes"] = labels.astype(np.int32)
        data[f"bnms{case}_threshold"] = np.float32(threshold)
        data[f"bnms{case}_keep"] = keep.astype(np.int32)

    # roi_align / roi_pool on a 2-image batch; spatial scale 1/2 (boxes in a 2x larger input image).
    features = rng.normal(0, 1, (2, 2, 21, 26)).astype(np.float32)
    image_h, image_w = 42, 52
    boxes = roi_boxes(rng, 24, image_h, image_w)
    batch_index = rng.integers(0, 2, len(boxes)).astype(np.float32)
    rois = torch.from_numpy(np.concatenate([batch_index[:, None], boxes], axis=1))
    data["roi_features"], data["roi_boxes"], data["roi_batch_index"] = features, boxes, batch_index.astype(np.int32)
    feats = torch.from_numpy(features)
    configs = []
    for aligned in (False, True):
        for sampling_ratio in (1, 2, 3, -1):
            configs.append(((7, 7), sampling_ratio, aligned))
    configs += [((5, 4), 2, True), ((14, 14), -1, True), ((3, 6), 0, False)]
    for i, (size, sampling_ratio, aligned) in enumerate(configs):
        out = torchvision.ops.roi_align(feats, rois, size, spatial_scale=0.5, sampling_ratio=sampling_ratio,
                                        aligned=aligned)
        data[f"roialign{i}_config"] = np.array([size[0], size[1], sampling_ratio, int(aligned)], np.int32)
        data[f"roialign{i}_out"] = out.numpy()
    for i, (size, scale) in enumerate([((7, 7), 0.5), ((3, 5), 0.5), ((2, 2), 0.25)]):
        out = torchvision.ops.roi_pool(feats, rois, size, spatial_scale=scale)
        data[f"roipool{i}_config"] = np.array([size[0], size[1]], np.int32)
        data[f"roipool{i}_scale"] = np.float32(scale)
        data[f"roipool{i}_out"] = out.numpy()

    # MultiScaleRoIAlign over 4 levels (strides 4..32) of a 128 x 160 image, two images.
    image_h, image_w = 128, 160
    levels = {}
    for level, stride in enumerate((4, 8, 16, 32)):
        levels[f"p{level}"] = torch.from_numpy(
            rng.normal(0, 1, (2, 2, image_h // stride, image_w // stride)).astype(np.float32))
        data[f"ms_features{level}"] = levels[f"p{level}"].numpy()
    per_image = [random_boxes(rng, 14, image_h, image_w, min_size=4, max_size=150) for _ in range(2)]
    pooler = MultiScaleRoIAlign(list(levels), output_size=7, sampling_ratio=2)
    out = pooler(levels, [torch.from_numpy(b) for b in per_image], [(image_h, image_w)] * 2)
    data["ms_boxes"] = np.concatenate(per_image)
    data["ms_batch_index"] = np.repeat(np.arange(2), 14).astype(np.int32)
    data["ms_out"] = out.numpy()

    # AnchorGenerator: FPN (one size per level, 3 ratios) on an image that is a multiple of 32 and one that is
    # not (torchvision then uses image // feature as the stride), and a single level with odd ratios.
    for case, (image_size, strides, sizes, ratios) in enumerate([
            ((128, 160), (4, 8, 16, 32, 64), ((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5),
            ((100, 130), (8, 16, 32), ((24, 40), (64,), (100,)), ((0.5, 1.0, 2.0),) * 3),
            ((96, 64), (16,), ((48, 96, 181),), ((0.3, 1.0, 1.7, 3.1),))]):
        feature_maps = [torch.zeros(1, 1, -(-image_size[0] // s), -(-image_size[1] // s)) for s in strides]
        images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
        generated = AnchorGenerator(sizes, ratios)(images, feature_maps)[0]
        data[f"anchors{case}_image_size"] = np.array(image_size, np.int32)
        data[f"anchors{case}_strides"] = np.array(strides, np.int32)
        data[f"anchors{case}_out"] = generated.numpy()

    # BoxCoder with Faster R-CNN RoI-head weights, and Matcher with / without low-quality matches.
    anchors = random_boxes(rng, 40, 100, 120, min_size=5, max_size=60)
    gt = random_boxes(rng, 40, 100, 120, min_size=5, max_size=60)
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    deltas = coder.encode_single(torch.from_numpy(gt), torch.from_numpy(anchors))
    codes = torch.from_numpy(rng.normal(0, 1, (40, 4)).astype(np.float32))
    codes[0, 2:] = 12.0  # beyond the exp clamp
    data["coder_anchors"], data["coder_gt"], data["coder_deltas"] = anchors, gt, deltas.numpy()
    data["coder_codes"] = codes.numpy()
    data["coder_decoded"] = coder.decode_single(codes, torch.from_numpy(anchors)).numpy()
    proposals = random_boxes(rng, 300, 100, 120, min_size=5, max_size=60)
    gt = random_boxes(rng, 6, 100, 120, min_size=10, max_size=50)
    quality = torchvision.ops.box_iou(torch.from_numpy(gt), torch.from_numpy(proposals))
    data["matcher_proposals"], data["matcher_gt"] = proposals, gt
    for allow in (False, True):
        data[f"matcher_low_quality{int(allow)}"] = Matcher(0.7, 0.3, allow)(quality.clone()).numpy().astype(np.int32)

    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(data)} arrays)")


if __name__ == "__main__":
    main()
