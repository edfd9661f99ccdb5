"""Label images (one integer per pixel: 0 = background, k = instance k) such as the stardist nuclei TIFFs, and checks
of semantic masks before training.

    read_label_image(path)                    -> int32 [H, W], 16-bit ids kept exactly (no wrap at 255)
    read_intensity_image(path)                -> uint8 [H, W, 3], 16-bit intensities stretched by their range
    load_instance_tiles(image, labels, ...)   -> DetectionDataset of tiles: the training tiles, or the held-out tile
    load_label_image_dataset(root, split)     -> the same from a directory (a `load_dataset` format for configs)
    semantic_from_instances(labels)           -> 0 / 1 mask where touching instances are split by background
    segmentation_masks(dataset, num_classes)  -> (name, mask) of every record, sizes and class ids checked

Touching nuclei share a border in the label image; a semantic mask that only says "nucleus" would merge them. As in
U-Net (Fig. 3c), pixels of an instance that touch a different instance become background, so the network is taught
to draw the gap that connected components then need.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from kdet.data.images import read_image, read_segmentation
from kdet.data.records import DetectionDataset, ReadReport, Record
from kdet.errors import ConfigError, DataError

LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")


def read_label_image(path) -> np.ndarray:
    """A single-channel integer image (8/16/32-bit PNG or TIFF) as int32 [H, W] of its raw values."""
    if not Path(path).is_file():
        raise DataError(path, "label image not found")
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(path, f"cannot decode label image: {error}") from None
    if image.mode not in LABEL_MODES:
        raise DataError(path, f"a label image must hold one integer per pixel; this one is mode {image.mode}")
    values = np.asarray(image)
    if values.ndim != 2:
        raise DataError(path, f"a label image must be 2-D, got shape {values.shape}")
    return values.astype(np.int64).astype(np.int32)


def read_intensity_image(path) -> np.ndarray:
    """An image for the network: uint8 [H, W, 3]; 16-bit microscopy is stretched by its own min..max range."""
    return read_image(path)


def semantic_from_instances(labels: np.ndarray) -> np.ndarray:
    """int [H, W] instance ids -> int32 [H, W]: 1 inside an instance, 0 elsewhere and where two instances touch.

    A pixel of instance k becomes 0 when one of its 8 neighbours belongs to another instance j > 0.
    """
    labels = np.asarray(labels)
    padded = np.pad(labels, 1, mode="edge")
    height, width = labels.shape
    touches = np.zeros(labels.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            neighbour = padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
            touches |= (neighbour > 0) & (neighbour != labels)
    return ((labels > 0) & ~touches).astype(np.int32)


def _instance_record(image, labels, image_id, name):
    """One Record: image uint8 [h, w, 3], instance masks, tight boxes, label 0 each, semantic 0/1 mask."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    masks = (labels[None] == ids[:, None, None]).astype(np.uint8)
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    height, width = labels.shape
    boxes = np.stack([rows.argmax(1), cols.argmax(1), height - rows[:, ::-1].argmax(1),
                      width - cols[:, ::-1].argmax(1)], axis=1).astype(np.float32) if len(ids) else np.zeros((0, 4))
    record = Record(image_id=image_id, height=height, width=width, boxes=boxes, labels=np.zeros(len(ids), np.int32),
                    image=np.ascontiguousarray(image), masks=masks,
                    segmentation=semantic_from_instances(labels))
    record.source = name  # named in mask errors (mask_name); Record.name would only say "image <id>"
    return record


def load_instance_tiles(image_path, label_path, split="train", tile_size=128, stride=64, holdout=(320, 0, 512, 192),
                        class_name="nucleus") -> DetectionDataset:
    """Tiles of one large labelled image as a dataset: training tiles that avoid a held-out box, or that box.

    Args:
        image_path: the intensity image (16-bit TIFF allowed); label_path: its instance label image, same size.
        split: "train" (every tile_size x tile_size tile on a `stride` grid that does not overlap `holdout`;
            the last row / column of tiles is moved in to end at the border), "val" / "test" (the held-out region
            as one record).
        holdout: (y0, x0, y1, x1) pixels of the held-out region.
    Returns:
        DetectionDataset with one class, in-memory images, instance masks, boxes and semantic masks (0 / 1).
    """
    image = read_intensity_image(image_path)
    labels = read_label_image(label_path)
    if labels.shape != image.shape[:2]:
        raise DataError(label_path, f"label image is {labels.shape[1]}x{labels.shape[0]} but the image "
                                    f"{Path(image_path).name} is {image.shape[1]}x{image.shape[0]}")
    height, width = labels.shape
    y0, x0, y1, x1 = (int(v) for v in holdout)
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise ConfigError(f"holdout {list(holdout)} is not inside the {width}x{height} image")
    if split in ("val", "test"):
        records = [_instance_record(image[y0:y1, x0:x1], labels[y0:y1, x0:x1], 0, f"{label_path}[holdout]")]
        return DetectionDataset(records, [class_name], ReadReport())
    if split != "train":
        raise ConfigError(f"unknown split {split!r} for a label-image dataset; expected train, val or test")
    if tile_size > min(height, width):
        raise ConfigError(f"tile_size {tile_size} is larger than the {width}x{height} image")

    def starts(size):
        positions = list(range(0, size - tile_size + 1, stride))
        if positions[-1] != size - tile_size:
            positions.append(size - tile_size)
        return positions

    records = []
    for ty in starts(height):
        for tx in starts(width):
            overlaps = ty < y1 and ty + tile_size > y0 and tx < x1 and tx + tile_size > x0
            if overlaps:
                continue
            crop = (slice(ty, ty + tile_size), slice(tx, tx + tile_size))
            records.append(_instance_record(image[crop], labels[crop], len(records), f"{label_path}[{ty}:{tx}]"))
    if not records:
        raise ConfigError(f"no {tile_size}px tile fits outside the holdout {list(holdout)}")
    return DetectionDataset(records, [class_name], ReadReport())


def load_label_image_dataset(root, split="train", image="img2d.tif", labels="mask2d.tif", tile_size=128, stride=64,
                             holdout=(320, 0, 512, 192), class_name="nucleus") -> DetectionDataset:
    """`load_instance_tiles` of root/image and root/labels (defaults: the stardist nuclei crop's file names).

    The held-out default is the crop's bottom-left 192 x 192, where most touching nuclei are (27 nuclei).
    """
    root = Path(root)
    return load_instance_tiles(root / image, root / labels, split, tile_size, stride, tuple(holdout), class_name)


def record_mask(record, num_classes=None, ignore_index=255):
    """The checked int32 [H, W] semantic mask of one record, or None when it has none.

    A mask whose size differs from its image, or (when num_classes is given: the mask classes, background
    included) a class id outside 0..num_classes-1 that is not `ignore_index`, raises DataError naming the file.
    """
    if record.segmentation is None and record.segmentation_path is None:
        return None
    name = mask_name(record)
    mask = np.asarray(record.segmentation if record.segmentation is not None
                      else read_segmentation(record.segmentation_path))
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != (record.height, record.width):
        raise DataError(name, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                              f"{record.width}x{record.height}")
    if num_classes is not None:
        bad = (mask != ignore_index) & ((mask < 0) | (mask >= num_classes))
        if bad.any():
            raise DataError(name, f"class id {int(mask[bad][0])} is not in the {num_classes} classes "
                                  f"(0..{num_classes - 1}) nor the ignore value {ignore_index}")
    return mask.astype(np.int32)


def mask_name(record):
    """What an error about a record's mask names: its PNG, the tile it was cut from, or the record."""
    return record.segmentation_path or getattr(record, "source", None) or record.name


def segmentation_masks(dataset, num_classes=None, ignore_index=255):
    """Yield (name, int32 [H, W] mask) for every record that has a semantic mask, checked by `record_mask`."""
    for record in dataset.records:
        mask = record_mask(record, num_classes, ignore_index)
        if mask is not None:
            yield mask_name(record), mask


def check_segmentation(dataset, num_classes, ignore_index=255):
    """Run every check of `segmentation_masks` over the dataset; returns the number of masks checked."""
    return sum(1 for _ in segmentation_masks(dataset, num_classes, ignore_index))


def write_label_image(labels, path):
    """Write int [H, W] ids as a 16-bit PNG / TIFF (ids up to 65535), e.g. for test fixtures."""
    labels = np.asarray(labels)
    if labels.min() < 0 or labels.max() > 65535:
        raise ConfigError("label ids must be in 0..65535 for a 16-bit label image")
    Image.fromarray(labels.astype(np.uint16)).save(path)
    return Path(path)
