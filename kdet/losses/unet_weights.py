"""U-Net's border weight map, as graph ops (run in the train step from the instance masks; Ronneberger et al. 2015,
eq. 2):

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

d1 / d2: distance from background pixel x to the nearest / second nearest object (cell). The second term is large
only on the thin background gaps between touching objects, which the network must learn to keep as background so
that the objects come out separate; w_c balances the class frequencies. Paper: w0 = 10, sigma = 5 px. The border
term is added on background pixels (an object's own pixels have d1 = 0 and only get w_c), as the paper's Fig. 3d.

Distances: an exact Euclidean "two nearest distinct objects" transform, separable like Felzenszwalb &
Huttenlocher's distance transform: a pass along rows then along columns, each keeping per pixel the two smallest
squared distances that belong to different objects. Both passes look `radius` pixels each way, so distances are
exact up to `radius` and larger ones become `radius`; with the default radius (5 sigma) the border term of a
capped pixel is below w0 * exp(-12.5) < 4e-5.
"""
import tensorflow as tf

_FAR = 1e8  # squared distance meaning "no object within radius"


def instance_label_image(masks):
    """masks: [B, N, H, W] 0/1 instance masks (zero rows = padding) -> int32 [B, H, W], 0 = none, k = instance k.

    Where masks overlap, the later instance wins (the shapes generator draws later shapes on top).
    """
    masks = tf.cast(tf.convert_to_tensor(masks) > 0, tf.int32)
    ids = tf.range(1, tf.shape(masks)[1] + 1, dtype=tf.int32)[None, :, None, None]
    # One empty slot first, so that an image without instances (N = 0) still reduces to zeros.
    labelled = tf.concat([tf.zeros_like(masks[:, :1]), masks * ids], axis=1)
    return tf.reduce_max(labelled, axis=1)


def _windows(channels, fills, axis, radius):
    """[B, H, W] tensors -> [B, H, W, 2r + 1, n]: each at offsets -r..r along `axis` (1 = rows, 2 = columns), with
    its `fill` outside the image. One extract_patches for all of them (a loop of shifted slices makes a graph that
    takes tf.data seconds to build, and one call per tensor is slower)."""
    pad = [[0, 0], [0, 0], [0, 0]]
    pad[axis] = [radius, radius]
    padded = tf.stack([tf.pad(x, pad, constant_values=fill) for x, fill in zip(channels, fills)], axis=-1)
    size = [1, 1, 1, 1]
    size[axis] = 2 * radius + 1
    patches = tf.image.extract_patches(padded, sizes=size, strides=[1, 1, 1, 1], rates=[1, 1, 1, 1], padding="VALID")
    shape = tf.shape(channels[0])
    return tf.reshape(patches, [shape[0], shape[1], shape[2], 2 * radius + 1, len(channels)])


def _two_nearest_pass(dist1, label1, dist2, label2, axis, radius):
    """One separable pass: candidates at offsets -radius..radius along `axis` -> the two best distinct labels.

    Distances are squared; labels ride along as float32 (exact for ids below 2^24).
    """
    windows = _windows([dist1, dist2, label1, label2], [_FAR, _FAR, -1.0, -1.0], axis, radius)
    squares = tf.square(tf.range(-radius, radius + 1, dtype=tf.float32))[:, None]
    cand_d = tf.reshape(windows[..., :2] + squares, tf.concat([tf.shape(dist1), [-1]], 0))  # [B, H, W, 2(2r+1)]
    cand_l = tf.reshape(windows[..., 2:], tf.shape(cand_d))
    new_d1, new_l1 = _nearest(cand_d, cand_l)
    other = tf.where(tf.equal(cand_l, new_l1[..., None]), _FAR, cand_d)  # the second must be another object
    new_d2, new_l2 = _nearest(other, cand_l)
    return new_d1, new_l1, new_d2, new_l2


def _nearest(distances, labels):
    """The smallest distance over the last axis and a label that has it (the largest, on ties)."""
    smallest = tf.reduce_min(distances, axis=-1)
    label = tf.reduce_max(tf.where(tf.equal(distances, smallest[..., None]), labels, -3.0), axis=-1)
    return smallest, label


def two_nearest_distances(instances, radius):
    """Euclidean distances to the nearest and second-nearest distinct instance.

    instances: int [B, H, W], 0 = no instance, k > 0 = instance k.
    Returns (d1, d2) float32 [B, H, W], capped at `radius`; a pixel inside instance k has d1 = 0.
    """
    instances = tf.cast(instances, tf.int32)
    inside = instances > 0
    dist1 = tf.where(inside, 0.0, _FAR)
    label1 = tf.where(inside, tf.cast(instances, tf.float32), -1.0)
    dist2 = tf.fill(tf.shape(dist1), _FAR)
    label2 = tf.fill(tf.shape(dist1), -2.0)
    state = (dist1, label1, dist2, label2)
    for axis in (2, 1):  # along rows, then along columns
        state = _two_nearest_pass(*state, axis=axis, radius=radius)
    dist1, _, dist2, _ = state
    cap = float(radius)
    d1 = tf.where(dist1 >= _FAR, cap, tf.minimum(tf.sqrt(dist1), cap))
    d2 = tf.where(dist2 >= _FAR, cap, tf.minimum(tf.sqrt(dist2), cap))
    return d1, d2


def border_weight_map(instances, labels=None, class_weights=None, w0=10.0, sigma=5.0, radius=None):
    """The weight map of a batch.

    Args:
        instances: int [B, H, W] instance ids (0 = background), e.g. `instance_label_image(batch["masks"])`.
        labels: optional int [B, H, W] semantic labels; the border term goes to pixels with label 0 (background,
            which includes the gaps drawn between touching objects); default: pixels outside every instance.
        class_weights: optional float [C]: w_c(x) = class_weights[labels(x)] (1 where labels are 255 / absent).
        w0, sigma: border weight and width (px).
        radius: distance horizon in px; default ceil(5 sigma).
    Returns:
        float32 [B, H, W].
    """
    radius = int(-(-5 * sigma // 1)) if radius is None else int(radius)
    d1, d2 = two_nearest_distances(instances, radius)
    border = w0 * tf.exp(-tf.square(d1 + d2) / (2.0 * sigma * sigma))
    if labels is None:
        background = tf.equal(tf.cast(instances, tf.int32), 0)
        class_term = tf.ones_like(border)
    else:
        labels = tf.cast(labels, tf.int32)
        background = tf.equal(labels, 0)
        class_term = tf.ones_like(border)
        if class_weights is not None:
            weights = tf.cast(class_weights, tf.float32)
            in_range = tf.logical_and(labels >= 0, labels < tf.shape(weights)[0])
            class_term = tf.where(in_range, tf.gather(weights, tf.where(in_range, labels, 0)), 1.0)
    return class_term + tf.where(background, border, 0.0)
