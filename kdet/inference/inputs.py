"""What `kdet predict` takes: image files, folders, glob patterns, or (from Python) numpy arrays and tensors.

    items = image_items(["photos/", "scans/*.png", "a.jpg"])     -> [(name, path), ...]
    items = image_items(np.zeros([2, 480, 640, 3], np.uint8))    -> [("image_0", array), ("image_1", array)]

Output names never collide: a stem used by two inputs (`a/x.jpg`, `b/x.jpg`) is replaced by the path relative to
the inputs' common folder (`a__x`, `b__x`), and the suffix is added when that is not enough (`x_jpg`, `x_png`).
"""
import glob
import os
from pathlib import Path

import numpy as np

from kdet.data.images import IMAGE_SUFFIXES
from kdet.errors import KdetError


def image_paths(items):
    """Files, folders (their image files, sorted, not recursive) and glob patterns (`**` recurses) -> [Path].

    Raises KdetError naming an item that is neither an existing file or folder nor a pattern matching a file, or a
    folder without images."""
    paths = []
    for item in [items] if isinstance(items, (str, os.PathLike)) else items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise KdetError(f"{item}: folder has no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        elif glob.has_magic(str(item)):
            found = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
            if not found:
                raise KdetError(f"{item}: no file matches this pattern")
            paths.extend(found)
        else:
            raise KdetError(f"{item}: no such image file or folder")
    unique = {}
    for path in paths:  # the same file named twice (a folder and a glob) is predicted once
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def output_names(paths):
    """A distinct, file-system safe output name (no suffix) per input path, the stem where it is unique."""
    paths = [Path(p).resolve() for p in paths]
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    names = ["__".join(p.relative_to(common).with_suffix("").parts) for p in paths]
    if len(set(names)) != len(names):  # x.jpg and x.png in one folder
        names = [f"{name}_{p.suffix.lstrip('.').lower()}" for name, p in zip(names, paths)]
    return names


def image_items(images):
    """-> [(name, path or uint8-compatible array [H, W, 3])] for paths / folders / globs, one array [H, W, 3], a
    batch [B, H, W, 3], a list of arrays, or tensors of those shapes."""
    if hasattr(images, "numpy") and not isinstance(images, np.ndarray):
        images = images.numpy()
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise KdetError(f"images: expected [H, W, 3] or [B, H, W, 3], got shape {list(images.shape)}")
        return [(f"image_{i}", image) for i, image in enumerate(images)]
    items = list([images] if isinstance(images, (str, os.PathLike)) else images)
    if items and all(hasattr(item, "shape") for item in items):
        return [(f"image_{i}", np.asarray(getattr(item, "numpy", lambda: item)())) for i, item in enumerate(items)]
    if any(hasattr(item, "shape") for item in items):
        raise KdetError("images: pass either paths or arrays, not a mix of both")
    paths = image_paths(items)
    return list(zip(output_names(paths), paths))
