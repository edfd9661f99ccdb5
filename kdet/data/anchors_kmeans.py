"""Anchor priors from the data: k-means on the training boxes' shapes with the distance d = 1 - IoU (YOLO9000,
"Dimension Clusters"), so that big boxes do not dominate the way they would with a Euclidean distance.

A box's shape is its (height, width) relative to its image, which is also its shape after the pipeline stretches the
image to the network size; the IoU of two shapes is that of the boxes placed on the same centre. Priors come out in
grid cells (Darknet's unit and `YOLOv2(anchors=...)`'s) and in pixels at the network size, with their mean IoU
against the boxes (each box counts with its best prior) next to that of hand-picked priors.

    kdet data anchors --k 5 configs/yolov2_bccd.yaml            # the config's train split and image size
    kdet data anchors --k 5 --format voc ../shared/data/bccd/BCCD --image-size 416 416

CLI entry point: `anchors_main(argv)`; library: `compute_priors(dataset, k, image_size)` + `format_priors(result)`.
"""
from __future__ import annotations

import argparse
import math

import numpy as np

from kdet.build import load_split
from kdet.config import load_config
from kdet.data.io import load_dataset
from kdet.errors import ConfigError, DataError

# Priors picked by hand, as shapes relative to the image (height, width):
#   yolo_voc_cfg: the priors of Darknet's yolo-voc.cfg (k-means on VOC, 13 x 13 cells), i.e. somebody else's data;
#   faster_rcnn_9: Faster R-CNN's 9 anchors (128, 256, 512 px boxes, aspect ratios 1:2, 1:1, 2:1) on its 600-px
#   image, the "Anchor Boxes" row of the YOLO9000 paper's Table 1.
HAND_PICKED = {
    "yolo_voc_cfg": [(h / 13.0, w / 13.0) for h, w in ((1.73145, 1.3221), (4.00944, 3.19275), (8.09892, 5.05587),
                                                       (4.84053, 9.47112), (10.0071, 11.2364))],
    "faster_rcnn_9": [(size * math.sqrt(ratio) / 600.0, size / math.sqrt(ratio) / 600.0)
                      for size in (128, 256, 512) for ratio in (0.5, 1.0, 2.0)],
}


def box_shapes(dataset):
    """DetectionDataset -> float64 [N, 2] (height, width) of every box with positive area, relative to its image."""
    shapes = []
    for record in dataset.records:
        boxes = np.asarray(record.boxes, np.float64).reshape(-1, 4)
        h = (boxes[:, 2] - boxes[:, 0]) / record.height
        w = (boxes[:, 3] - boxes[:, 1]) / record.width
        keep = (h > 0) & (w > 0)
        shapes.append(np.stack([h[keep], w[keep]], axis=1))
    return np.concatenate(shapes) if shapes else np.zeros((0, 2))


def shape_iou(shapes, priors):
    """IoU of boxes and priors sharing a centre: [N, 2] x [K, 2] (height, width) -> [N, K]."""
    shapes = np.asarray(shapes, np.float64)[:, None, :]
    priors = np.asarray(priors, np.float64)[None, :, :]
    intersection = np.minimum(shapes[..., 0], priors[..., 0]) * np.minimum(shapes[..., 1], priors[..., 1])
    union = shapes[..., 0] * shapes[..., 1] + priors[..., 0] * priors[..., 1] - intersection
    return intersection / union


def mean_iou(shapes, priors):
    """Average over the boxes of the IoU with their best prior (the paper's "Avg IOU")."""
    return float(np.mean(np.max(shape_iou(shapes, priors), axis=1)))


def _plus_plus_init(shapes, k, rng):
    """k-means++ seeding with d = 1 - IoU: each next centre drawn with probability proportional to d^2."""
    centres = [shapes[rng.integers(len(shapes))]]
    for _ in range(1, k):
        distance = 1.0 - np.max(shape_iou(shapes, np.array(centres)), axis=1)
        weights = distance ** 2
        total = weights.sum()
        index = rng.integers(len(shapes)) if total <= 0 else rng.choice(len(shapes), p=weights / total)
        centres.append(shapes[index])
    return np.array(centres)


def kmeans_iou(shapes, k, seed=0, restarts=5, max_iterations=300):
    """k-means with d = 1 - IoU: assign each shape to its highest-IoU centre, move centres to their members' mean,
    until no assignment changes. The best of `restarts` runs by mean IoU is kept.

    Args:
        shapes: [N, 2] (height, width), any unit; k: number of priors.
    Returns:
        [k, 2] centres sorted by area (smallest first).
    """
    shapes = np.asarray(shapes, np.float64)
    if len(shapes) < k:
        raise ValueError(f"k-means needs at least k = {k} boxes, got {len(shapes)}")
    rng = np.random.default_rng(seed)
    best, best_score = None, -1.0
    for _ in range(restarts):
        centres = _plus_plus_init(shapes, k, rng)
        assignment = None
        for _ in range(max_iterations):
            iou = shape_iou(shapes, centres)
            new_assignment = np.argmax(iou, axis=1)
            if assignment is not None and np.array_equal(new_assignment, assignment):
                break
            assignment = new_assignment
            for cluster in range(k):
                members = shapes[assignment == cluster]
                # An empty cluster takes the box its centres fit worst, so k priors always come back.
                centres[cluster] = members.mean(axis=0) if len(members) else shapes[np.argmin(np.max(iou, axis=1))]
        score = mean_iou(shapes, centres)
        if score > best_score:
            best, best_score = centres.copy(), score
    return best[np.argsort(best[:, 0] * best[:, 1])]


def compute_priors(dataset, k=5, image_size=(416, 416), stride=32, seed=0):
    """k-means priors of a dataset's boxes, and how well they and hand-picked priors fit those boxes.

    Args:
        dataset: a DetectionDataset (normally the training split).
        k: number of priors (5 in the paper).
        image_size: (H, W) the network runs at (images are stretched to it); stride: pixels per grid cell.
    Returns:
        {"k", "num_boxes", "image_size", "stride", "priors_cells": [[h, w], ...] (grid cells, for YOLOv2's
        `anchors`), "priors_pixels": [[h, w], ...], "mean_iou": float, "hand_picked": {name: mean IoU}}.
    Raises:
        DataError: the dataset has fewer than k boxes with positive area.
    """
    shapes = box_shapes(dataset)
    if len(shapes) < k:
        raise DataError("dataset", f"needs at least {k} boxes with positive area for k-means, found {len(shapes)}")
    height, width = image_size
    priors = kmeans_iou(shapes, k, seed=seed)
    pixels = priors * [height, width]
    return {
        "k": int(k), "num_boxes": int(len(shapes)), "image_size": [int(height), int(width)], "stride": int(stride),
        "priors_cells": np.round(pixels / stride, 4).tolist(), "priors_pixels": np.round(pixels, 2).tolist(),
        "mean_iou": mean_iou(shapes, priors),
        "hand_picked": {name: mean_iou(shapes, np.array(p)) for name, p in HAND_PICKED.items()},
    }


def format_priors(result):
    """The report `kdet data anchors` prints: priors, mean IoUs, and the line to paste into a YOLOv2 config."""
    lines = [f"k-means (d = 1 - IoU) on {result['num_boxes']} boxes, k = {result['k']}, network input "
             f"{result['image_size'][0]}x{result['image_size'][1]}, stride {result['stride']}",
             f"{'prior':>5}  {'h cells':>8} {'w cells':>8}  {'h px':>8} {'w px':>8}"]
    for i, (cells, pixels) in enumerate(zip(result["priors_cells"], result["priors_pixels"])):
        lines.append(f"{i:>5}  {cells[0]:>8.3f} {cells[1]:>8.3f}  {pixels[0]:>8.1f} {pixels[1]:>8.1f}")
    lines.append(f"mean IoU, k-means priors ({result['k']}): {result['mean_iou']:.4f}")
    for name, value in result["hand_picked"].items():
        count = len(HAND_PICKED[name])
        lines.append(f"mean IoU, hand-picked {name} ({count}): {value:.4f}")
    lines.append("config: model.args.anchors: " + str([[round(h, 4), round(w, 4)] for h, w in result["priors_cells"]]))
    return "\n".join(lines)


def _parser():
    parser = argparse.ArgumentParser(prog="kdet data anchors",
                                     description="k-means anchor priors (distance 1 - IoU) from a dataset's boxes")
    parser.add_argument("dataset", help="a kdet config (its data section and model.image_size), or with --format a "
                                        "dataset path")
    parser.add_argument("--k", type=int, default=5, help="number of priors (default 5)")
    parser.add_argument("--format", help="dataset format (shapes, coco, voc, yolo, tfrecord): DATASET is its path")
    parser.add_argument("--split", default="train")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                        help="network input size (default: the config's model.image_size, else 416 416)")
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def anchors_main(argv=None):
    """`kdet data anchors [--k K] [--format F] [--split S] [--image-size H W] DATASET`: print priors; returns 0.

    Raises KdetError (DataError / ConfigError) on bad input, which the kdet CLI prints as one line."""
    args = _parser().parse_args(argv)
    if args.k < 1:
        raise ConfigError(f"--k must be at least 1, got {args.k}")
    image_size = args.image_size
    if args.format:
        dataset = load_dataset(args.format, args.dataset, split=args.split)
    else:
        config = load_config(args.dataset)
        dataset = load_split(config, args.split)
        image_size = image_size or config.model.image_size
    result = compute_priors(dataset, args.k, tuple(image_size or (416, 416)), args.stride, args.seed)
    print(format_priors(result))
    return 0


if __name__ == "__main__":
    import sys

    from kdet.errors import KdetError
    try:
        sys.exit(anchors_main())
    except KdetError as error:
        sys.exit(f"kdet: error: {error}")
