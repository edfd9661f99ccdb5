"""Multi-scale training batches inside `tf.data` (YOLO9000, "Multi-Scale Training"): every `every` batches a new
square input size is drawn from `sizes`, and the batches are resized to it, boxes scaled with them.

    batches = make_tf_dataset(dataset, (416, 416), 8, training=True, ...)
    train = multiscale_batches(batches, model.data_needs.multiscale_sizes, every=10, seed=0,
                               map_fn=lambda b: kdet.training.recipe.to_keras(b, model))  # what kdet train does

Each size is one branch of a `tf.switch_case`, so inside a branch the batch has a static size and `map_fn` (the
target encoding, whose grid size depends on the input size) is traced once per size with static shapes; the
dataset's element spec has unknown height and width. The size sequence is random per epoch
(`rerandomize_each_iteration`) but reproducible for a seed. Masks follow the images with nearest-neighbour resizing.
"""
import functools

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def resize_batch(batch, size):
    """A padded batch of element dicts -> the same batch at size x size (boxes, scale and masks follow).

    batch["images"]: [B, H, W, 3]; boxes [B, N, 4] yxyx pixels; optional "scale" [B, 2] (input px per original px),
    "masks" [B, N, H, W] uint8, "segmentation_masks" [B, H, W, 1].
    """
    images = batch["images"]
    shape = tf.shape(images)
    sy = tf.cast(size, tf.float32) / tf.cast(shape[1], tf.float32)
    sx = tf.cast(size, tf.float32) / tf.cast(shape[2], tf.float32)
    out = dict(batch)
    out["images"] = tf.image.resize(images, [size, size])
    boxes = batch["bounding_boxes"]["boxes"] * tf.stack([sy, sx, sy, sx])
    out["bounding_boxes"] = dict(batch["bounding_boxes"], boxes=boxes)
    if "scale" in batch:
        out["scale"] = batch["scale"] * tf.stack([sy, sx])
    if "segmentation_masks" in batch:
        out["segmentation_masks"] = tf.image.resize(batch["segmentation_masks"], [size, size], method="nearest")
    if "masks" in batch:
        masks = batch["masks"]
        mask_shape = tf.shape(masks)
        flat = tf.reshape(masks, tf.concat([[-1], mask_shape[2:], [1]], axis=0))
        resized = tf.image.resize(flat, [size, size], method="nearest")
        out["masks"] = tf.cast(tf.reshape(resized, tf.concat([mask_shape[:2], [size, size]], axis=0)), masks.dtype)
    return out


def _at_size(batch, size, map_fn):
    resized = resize_batch(batch, size)
    return map_fn(resized) if map_fn is not None else resized


def size_schedule(num_sizes, every=10, seed=0):
    """Infinite dataset of int32 size indices in [0, num_sizes): one random draw repeated `every` times."""
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    draws = draws.map(lambda r: tf.cast(r % num_sizes, tf.int32))
    return draws.flat_map(lambda index: tf.data.Dataset.from_tensors(index).repeat(every))


def multiscale_batches(batches, sizes, every=10, seed=0, map_fn=None):
    """Resize each block of `every` consecutive batches to one size drawn from `sizes`.

    Args:
        batches: a `tf.data.Dataset` of padded batch dicts (`kdet.data.pipeline.make_tf_dataset`).
        sizes: square input sizes to choose from, e.g. (320, 352, ..., 608).
        every: batches per size (10 in the paper).
        seed: the size sequence's seed (a new sequence every epoch, the same run to run).
        map_fn: optional batch -> anything (e.g. `(images, model.encode_targets(batch))`), applied at the static size.
    Returns:
        the dataset of resized batches (or of map_fn's results).
    """
    sizes = tuple(sorted({int(s) for s in sizes}))
    if not sizes or min(sizes) <= 0:
        raise ValueError(f"multi-scale sizes must be positive integers, got {sizes}")
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    branches = [functools.partial(_at_size, size=size, map_fn=map_fn) for size in sizes]

    def apply(index, batch):
        return tf.switch_case(index, [functools.partial(branch, batch) for branch in branches])

    pairs = tf.data.Dataset.zip((size_schedule(len(sizes), every, seed), batches))
    resized = pairs.map(apply, num_parallel_calls=AUTOTUNE)
    count = int(batches.cardinality())
    if count >= 0:  # the flat_map schedule hides it; Keras wants it to know an epoch's length
        resized = resized.apply(tf.data.experimental.assert_cardinality(count))
    return resized.prefetch(AUTOTUNE)
