"""Image files: check that one decodes, read it as uint8 RGB, read a class-id PNG.

Every reader calls `check_image` on each record so that a corrupt or truncated file is found (and skipped, counted)
when the dataset is read, not hours into training when `tf.data` hits it.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from kdet.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@contextlib.contextmanager
def _truncated_images_are_errors():
    # Pillow's global LOAD_TRUNCATED_IMAGES (set to True by some libraries) makes a truncated JPEG decode "fine",
    # padded with grey. Force it off while kdet decodes, then restore whatever the caller had.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _open_decoded(path) -> Image.Image:
    """Open and fully decode `path`; any failure becomes a DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    with _truncated_images_are_errors():
        try:
            image = Image.open(path)
            image.load()  # decodes every byte: a truncated file raises here, `Image.open` only reads the header
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(path, f"cannot decode image: {error}") from None
    if image.width <= 0 or image.height <= 0:
        raise DataError(path, f"image has an empty size {image.width}x{image.height}")
    return image


def check_image(path) -> tuple:
    """Fully decode the image file at `path` and return its (height, width).

    Raises DataError(path, ...) if the file is missing, not an image, truncated or corrupt.
    """
    image = _open_decoded(path)
    return image.height, image.width


def to_uint8_rgb(image: Image.Image) -> np.ndarray:
    """A decoded Pillow image as uint8 [H, W, 3].

    Grayscale, palette, CMYK and RGBA images are converted to RGB (alpha is dropped, not blended).
    16-bit and 32-bit images (modes I;16*, I, F; microscopy TIFFs) are stretched by their own range,
    `(v - min) / (max - min) * 255` rounded, because such images use a small part of 0..65535 (the stardist crop
    spans 0..235) and a fixed `v / 257` would make them black. A constant image maps to 0.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = np.zeros_like(values) if high <= low else (values - low) / (high - low) * 255.0
        gray = np.round(scaled).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def read_image(path) -> np.ndarray:
    """Read the image file at `path` as uint8 [H, W, 3] RGB, decoded by kdet's one rule (kdet.data.decode): the
    pixels training and evaluation see. The file is fully checked first (a corrupt one is a DataError naming it)."""
    image = _open_decoded(path)
    from kdet.data.decode import decode_in_graph, decodes_in_graph
    if decodes_in_graph(path):
        import tensorflow as tf
        return decode_in_graph(tf.io.read_file(str(path))).numpy()
    return to_uint8_rgb(image)


def read_segmentation(path) -> np.ndarray:
    """Read a class-id PNG (VOC SegmentationClass / SegmentationObject) as int32 [H, W] of its raw pixel values.

    Palette PNGs are read as their palette indices (the class ids, 255 = ignore). `tf.io.decode_png` cannot do this:
    it expands the palette to colours, so class-id PNGs must be read with this function, not in `tf.data`.
    """
    image = _open_decoded(path)
    if image.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
        return np.asarray(image, dtype=np.int64).astype(np.int32)
    raise DataError(path, f"a class-id PNG must be palette or single-channel, this one is mode {image.mode}")


def encode_png(image: np.ndarray, palette: bool = False) -> bytes:
    """uint8 [H, W, 3] (or [H, W] class ids, written as a palette PNG when `palette`) to PNG bytes."""
    array = np.asarray(image)
    if palette:
        pil = Image.fromarray(array.astype(np.uint8))
        pil.putpalette(voc_palette())  # turns the "L" image into "P" keeping the values as palette indices
    else:
        pil = Image.fromarray(array.astype(np.uint8))
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def voc_palette() -> list:
    """The 256-colour PASCAL VOC palette (bit-interleaved colour map of the VOC devkit), flat [768] list."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette.extend((red, green, blue))
    return palette


def image_format(path) -> str:
    """'jpeg' or 'png' (what TF's decoders name them) from the file's first bytes; '' for anything else."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"\xff\xd8"):
        return "jpeg"
    if head.startswith(b"\x89PNG"):
        return "png"
    return ""


def progress(items, verbose: bool, description: str):
    """`items` wrapped in a tqdm bar when `verbose` and there are more than 50 (checking images takes a while)."""
    items = list(items)
    if verbose and len(items) > 50:
        from tqdm import tqdm

        return tqdm(items, desc=description, unit="image")
    return items


def check_record_image(path, annotated_size, report, strict: bool):
    """Decode the image of one record; return its (height, width), or None if the record must be skipped.

    annotated_size: (height, width) the annotation claims, or None. A file that does not decode, or whose size
    disagrees with the annotation (its boxes would land in the wrong place), is counted in `report` as a skipped
    image naming the file (or raises DataError with `strict`).
    """
    try:
        height, width = check_image(path)
    except DataError as error:
        report.add(path, error.detail + ": skipped", "image", strict)
        return None
    if annotated_size is not None and tuple(int(v) for v in annotated_size) != (height, width):
        report.add(path, f"image is {width}x{height} but the annotation says "
                         f"{int(annotated_size[1])}x{int(annotated_size[0])}: skipped", "image", strict)
        return None
    return height, width


def outside_reason(name) -> str | None:
    """Why the file name `name` from an annotation file would leave the dataset's folder ("is absolute", "contains
    '..'"), or None when it stays inside. Readers refuse such names instead of following them."""
    from pathlib import PurePosixPath, PureWindowsPath
    if not isinstance(name, str) or not name.strip():
        return f"is {name!r}, not a file name"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        return "is an absolute path"
    if ".." in PureWindowsPath(name).parts:  # PureWindowsPath splits at "/" and at a backslash
        return "contains '..'"
    return None


def list_images(directory) -> list:
    """Sorted paths of the image files under `directory` (recursive), by suffix."""
    found = []
    for root, _, files in os.walk(directory):
        for name in files:
            if name.lower().endswith(IMAGE_SUFFIXES):
                found.append(os.path.join(root, name))
    return sorted(found)
