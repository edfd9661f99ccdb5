"""What `kdet data check` prints about a dataset, and the box hygiene the readers share.

`check_dataset` summarises a DetectionDataset (images, boxes per class, image sizes, box sizes) together with every
problem its reader counted, so a user sees at once that, say, two BCCD boxes were dropped and why.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from kdet.data.records import DetectionDataset, ReadReport, sanitize_boxes


def sanitize_with_masks(boxes, labels, difficult, masks, height, width, num_classes, path, report, strict=False):
    """`sanitize_boxes`, also dropping the instance mask of every dropped box.

    masks: uint8 [N, H, W] or None. Returns (boxes, labels, difficult, masks) of the kept boxes.
    """
    kept = sanitize_boxes(boxes, labels, difficult, height, width, num_classes, path, report, strict)
    if masks is None:
        return (*kept, None)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int32).reshape(-1)
    # sanitize_boxes does not say which boxes it kept; asking it about each box alone (into a scratch report)
    # gives the same verdict without restating its rules here.
    keep = [len(sanitize_boxes(box[None], label[None], None, height, width, num_classes, path, ReadReport())[0]) == 1
            for box, label in zip(boxes, labels)]
    return (*kept, np.asarray(masks, np.uint8)[np.asarray(keep, bool)].reshape(-1, height, width))


def check_dataset(dataset: DetectionDataset) -> dict:
    """Statistics of `dataset` and its read report.

    Returns a dict: num_images, num_boxes, images_without_boxes, difficult_boxes, class_names, boxes_per_class
    {name: count}, image_sizes {"WxH": count}, box_width / box_height {min, median, max} in pixels (None when there
    are no boxes), skipped_images, dropped_boxes, clipped_boxes, summary (one line) and problems (every line the
    reader reported, each naming its file).
    """
    label_counts = Counter()
    sizes = Counter()
    widths, heights = [], []
    without_boxes = difficult = 0
    for record in dataset.records:
        label_counts.update(record.labels.tolist())
        sizes[f"{record.width}x{record.height}"] += 1
        widths.extend((record.boxes[:, 3] - record.boxes[:, 1]).tolist())
        heights.extend((record.boxes[:, 2] - record.boxes[:, 0]).tolist())
        without_boxes += int(len(record.labels) == 0)
        difficult += int(record.difficult.sum())

    def spread(values):
        if not values:
            return None
        return {"min": float(np.min(values)), "median": float(np.median(values)), "max": float(np.max(values))}

    names = list(dataset.class_names)
    report = dataset.report
    return {
        "num_images": len(dataset.records),
        "num_boxes": int(sum(label_counts.values())),
        "images_without_boxes": without_boxes,
        "difficult_boxes": difficult,
        "class_names": names,
        "boxes_per_class": {name: int(label_counts.get(label, 0)) for label, name in enumerate(names)},
        "image_sizes": dict(sizes.most_common()),
        "box_width": spread(widths),
        "box_height": spread(heights),
        "skipped_images": report.skipped_images,
        "dropped_boxes": report.dropped_boxes,
        "clipped_boxes": report.clipped_boxes,
        "summary": report.summary(),
        "problems": list(report.problems),
    }


def format_check(stats: dict) -> str:
    """The text `kdet data check` prints for the dict of `check_dataset`."""
    lines = [f"images: {stats['num_images']} ({stats['images_without_boxes']} without boxes)",
             f"boxes: {stats['num_boxes']} ({stats['difficult_boxes']} difficult / crowd)",
             "boxes per class:"]
    width = max([len(name) for name in stats["class_names"]] + [5])
    lines += [f"  {name:<{width}} {count}" for name, count in stats["boxes_per_class"].items()]
    lines.append("image sizes (WxH): " + ", ".join(f"{size}: {count}" for size, count in stats["image_sizes"].items()))
    for key in ("box_width", "box_height"):
        if stats[key] is not None:
            lines.append(f"{key.replace('_', ' ')} px: min {stats[key]['min']:.1f}, median "
                         f"{stats[key]['median']:.1f}, max {stats[key]['max']:.1f}")
    lines.append(f"read report: {stats['summary']}")
    if stats["problems"]:
        lines.append(f"problems ({len(stats['problems'])}):")
        lines += [f"  {problem}" for problem in stats["problems"]]
    return "\n".join(lines)
