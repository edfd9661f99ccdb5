"""CenterNet's training targets (Zhou et al. 2019, "Objects as Points"), in graph with fixed shapes.

Each object k of class c with box centre p (input pixels) becomes, on the stride-R output grid:
  * a peak at p~ = floor(p / R) in heatmap channel c: a Gaussian exp(-((x - p~x)^2 + (y - p~y)^2) / (2 sigma^2)),
    sigma = diameter / 6, diameter = 2 r + 1, cut to the (2 r + 1)^2 square around p~; where the Gaussians of two
    objects of one class overlap the heatmap takes the element-wise maximum;
  * a size target (h, w) / R and an offset target p / R - p~, read only at p~ (index p~y * w_out + p~x).
The radius r is CornerNet's `gaussian_radius` with min_overlap 0.7, computed exactly as the reference code
(xingyizhou/CenterNet src/lib/utils/image.py) does, from the box's size in output cells rounded up, then truncated
to an int. The reference solves three quadratics for the radius at which a box shifted by r keeps IoU >= 0.7 and
takes the smallest root; its second and third roots divide by 2 instead of 2a (the known quirk: r2 is 4x and r3 is
2 * 0.7 = 1.4x the root they solve for), which kdet reproduces, so the heatmaps are the reference's.

Boxes are clipped to the image first; an object with zero height or width after clipping, or a label of -1
(padding) or >= num_classes, gets no peak and no size / offset loss (the reference skips boxes with h, w <= 0).
An object smaller than one output cell gets radius 0: one cell of value 1.
"""
import tensorflow as tf

DEFAULT_MIN_OVERLAP = 0.7


def gaussian_radius(height, width, min_overlap=DEFAULT_MIN_OVERLAP):
    """CornerNet / CenterNet's radius, as the reference computes it (quirk included), element-wise.

    height, width: float tensors [...] (the box size in output cells, rounded up by the caller as the reference
    does). Returns float32 [...]: min(r1, r2, r3), not yet truncated.
    """
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + tf.sqrt(b1 ** 2 - 4 * c1)) / 2
    a2, b2, c2 = 4.0, 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 + tf.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height
    r3 = (b3 + tf.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return tf.minimum(tf.minimum(r1, r2), r3)


def output_size(image_size, stride):
    """(ceil(H / R), ceil(W / R)) for ints or scalar int tensors (the model's output grid)."""
    return tuple(-(-s // stride) for s in image_size)


def draw_gaussians(centers, radii, labels, valid, grid_size, num_classes):
    """Splat one Gaussian per object into per-class heatmaps, element-wise max where they overlap.

    centers: int32 [B, M, 2] (y, x) cell of each object; radii: int32 [B, M] (>= 0); labels: int32 [B, M];
    valid: bool [B, M] (False draws nothing); grid_size: (h, w) ints or scalar tensors; num_classes: C.
    Returns float32 [B, h, w, C] in [0, 1], exactly 1 at every valid centre.
    """
    height, width = grid_size
    radius = tf.cast(radii, tf.float32)[..., None]                              # [B, M, 1]
    sigma = (2.0 * radius + 1.0) / 6.0

    def profile(length, center):
        """[B, M, length]: exp(-d^2 / (2 sigma^2)) for |d| <= r, 0 beyond; d = cell - centre."""
        distance = tf.cast(tf.range(length)[None, None, :] - center[..., None], tf.float32)
        value = tf.exp(-distance * distance / (2.0 * sigma * sigma))
        return tf.where(tf.abs(distance) <= radius, value, 0.0)

    gaussians = profile(height, centers[..., 0])[..., :, None] * profile(width, centers[..., 1])[..., None, :]
    batch, count = tf.shape(labels)[0], tf.shape(labels)[1]
    # One segment per (image, class); invalid objects go to a last segment that is dropped.
    segment = tf.where(valid, tf.range(batch)[:, None] * num_classes + labels, batch * num_classes)
    flat = tf.reshape(gaussians, [batch * count, height * width])
    per_class = tf.math.unsorted_segment_max(flat, tf.reshape(segment, [-1]), batch * num_classes + 1)
    heatmap = tf.reshape(per_class[:batch * num_classes], [batch, num_classes, height, width])
    return tf.maximum(tf.transpose(heatmap, [0, 2, 3, 1]), 0.0)  # empty segments are -inf-like: floor at 0


def centernet_targets(boxes, labels, image_size, num_classes, stride=4, min_overlap=DEFAULT_MIN_OVERLAP):
    """All CenterNet targets of a padded batch.

    boxes: float32 [B, M, 4] yxyx input pixels; labels: int32 [B, M] (-1 = padding); image_size: (H, W) ints or
    scalar tensors; num_classes: C; stride: R.
    Returns {"heatmap": float32 [B, h, w, C], "indices": int32 [B, M] (p~y * w + p~x), "sizes": float32 [B, M, 2]
    (h, w) / R, "offsets": float32 [B, M, 2] (y, x) p / R - p~, "mask": float32 [B, M] 1 for objects with a peak},
    h, w = ceil(H / R), ceil(W / R).
    """
    grid_h, grid_w = output_size(image_size, stride)
    height, width = (tf.cast(s, tf.float32) for s in image_size)
    boxes = tf.cast(boxes, tf.float32)
    labels = tf.cast(labels, tf.int32)
    low = tf.stack([0.0, 0.0, 0.0, 0.0])
    high = tf.stack([height, width, height, width])
    cells = tf.clip_by_value(boxes, low, high) / float(stride)                  # [B, M, 4] in output cells
    sizes = tf.stack([cells[..., 2] - cells[..., 0], cells[..., 3] - cells[..., 1]], axis=-1)
    valid = (labels >= 0) & (labels < num_classes) & (sizes[..., 0] > 0) & (sizes[..., 1] > 0)
    center = (cells[..., :2] + cells[..., 2:]) / 2.0                           # [B, M, 2] (y, x)
    limit = tf.stack([tf.cast(grid_h, tf.float32), tf.cast(grid_w, tf.float32)]) - 1.0
    cell = tf.clip_by_value(tf.floor(center), 0.0, limit)                      # a centre on the far border
    radius = gaussian_radius(tf.math.ceil(sizes[..., 0]), tf.math.ceil(sizes[..., 1]), min_overlap)
    radius = tf.maximum(tf.cast(tf.where(valid, radius, 0.0), tf.int32), 0)   # int(r): truncation, r >= 0
    cell_int = tf.cast(cell, tf.int32)
    safe_labels = tf.where(valid, labels, 0)
    heatmap = draw_gaussians(cell_int, radius, safe_labels, valid, (grid_h, grid_w), num_classes)
    mask = tf.cast(valid, tf.float32)
    return {"heatmap": heatmap,
            "indices": tf.where(valid, cell_int[..., 0] * grid_w + cell_int[..., 1], 0),
            "sizes": sizes * mask[..., None],
            "offsets": (center - cell) * mask[..., None],
            "mask": mask}
