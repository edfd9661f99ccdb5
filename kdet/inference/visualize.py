"""Drawing detections and segmentation masks on images, for inspection and reports.

Drawing uses Pillow's ImageDraw: `keras.visualization.draw_bounding_boxes` needs OpenCV, which kdet does not
depend on, and it paints every class in one colour. Colours come from the PASCAL VOC palette, so a class has the
same colour in a detection drawing and in a segmentation overlay (class c of a detector uses palette entry c + 1,
because entry 0 is VOC's black background).

All functions take and return uint8 [H, W, 3] RGB numpy images and never modify their input.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kdet.errors import DataError

VOC_IGNORE_INDEX = 255


def voc_palette(num_colors=256):
    """The PASCAL VOC colour map: [num_colors, 3] uint8; entry i spreads the bits of i over R, G and B."""
    palette = np.zeros((num_colors, 3), np.uint8)
    for index in range(num_colors):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


_PALETTE = voc_palette()


def class_color(class_id):
    """RGB tuple of a detector class (0-based): VOC palette entry class_id + 1, skipping black and the void colour."""
    return tuple(int(v) for v in _PALETTE[1 + int(class_id) % 254])


def rgb_uint8(image):
    """An image as uint8 [H, W, 3]: grey [H, W] / [H, W, 1] repeated, float 0..255 rounded and clipped."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise DataError("image", f"expected [H, W, 3] (or grey [H, W]), got shape {image.shape}")
    if image.dtype != np.uint8:
        # Float images follow the data contract's 0..255 range.
        image = np.clip(np.round(image.astype(np.float64)), 0, 255).astype(np.uint8)
    return image


def _text_color(background):
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 128 else (255, 255, 255)


def scaled_sizes(height, width):
    """(box line width, label font size) for an image: 2 px and 11 pt at 640 px, growing with the longer side."""
    longer = max(int(height), int(width))
    return max(1, round(longer / 320)), max(9, round(longer / 58))


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_detections(image, boxes, classes, scores=None, class_names=None, score_threshold=0.0, *,
                    line_width=None, bounding_box_format="yxyx", masks=None, mask_alpha=0.45):
    """Boxes with "name 0.93" labels, one colour per class.

    image: uint8 [H, W, 3] (float 0..255 and grey images are accepted).
    boxes: [K, 4] absolute pixels in `bounding_box_format` (kdet's "yxyx" by default; other Keras formats are
    converted with `keras.utils.bounding_boxes.convert_format`). classes: int [K] 0-based (negative = padding,
    skipped). scores: [K] or None (ground truth: labels without a score). class_names: list indexed by class, or
    None to print the class index. Boxes scoring below `score_threshold` are not drawn. line_width: None scales the
    lines and the labels with the image (`scaled_sizes`). masks: [K, H, W] instance masks (0/1), drawn translucent
    in the class colour with a one-pixel outline under the boxes.
    Returns a new uint8 [H, W, 3] image; higher-scoring boxes are drawn last, so their labels stay readable.
    """
    rgb = rgb_uint8(image)
    if masks is not None:
        rgb = draw_instance_masks(rgb, masks, classes, scores, score_threshold, mask_alpha)
    canvas = Image.fromarray(rgb)
    height, width = canvas.height, canvas.width
    default_width, font_size = scaled_sizes(height, width)
    line_width = default_width if line_width is None else int(line_width)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if bounding_box_format != "yxyx" and len(boxes):
        from keras.utils import bounding_boxes as keras_boxes  # imported here: only this path needs Keras

        boxes = np.asarray(keras_boxes.convert_format(boxes.astype(np.float32), bounding_box_format, "yxyx",
                                                      height=height, width=width), np.float64)
    classes = np.asarray(classes, np.int64).reshape(-1)
    scores_given = scores is not None
    scores = np.asarray(scores if scores_given else np.ones(len(boxes)), np.float64).reshape(-1)
    if not (len(boxes) == len(classes) == len(scores)):
        raise DataError("boxes", f"{len(boxes)} boxes, {len(classes)} classes and {len(scores)} scores differ")

    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    for index in np.argsort(scores, kind="stable"):
        class_id, score = int(classes[index]), scores[index]
        if class_id < 0 or score < score_threshold:
            continue
        y1, x1, y2, x2 = boxes[index]
        # Continuous box [x1, x2) covers pixel columns x1 .. x2 - 1; Pillow's rectangle corners are inclusive.
        left, top = int(np.clip(np.floor(x1), 0, width - 1)), int(np.clip(np.floor(y1), 0, height - 1))
        right = int(np.clip(np.ceil(x2) - 1, left, width - 1))
        bottom = int(np.clip(np.ceil(y2) - 1, top, height - 1))
        color = class_color(class_id)
        draw.rectangle([left, top, right, bottom], outline=color, width=line_width)

        name = class_names[class_id] if class_names is not None and class_id < len(class_names) else str(class_id)
        text = f"{name} {score:.2f}" if scores_given else str(name)
        text_left, text_top, text_right, text_bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = text_right - text_left + 4, text_bottom - text_top + 4
        # Label above the box when it fits, else just inside its top edge.
        label_top = top - text_h if top - text_h >= 0 else top
        # Slide the label left rather than cut it at the right border.
        label_left = max(0, min(left, width - 1 - text_w))
        draw.rectangle([label_left, label_top, label_left + text_w, label_top + text_h], fill=color)
        draw.text((label_left + 2 - text_left, label_top + 2 - text_top), text, fill=_text_color(color),
                  font=font)
    return np.asarray(canvas).copy()


def draw_instance_masks(image, masks, classes, scores=None, score_threshold=0.0, alpha=0.45):
    """Instance masks [K, H, W] (0/1) blended into image [H, W, 3] in their class colours (classes [K], negative =
    padding, skipped), each with its outline (mask pixels with a 4-neighbour outside the mask) in full colour."""
    out = rgb_uint8(image).astype(np.float64)
    masks = np.asarray(masks).astype(bool).reshape((-1,) + out.shape[:2])
    classes = np.asarray(classes, np.int64).reshape(-1)
    scores = np.ones(len(classes)) if scores is None else np.asarray(scores, np.float64).reshape(-1)
    if not (len(masks) == len(classes) == len(scores)):
        raise DataError("masks", f"{len(masks)} masks, {len(classes)} classes and {len(scores)} scores differ")
    for index in np.argsort(scores, kind="stable"):
        mask = masks[index]
        if classes[index] < 0 or scores[index] < score_threshold or not mask.any():
            continue
        color = np.asarray(class_color(classes[index]), np.float64)
        out[mask] = (1.0 - alpha) * out[mask] + alpha * color
        padded = np.pad(mask, 1)
        inside = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        out[mask & ~inside] = color
    return np.round(out).astype(np.uint8)


def heat_colors(heat):
    """heat [..] in 0..1 -> RGB uint8 [.., 3] on a black-red-yellow-white ramp (each third of the range lifts one
    channel: red, then green, then blue)."""
    heat = np.clip(np.asarray(heat, np.float64), 0.0, 1.0)
    ramp = np.stack([np.clip(3 * heat - k, 0.0, 1.0) for k in range(3)], axis=-1)
    return np.round(255 * ramp).astype(np.uint8)


def draw_heatmap(image, heat, alpha=0.7):
    """The heatmap heat [H, W] (0..1, on the image's pixels) blended over image [H, W, 3]: each pixel takes
    alpha * heat of the heat colour (`heat_colors`), so cold regions show the image and peaks glow.
    Returns a new uint8 [H, W, 3] image."""
    image = rgb_uint8(image)
    heat = np.clip(np.asarray(heat, np.float64), 0.0, 1.0)
    if heat.shape != image.shape[:2]:
        raise DataError("heatmap", f"shape {heat.shape} does not match the image {image.shape[:2]}")
    weight = (alpha * heat)[..., None]
    blended = (1.0 - weight) * image.astype(np.float64) + weight * heat_colors(heat).astype(np.float64)
    return np.round(blended).astype(np.uint8)


def draw_segmentation(image, mask, num_classes, alpha=0.5, background_index=0):
    """Colour overlay of a semantic mask in the VOC palette.

    image: uint8 [H, W, 3]; mask: int [H, W] (or [H, W, 1]) class ids in 0 .. num_classes - 1, or 255 = ignore
    (drawn in VOC's cream "void" colour). Pixels of `background_index` are left as they are (None colours
    them too, in black). alpha: weight of the class colour.
    Returns a new uint8 [H, W, 3] image.
    """
    image = rgb_uint8(image)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != image.shape[:2]:
        raise DataError("mask", f"shape {mask.shape} does not match the image {image.shape[:2]}")
    mask = mask.astype(np.int64)
    unknown = (mask != VOC_IGNORE_INDEX) & ((mask < 0) | (mask >= num_classes))
    if unknown.any():
        raise DataError("mask", f"class id {int(mask[unknown][0])} is not in the {num_classes} classes "
                                f"nor the ignore value {VOC_IGNORE_INDEX}")
    colored = _PALETTE[mask].astype(np.float64)
    blended = np.round((1.0 - alpha) * image.astype(np.float64) + alpha * colored).astype(np.uint8)
    keep = np.zeros(mask.shape, bool) if background_index is None else mask == background_index
    return np.where(keep[..., None], image, blended)


def save_png(image, path):
    """Write a uint8 [H, W, 3] (or [H, W]) image as PNG, creating parent directories. Returns the Path."""
    return save_picture(image, path, "png")


def save_picture(image, path, image_format="png", quality=92):
    """Write a uint8 [H, W, 3] (or [H, W]) image as PNG or JPEG ("jpg"), creating parent directories, through a
    temporary file renamed into place (a killed run leaves no half-written picture). Returns the Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    if image_format == "png":
        Image.fromarray(rgb_uint8(image)).save(temporary, format="PNG")
    elif image_format in ("jpg", "jpeg"):
        Image.fromarray(rgb_uint8(image)).save(temporary, format="JPEG", quality=int(quality))
    else:
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    temporary.replace(path)
    return path
