"""Synthetic shapes: circles, squares and triangles on a noisy gradient, with exact boxes and masks.

The set every model test trains on for a few steps: it is generated in memory in about a second, its annotations
are exact (boxes are tight to the pixels drawn, masks are those pixels), and a model that learns anything at all
shows it within a few hundred steps. `max_objects=1` gives the single-object set used by the
classification + localization model.

Drawing is vectorised numpy on the pixel-centre grid; no per-pixel Python.
"""
from __future__ import annotations

import numpy as np

from kdet.data.records import DetectionDataset, ReadReport, Record
from kdet.errors import ConfigError

CLASS_NAMES = ["circle", "square", "triangle"]
# An object placed later may hide at most half of an earlier one; otherwise its box and mask would describe a
# sliver no detector can be asked to find.
MIN_VISIBLE_FRACTION = 0.5
PLACEMENT_TRIES = 20
MIN_COLOUR_DISTANCE = 100.0


def _shape_mask(kind: int, centre_y, centre_x, size, grid_y, grid_x) -> np.ndarray:
    """bool [H, W]: the pixels whose centres fall inside the shape of side / diameter `size`."""
    half = size / 2.0
    if kind == 0:  # circle of diameter `size`
        return (grid_y - centre_y) ** 2 + (grid_x - centre_x) ** 2 <= half ** 2
    if kind == 1:  # axis-aligned square of side `size`
        return (np.abs(grid_y - centre_y) <= half) & (np.abs(grid_x - centre_x) <= half)
    # upright isosceles triangle: apex at the top centre, base of width `size` at the bottom
    top = centre_y - half
    inside_rows = (grid_y >= top) & (grid_y <= centre_y + half)
    return inside_rows & (np.abs(grid_x - centre_x) <= (grid_y - top) / 2.0)


def _background(rng, height, width, grid_y, grid_x):
    """float [H, W, 3]: a linear gradient between two random colours in a random direction."""
    start, end = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = grid_y * np.sin(angle) + grid_x * np.cos(angle)
    ramp = (ramp - ramp.min()) / np.float32(max(float(ramp.max() - ramp.min()), 1e-6))
    return start + (end - start) * ramp[:, :, None]


def _colour_unlike(rng, reference):
    """An RGB colour at least MIN_COLOUR_DISTANCE from `reference` (so every shape is visible)."""
    colour = rng.uniform(0, 255, size=3)
    for _ in range(PLACEMENT_TRIES):
        if np.linalg.norm(colour - reference) >= MIN_COLOUR_DISTANCE:
            break
        colour = rng.uniform(0, 255, size=3)
    return colour


def _tight_boxes(masks: np.ndarray) -> np.ndarray:
    """masks: bool [N, H, W] -> float32 [N, 4] yxyx pixel-edge boxes [ymin, xmin, ymax + 1, xmax + 1]."""
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    height, width = masks.shape[1:]
    y0 = rows.argmax(axis=1)
    y1 = height - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = width - cols[:, ::-1].argmax(axis=1)
    return np.stack([y0, x0, y1, x1], axis=1).astype(np.float32)


def _make_image(rng, height, width, grid_y, grid_x, min_objects, max_objects, min_size, max_size,
                allow_overlap):
    """One image: (image uint8 [H, W, 3], masks bool [N, H, W], labels int32 [N])."""
    canvas = _background(rng, height, width, grid_y, grid_x)
    background_mean = canvas.reshape(-1, 3).mean(axis=0)
    owner = np.full((height, width), -1, np.int32)  # which object each pixel shows, -1 = background
    full_areas, labels = [], []
    short_side = min(height, width)
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        kind = int(rng.integers(len(CLASS_NAMES)))  # drawn once, so a class that is harder to place stays as common
        for _ in range(PLACEMENT_TRIES):
            size = max(rng.uniform(min_size, max_size) * short_side, 3.0)
            centre_y = rng.uniform(size / 2, height - size / 2)
            centre_x = rng.uniform(size / 2, width - size / 2)
            mask = _shape_mask(kind, centre_y, centre_x, size, grid_y, grid_x)
            if mask.sum() < 4:
                continue
            if not allow_overlap and (owner[mask] >= 0).any():
                continue
            hidden = np.bincount(owner[mask & (owner >= 0)], minlength=len(labels))
            visible_after = np.bincount(owner[owner >= 0], minlength=len(labels)) - hidden
            if len(labels) and (visible_after < MIN_VISIBLE_FRACTION * np.asarray(full_areas)).any():
                continue
            owner[mask] = len(labels)
            canvas[mask] = _colour_unlike(rng, background_mean)
            full_areas.append(int(mask.sum()))
            labels.append(kind)
            break
    noise = rng.standard_normal(size=canvas.shape, dtype=np.float32) * rng.uniform(2.0, 12.0)
    image = np.clip(np.round(canvas + noise), 0, 255).astype(np.uint8)
    masks = owner[None, :, :] == np.arange(len(labels))[:, None, None]
    return image, masks, np.asarray(labels, np.int32)


def make_shapes(num_images: int, image_size=(128, 128), min_objects: int = 1, max_objects: int = 4, seed: int = 0,
                min_size: float = 0.15, max_size: float = 0.5, allow_overlap: bool = True) -> DetectionDataset:
    """Generate `num_images` synthetic images of circles, squares and triangles (labels 0, 1, 2).

    image_size: (height, width). Each image holds between min_objects and max_objects shapes (fewer when
    `allow_overlap=False` and no free place is found in PLACEMENT_TRIES tries) whose side / diameter is a uniform
    fraction in [min_size, max_size] of the image's short side. Later shapes occlude earlier ones, hiding at most
    half of any of them.

    Each Record holds, in memory: image uint8 [H, W, 3]; masks uint8 [N, H, W] (the visible pixels of each shape);
    boxes float32 [N, 4] yxyx tight to those pixels; labels int32 [N]; segmentation int32 [H, W] with 0 =
    background and label + 1 elsewhere. Image i depends only on (seed, i), so a longer set extends a shorter one.
    """
    height, width = (int(v) for v in image_size)
    if num_images < 0 or height < 8 or width < 8:
        raise ConfigError(f"make_shapes: need num_images >= 0 and an image_size of at least 8x8, got "
                          f"{num_images} and {image_size}")
    if not 0 <= min_objects <= max_objects:
        raise ConfigError(f"make_shapes: need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if not 0 < min_size <= max_size <= 1:
        raise ConfigError(f"make_shapes: need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}")
    grid_y, grid_x = np.meshgrid(np.arange(height, dtype=np.float32) + 0.5, np.arange(width, dtype=np.float32) + 0.5,
                                 indexing="ij")
    records = []
    for index in range(int(num_images)):
        rng = np.random.default_rng([int(seed), index])
        image, masks, labels = _make_image(rng, height, width, grid_y, grid_x, min_objects, max_objects,
                                           min_size, max_size, allow_overlap)
        segmentation = np.zeros((height, width), np.int32)
        for mask, label in zip(masks, labels):
            segmentation[mask] = label + 1
        records.append(Record(image_id=index, height=height, width=width, boxes=_tight_boxes(masks),
                              labels=labels, image=image, masks=masks.astype(np.uint8),
                              segmentation=segmentation))
    return DetectionDataset(records=records, class_names=list(CLASS_NAMES), report=ReadReport())
