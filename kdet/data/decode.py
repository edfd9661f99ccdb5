"""The one image decoder of kdet: the same pixels for training, evaluation, `kdet predict` and `kdet data show`.

The rule (docs/design.md, "Data"):
- An 8-bit JPEG (RGB or grayscale) or an 8-bit PNG (RGB, RGBA, grayscale or palette) is decoded by TensorFlow,
  with `decode_in_graph`: inside the tf.data graph for training and evaluation, eagerly for `read_image`
  (predict, data show). JPEG uses dct_method INTEGER_ACCURATE, which gives exactly Pillow's (and torchvision's)
  pixels; TF's default method differs from them by up to 4 levels.
- Every other file (TIFF, 16-bit PNG, CMYK JPEG, BMP, GIF, WebP, ...) is decoded by Pillow in Python
  (`kdet.data.images.to_uint8_rgb`), once, and enters tf.data as pixels. A 16- or 32-bit single-channel image is
  brought to 8 bits by its own range: `round((v - min) / (max - min) * 255)` (a constant image becomes 0), because
  such files use a small part of 0..65535 and a fixed `v / 257` would make them black.
"""
from __future__ import annotations

from pathlib import Path

import tensorflow as tf

IN_GRAPH_MODES = {"jpeg": ("RGB", "L"), "png": ("RGB", "RGBA", "L", "P")}


def _kind_and_depth(head: bytes):
    """('jpeg' | 'png' | '', bit depth of a PNG or 8) from the first 25 bytes of a file."""
    if head.startswith(b"\xff\xd8"):
        return "jpeg", 8
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 25:
        return "png", head[24]  # IHDR: 8 signature + 4 length + 4 type + 4 width + 4 height, then the bit depth
    return "", 0


def decodes_in_graph(path) -> bool:
    """Does the rule decode the file at `path` with TensorFlow (True) or with Pillow in Python (False)?"""
    from PIL import Image
    try:
        with open(Path(path), "rb") as handle:
            kind, depth = _kind_and_depth(handle.read(25))
        if kind not in IN_GRAPH_MODES or depth != 8:
            return False
        with Image.open(path) as probe:
            return probe.mode in IN_GRAPH_MODES[kind]
    except (OSError, SyntaxError, ValueError):
        return False  # a missing or broken file: Pillow's decode (read_image) names it in its error


def decode_in_graph(contents):
    """Encoded JPEG / PNG bytes (scalar string tensor) -> uint8 [H, W, 3] (graph ops only)."""
    image = tf.cond(tf.io.is_jpeg(contents),
                    lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
                    lambda: tf.io.decode_image(contents, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image
