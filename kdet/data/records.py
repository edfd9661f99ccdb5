"""The in-memory form every reader produces, before `tf.data` takes over.

A reader turns one annotation format into a `DetectionDataset`: a list of `Record`s (one per image, boxes already in
kdet's convention: yxyx, absolute pixels, float32, 0-based labels) plus the class names and a `ReadReport` that
counts and names every record or box that was skipped or fixed. `kdet.data.pipeline` turns a `DetectionDataset`
into the element dicts of docs/design.md ("Data").
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from kdet.errors import DataError


@dataclasses.dataclass
class Record:
    """One image and its annotations.

    Exactly one of `path` (an encoded image file) or `image` (uint8 [H, W, 3] in memory) is set.
    boxes: float32 [N, 4] yxyx absolute pixels; labels: int32 [N] 0-based; difficult: bool [N].
    masks: optional uint8 [N, H, W] instance masks. segmentation: optional int32 [H, W] semantic ids (255 = ignore),
    or segmentation_path: a PNG of class ids read lazily.
    """

    image_id: int
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    path: Optional[str] = None
    image: Optional[np.ndarray] = None
    difficult: Optional[np.ndarray] = None
    masks: Optional[np.ndarray] = None
    segmentation: Optional[np.ndarray] = None
    segmentation_path: Optional[str] = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int32).reshape(-1)
        if self.difficult is None:
            self.difficult = np.zeros(len(self.labels), bool)
        self.difficult = np.asarray(self.difficult, bool).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.difficult)):
            raise ValueError("boxes, labels and difficult must have the same length")

    @property
    def name(self) -> str:
        return self.path if self.path is not None else f"image {self.image_id}"


@dataclasses.dataclass
class ReadReport:
    """What a reader skipped or fixed, with the file it came from. Nothing is dropped without a line here."""

    skipped_images: int = 0
    dropped_boxes: int = 0
    clipped_boxes: int = 0
    problems: list = dataclasses.field(default_factory=list)

    def add(self, path, message: str, kind: str, strict: bool = False):
        """Record one problem; kind is 'image' (whole record skipped), 'box' (one box dropped) or 'clip'."""
        if strict:
            raise DataError(path, message)
        self.problems.append(f"{path}: {message}")
        if kind == "image":
            self.skipped_images += 1
        elif kind == "box":
            self.dropped_boxes += 1
        elif kind == "clip":
            self.clipped_boxes += 1
        else:
            raise ValueError(kind)

    def merge(self, other: "ReadReport"):
        self.skipped_images += other.skipped_images
        self.dropped_boxes += other.dropped_boxes
        self.clipped_boxes += other.clipped_boxes
        self.problems.extend(other.problems)

    def summary(self) -> str:
        return (f"{self.skipped_images} images skipped, {self.dropped_boxes} boxes dropped, "
                f"{self.clipped_boxes} boxes clipped")


@dataclasses.dataclass
class DetectionDataset:
    """records + class_names (index = label) + the report of what was skipped (+ COCO category ids when read from
    COCO json: label i <-> category_ids[i])."""

    records: list
    class_names: list
    report: ReadReport = dataclasses.field(default_factory=ReadReport)
    category_ids: Optional[list] = None

    def __len__(self):
        return len(self.records)


def sanitize_boxes(boxes, labels, difficult, height, width, num_classes, path, report, strict=False):
    """Clip boxes to the image, drop NaN / inverted / zero-area boxes and unknown labels, each counted in `report`.

    boxes: [N, 4] yxyx absolute pixels. Returns the kept (boxes, labels, difficult).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int32).reshape(-1)
    difficult = np.zeros(len(labels), bool) if difficult is None else np.asarray(difficult, bool).reshape(-1)
    keep = np.ones(len(boxes), bool)
    for i, (box, label) in enumerate(zip(boxes, labels)):
        if not np.all(np.isfinite(box)):
            report.add(path, f"box {i} has a non-finite coordinate {box.tolist()}: dropped", "box", strict)
            keep[i] = False
            continue
        if label < 0 or label >= num_classes:
            report.add(path, f"box {i} has label {label}, not in the {num_classes} classes: dropped", "box", strict)
            keep[i] = False
            continue
        clipped = np.array([np.clip(box[0], 0, height), np.clip(box[1], 0, width),
                            np.clip(box[2], 0, height), np.clip(box[3], 0, width)], np.float32)
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            report.add(path, f"box {i} {box.tolist()} has zero or negative area inside the "
                             f"{width}x{height} image: dropped", "box", strict)
            keep[i] = False
            continue
        if not np.array_equal(clipped, box):
            report.add(path, f"box {i} {box.tolist()} extends outside the {width}x{height} image: clipped",
                       "clip", strict=False)
            boxes[i] = clipped
    return boxes[keep], labels[keep], difficult[keep]
