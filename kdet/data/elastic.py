"""Elastic deformation, U-Net's key augmentation for few training images (Ronneberger et al. 2015, section 3.1):

    "smooth deformations using random displacement vectors on a coarse 3 by 3 grid. The displacements are sampled
     from a Gaussian distribution with 10 pixels standard deviation. Per-pixel displacements are then computed
     using bicubic interpolation."

Graph ops only, for tf.data. The same displacement field moves the image (bilinear sampling), the semantic mask and
the instance masks (nearest, so ids stay ids); samples falling outside the image are mirrored back in, like U-Net's
overlap-tile border. Boxes are recomputed as the tight boxes of the moved instance masks when the element has masks,
and kept as they are otherwise. Works on one element dict ([H, W, 3] images) or a batch ([B, H, W, 3]).
"""
import tensorflow as tf


def random_displacements(batch, height, width, grid=3, sigma=10.0, seed=None):
    """[B, H, W, 2] (dy, dx) pixels: N(0, sigma) on a grid x grid lattice, bicubically interpolated to every pixel."""
    coarse = tf.random.normal([batch, grid, grid, 2], stddev=sigma, seed=seed)
    return tf.image.resize(coarse, tf.stack([height, width]), method="bicubic")


def _mirror(coordinate, size):
    """Reflect coordinates into [0, size - 1] (one reflection: displacements are small next to the image)."""
    last = tf.cast(size - 1, tf.float32)
    coordinate = tf.abs(coordinate)
    return tf.clip_by_value(last - tf.abs(last - coordinate), 0.0, last)


def _sample_bilinear(image, ys, xs):
    """image [B, H, W, C] at float positions ys, xs [B, H, W] -> [B, H, W, C]."""
    height, width = tf.shape(image)[1], tf.shape(image)[2]
    y0 = tf.floor(ys)
    x0 = tf.floor(xs)
    wy = (ys - y0)[..., None]
    wx = (xs - x0)[..., None]
    y0 = tf.cast(y0, tf.int32)
    x0 = tf.cast(x0, tf.int32)
    y1 = tf.minimum(y0 + 1, height - 1)
    x1 = tf.minimum(x0 + 1, width - 1)

    def at(y, x):
        return tf.gather_nd(image, tf.stack([y, x], axis=-1), batch_dims=1)

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def _sample_nearest(values, ys, xs):
    """values [B, H, W, C] (any dtype) at the nearest pixel of ys, xs [B, H, W]."""
    indices = tf.stack([tf.cast(tf.round(ys), tf.int32), tf.cast(tf.round(xs), tf.int32)], axis=-1)
    return tf.gather_nd(values, indices, batch_dims=1)


def _tight_boxes(masks):
    """masks [B, N, H, W] -> [B, N, 4] yxyx pixel-edge boxes of their pixels (zeros for an empty mask)."""
    present = masks > 0
    rows = tf.reduce_any(present, axis=3)
    cols = tf.reduce_any(present, axis=2)

    def extent(flags):
        size = tf.shape(flags)[-1]
        index = tf.range(size, dtype=tf.float32)
        first = tf.reduce_min(tf.where(flags, index, tf.cast(size, tf.float32)), axis=-1)
        last = tf.reduce_max(tf.where(flags, index, -1.0), axis=-1) + 1.0
        return first, last

    y0, y1 = extent(rows)
    x0, x1 = extent(cols)
    boxes = tf.stack([y0, x0, y1, x1], axis=-1)
    return tf.where(tf.reduce_any(rows, axis=-1)[..., None], boxes, 0.0)


def elastic_deform(element, grid=3, sigma=10.0, seed=None):
    """Deform images (+ "segmentation_masks", "masks", boxes) of an element or a batch with one random field each.

    Args:
        element: dict with "images" [H, W, 3] or [B, H, W, 3], optional "segmentation_masks" [(B,) H, W, 1],
            "masks" [(B,) N, H, W], "bounding_boxes".
        grid: coarse lattice side (paper: 3).
        sigma: displacement standard deviation in pixels (paper: 10).
    Returns:
        a new dict of the same structure and dtypes.
    """
    element = tf.nest.map_structure(tf.convert_to_tensor, element)
    shape = tf.shape(element["images"])
    batch = shape[0] if element["images"].shape.rank == 4 else 1
    height, width = shape[-3], shape[-2]
    moves = random_displacements(batch, height, width, grid, sigma, seed)
    return apply_displacements(element, moves if element["images"].shape.rank == 4 else moves[0])


def apply_displacements(element, displacements):
    """Move every pixel of an element (or batch) by a given field: out(p) = in(p + displacement(p)).

    displacements: float [H, W, 2] (or [B, H, W, 2]) as (dy, dx) pixels. Sampling positions outside the image are
    mirrored back in. Images: bilinear; masks: nearest.
    """
    element = tf.nest.map_structure(tf.convert_to_tensor, element)
    batched = element["images"].shape.rank == 4
    keys = ("images", "segmentation_masks", "masks", "bounding_boxes")
    out = dict(element) if batched else {k: (tf.nest.map_structure(lambda t: t[None], v) if k in keys else v)
                                         for k, v in element.items()}
    moves = tf.cast(displacements if batched else displacements[None], tf.float32)
    images = out["images"]
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    ys = tf.cast(tf.range(height), tf.float32)[None, :, None] + moves[..., 0]
    xs = tf.cast(tf.range(width), tf.float32)[None, None, :] + moves[..., 1]
    ys, xs = _mirror(ys, height), _mirror(xs, width)
    out["images"] = tf.cast(_sample_bilinear(tf.cast(images, tf.float32), ys, xs), images.dtype)
    if "segmentation_masks" in out:
        out["segmentation_masks"] = _sample_nearest(out["segmentation_masks"], ys, xs)
    if "masks" in out:
        moved = _sample_nearest(tf.transpose(out["masks"], [0, 2, 3, 1]), ys, xs)
        out["masks"] = tf.transpose(moved, [0, 3, 1, 2])
        labels = out["bounding_boxes"]["labels"]
        # Boxes of padding rows (label -1) stay zero, as padded_batch made them.
        boxes = tf.where((labels >= 0)[..., None], _tight_boxes(out["masks"]), 0.0)
        out["bounding_boxes"] = {"boxes": boxes, "labels": labels}
    if not batched:
        for key in ("images", "segmentation_masks", "masks"):
            if key in out:
                out[key] = out[key][0]
        if "bounding_boxes" in out:
            out["bounding_boxes"] = tf.nest.map_structure(lambda t: t[0], out["bounding_boxes"])
    return out
