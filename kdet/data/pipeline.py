"""`DetectionDataset` -> `tf.data` of element dicts (docs/design.md, "Data"), batched with padding.

Everything after the source is graph ops (decode, resize, augment, pad): no Python in the hot path, so the input
pipeline keeps ahead of a training step on 2 cores (see benchmarks/bench_pipeline.py).
"""

import numpy as np
import tensorflow as tf

from kdet.data.augment import Augmenter, resize_image
from kdet.data.decode import decode_in_graph, decodes_in_graph
from kdet.data.elastic import elastic_deform
from kdet.data.ssd_augment import SSDAugment
from kdet.errors import ConfigError, DataError

AUTOTUNE = tf.data.AUTOTUNE


def _ragged(arrays, inner_shape, dtype):
    lengths = [len(a) for a in arrays]
    flat = np.concatenate([np.asarray(a, dtype).reshape((-1,) + inner_shape) for a in arrays]) if arrays else \
        np.zeros((0,) + inner_shape, dtype)
    return tf.RaggedTensor.from_row_lengths(flat, np.asarray(lengths, np.int64))


def _source(dataset, with_masks, with_segmentation):
    """The per-record tensors `from_tensor_slices` walks over (paths or in-memory pixels, ragged boxes)."""
    records = dataset.records
    if not records:
        raise DataError("dataset", "no usable images (every record was skipped or the split is empty)")
    source = {
        "boxes": _ragged([r.boxes for r in records], (4,), np.float32),
        "labels": _ragged([r.labels for r in records], (), np.int32),
        "image_id": np.asarray([r.image_id for r in records], np.int64),
        "original_size": np.asarray([[r.height, r.width] for r in records], np.int32),
    }
    # kdet's one decoding rule (kdet.data.decode): files TF decodes as Pillow does are read in the graph; the
    # others (TIFF, 16-bit, CMYK, ...) and in-memory images enter as flat ragged rows of pixels (empty for a file
    # read in the graph), reshaped by original_size inside the graph.
    in_graph = [r.image is None and decodes_in_graph(r.path) for r in records]
    if not all(in_graph):
        from kdet.data.images import read_image
        source["pixels"] = _ragged([np.zeros(0, np.uint8) if graph else
                                    (r.image if r.image is not None else read_image(r.path)).reshape(-1)
                                    for r, graph in zip(records, in_graph)], (), np.uint8)
    if any(in_graph):
        source["path"] = np.asarray([r.path if graph else "" for r, graph in zip(records, in_graph)])
    if with_masks:
        missing = [r.name for r in records if r.masks is None]
        if missing:
            raise DataError(missing[0], "instance masks requested but the record has none")
        source["masks"] = _ragged([r.masks.reshape(-1) for r in records], (), np.uint8)
    if with_segmentation:
        missing = [r.name for r in records if r.segmentation is None and r.segmentation_path is None]
        if missing:
            raise DataError(missing[0], "semantic masks requested but the record has none")
        # Class-id PNGs are palette images: TF's decode_png would turn the palette into colours, so they are read
        # (palette indices = class ids, 255 = ignore) in Python once, here.
        from kdet.data.images import read_segmentation
        source["segmentation"] = _ragged([(r.segmentation if r.segmentation is not None
                                           else read_segmentation(r.segmentation_path)).reshape(-1)
                                          for r in records], (), np.int32)
    return source


def _load(item):
    size = item["original_size"]
    from_pixels = lambda: tf.reshape(item["pixels"], [size[0], size[1], 3])  # noqa: E731
    from_file = lambda: decode_in_graph(tf.io.read_file(item["path"]))  # noqa: E731
    if "pixels" in item and "path" in item:
        image = tf.cond(tf.size(item["pixels"]) > 0, from_pixels, from_file)
    else:
        image = from_pixels() if "pixels" in item else from_file()
    element = {
        "images": tf.cast(image, tf.float32),
        "bounding_boxes": {"boxes": item["boxes"], "labels": item["labels"]},
        "image_id": item["image_id"],
        "original_size": size,
    }
    if "masks" in item:
        element["masks"] = tf.reshape(item["masks"], [-1, size[0], size[1]])
    if "segmentation" in item:
        element["segmentation_masks"] = tf.reshape(item["segmentation"], [size[0], size[1], 1])
    return element


def make_tf_dataset(dataset, image_size, batch_size, training=False, augment=None, resize="stretch", seed=None,
                    with_masks=False, with_segmentation=False, drop_remainder=False, shuffle=None):
    """Build the padded-batch `tf.data.Dataset` of element dicts.

    Args:
        dataset: a `DetectionDataset` from any reader.
        image_size: (H, W) the model runs at.
        batch_size: images per batch; boxes are padded to the batch's largest count with label -1.
        training: shuffle (unless `shuffle=False`) and augment.
        augment: an `AugmentConfig`-like object (flip, scale_jitter, color_jitter; optional ssd, elastic) or None.
        resize: "stretch" or "letterbox".
    Returns:
        batches of {"images": [B, H, W, 3] float32 0..255, "bounding_boxes": {"boxes": [B, N, 4], "labels": [B, N]},
        "image_id": [B], "original_size": [B, 2], "scale": [B, 2], optional "masks": [B, N, H, W] uint8,
        "segmentation_masks": [B, H, W, 1] int32}.
    """
    source = _source(dataset, with_masks, with_segmentation)
    ds = tf.data.Dataset.from_tensor_slices(source)
    shuffle = training if shuffle is None else shuffle
    if shuffle:
        ds = ds.shuffle(min(len(dataset), 4096), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(_load, num_parallel_calls=AUTOTUNE, deterministic=not training)
    ds = ds.map(lambda e: resize_image(e, image_size, resize), num_parallel_calls=AUTOTUNE,
                deterministic=not training)
    if training and augment is not None:
        augmenter = Augmenter(flip=augment.flip, scale_jitter=augment.scale_jitter,
                              color_jitter=augment.color_jitter, seed=seed)
        ds = ds.map(augmenter, num_parallel_calls=AUTOTUNE, deterministic=False)
        if getattr(augment, "ssd", False):
            if with_masks or with_segmentation:
                raise ConfigError("data.augment.ssd moves boxes only; it cannot be used with instance or semantic "
                                  "masks (use flip / scale_jitter / elastic)")
            ds = ds.map(SSDAugment(), num_parallel_calls=AUTOTUNE, deterministic=False)
        if getattr(augment, "elastic", 0.0):
            sigma = float(augment.elastic)
            ds = ds.map(lambda e: elastic_deform(e, grid=3, sigma=sigma), num_parallel_calls=AUTOTUNE,
                        deterministic=False)
    height, width = image_size
    padded_shapes = {
        "images": [height, width, 3],
        "bounding_boxes": {"boxes": [None, 4], "labels": [None]},
        "image_id": [], "original_size": [2], "scale": [2],
    }
    padding_values = {
        "images": 0.0, "bounding_boxes": {"boxes": 0.0, "labels": -1},
        "image_id": tf.constant(0, tf.int64), "original_size": 0, "scale": 0.0,
    }
    if with_masks:
        padded_shapes["masks"] = [None, height, width]
        padding_values["masks"] = tf.constant(0, tf.uint8)
    if with_segmentation:
        padded_shapes["segmentation_masks"] = [height, width, 1]
        padding_values["segmentation_masks"] = 255
    ds = ds.padded_batch(batch_size, padded_shapes=padded_shapes, padding_values=padding_values,
                         drop_remainder=drop_remainder)
    return ds.prefetch(AUTOTUNE)
