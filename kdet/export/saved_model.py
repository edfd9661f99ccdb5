"""SavedModel export in TensorFlow Serving's versioned layout, with two signatures.

    base_dir/<version>/saved_model.pb, variables/
        serving_default(images: uint8 [B, H, W, 3])   -> detection dict (or the semantic dict)
        serving_bytes(image_bytes: string [B])        -> the same dict in each image's own pixel frame

The model's class names (when it has them) travel with it: `tf.saved_model.load(path).class_names` is a list of
scalar string variables, and `<version>/assets.extra/labels.txt` holds one name per line (TF Serving ignores
assets.extra/ and copies it with the version, so deployment tooling and clients can read the labels beside it).

`serving_bytes` takes encoded JPEG/PNG (anything `tf.io.decode_image` reads), resizes each image to the model size,
runs the model and maps the result back: boxes are scaled to the image's own width/height; semantic masks are resized
with nearest neighbour (probabilities bilinearly) and padded to the largest image of the batch (masks with -1,
probabilities with 0), and `original_size` [B, 2] says which part of each row is the image. Instance masks
("masks" [B, K, H, W] uint8 of Mask R-CNN) are mapped the same way: nearest neighbour through the boxes' scale
(original pixel i reads input pixel floor((i + 0.5) * H / h), as `kdet predict` maps them), padded with 0 to the
batch's largest image, with `original_size` beside them.
Everything is graph ops (no py_function), so TF Serving and `saved_model_cli run` can execute it.
"""
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kdet.data.decode import decode_in_graph
from kdet.errors import KdetError
from kdet.models.inference_copy import inference_model
from kdet.inference.runners import LABELS_FILE, latest_version_dir  # noqa: F401  (latest_version_dir re-exported)


def export_saved_model(model, base_dir, version=None, fold_bn=True, precision="float32"):
    """Write `model` to `base_dir/<version>/` and return that path.

    Args:
        model: a kdet model (`detect`, `image_size`, `task`).
        base_dir: the model's directory in a TF Serving model base path.
        version: integer version; None = one more than the highest version already in `base_dir` (1 when empty).
        fold_bn: export the model with BatchNorm folded into its convolutions (kdet.models.inference_copy).
        precision: "float32" or "bfloat16" (the network computes in bfloat16; boxes, anchors, NMS stay float32).
    Raises:
        KdetError: the version directory already exists (TF Serving versions are immutable).
    """
    base_dir = Path(base_dir)
    version = next_version(base_dir) if version is None else int(version)
    target = base_dir / str(version)
    if target.exists():
        raise KdetError(f"{target}: SavedModel version {version} already exists; versions are immutable, "
                        "pass another version or leave it unset")
    base_dir.mkdir(parents=True, exist_ok=True)
    class_names = checked_class_names(model)
    archive = build_export_archive(inference_model(model, precision=precision, fold_bn=fold_bn))
    # Write beside the target and rename: a server watching base_dir must never load a half-written version.
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=base_dir))
    try:
        archive.write_out(str(staging), verbose=False)
        if class_names is not None:
            labels = staging.joinpath(*LABELS_FILE)
            labels.parent.mkdir()
            labels.write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def next_version(base_dir):
    """1 + the highest integer-named subdirectory of base_dir (1 if none)."""
    versions = [int(p.name) for p in Path(base_dir).glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def checked_class_names(model):
    """The model's class names (None when it has none); KdetError for a name that cannot be one line of labels.txt."""
    names = getattr(model, "class_names", None)
    if names is None:
        return None
    bad = [name for name in names if not name or "\n" in name or "\r" in name]
    if bad:
        raise KdetError(f"class names must be non-empty single lines, got {bad!r}")
    return list(names)


def ensure_built(model):
    """Build the model's variables with one dummy batch if it never ran (export needs them)."""
    if not model.built:
        height, width = model.image_size
        model(np.zeros((1, height, width, 3), np.uint8), training=False)


def serving_fn(model):
    """uint8 images [B, H, W, 3] -> the model's output dict; the plain function both signatures share."""

    def serve(images):
        return dict(model.detect(tf.cast(images, tf.float32)))

    return serve


def bytes_serving_fn(model):
    """string [B] encoded images -> output dict in each image's own frame (see the module docstring)."""
    height, width = model.image_size
    semantic = getattr(model, "task", "detection") == "semantic"

    def decode_one(data):
        image = decode_in_graph(data)  # kdet's one decoder: the pixels training, evaluation and predict see
        size = tf.shape(image)[:2]
        resized = tf.image.resize(tf.cast(image, tf.float32), (height, width), method="bilinear")
        return tf.ensure_shape(resized, (height, width, 3)), size

    def serve(image_bytes):
        images, sizes = tf.map_fn(decode_one, image_bytes, fn_output_signature=(
            tf.TensorSpec((height, width, 3), tf.float32), tf.TensorSpec((2,), tf.int32)))
        outputs = dict(model.detect(images))
        if semantic:
            return _semantic_to_original(outputs, sizes)
        scale = tf.cast(sizes, tf.float32) / tf.constant([height, width], tf.float32)
        outputs["boxes"] = outputs["boxes"] * tf.tile(scale, [1, 2])[:, None, :]
        if "masks" in outputs:  # instance masks (Mask R-CNN)
            outputs["masks"] = _instance_masks_to_original(outputs["masks"], sizes)
            outputs["original_size"] = sizes
        return outputs

    return serve


def _semantic_to_original(outputs, sizes):
    """masks [B, H, W] / probabilities [B, H, W, C] -> each image's size, padded to the batch's largest image."""
    max_size = tf.reduce_max(sizes, axis=0)

    def resize_one(args):
        mask, probabilities, size = args
        mask = tf.image.resize(mask[..., None], size, method="nearest")[..., 0]
        probabilities = tf.image.resize(probabilities, size, method="bilinear")
        pad = [[0, max_size[0] - size[0]], [0, max_size[1] - size[1]]]
        return tf.pad(mask, pad, constant_values=-1), tf.pad(probabilities, pad + [[0, 0]])

    num_classes = outputs["probabilities"].shape[-1]
    masks, probabilities = tf.map_fn(resize_one, (outputs["masks"], outputs["probabilities"], sizes),
                                     fn_output_signature=(tf.TensorSpec((None, None), tf.int32),
                                                          tf.TensorSpec((None, None, num_classes), tf.float32)))
    return {"masks": masks, "probabilities": probabilities, "original_size": sizes}


def _nearest_rows(size, model_size):
    """[size] int32: the input row (or column) each original pixel i reads, floor((2i + 1) * model_size / (2 size)),
    in integers so that no float rounding moves a boundary."""
    i = tf.range(size, dtype=tf.int64)
    return tf.cast(tf.minimum((2 * i + 1) * model_size // (2 * tf.cast(size, tf.int64)), model_size - 1), tf.int32)


def _instance_masks_to_original(masks, sizes):
    """masks [B, K, H, W] of the model input, sizes [B, 2] -> [B, K, h_max, w_max]: each image's masks at its own
    size (nearest neighbour), zeros past it."""
    max_size = tf.reduce_max(sizes, axis=0)
    model_height, model_width = masks.shape[2], masks.shape[3]

    def resize_one(args):
        mask, size = args
        mask = tf.gather(mask, _nearest_rows(size[0], model_height), axis=1)
        mask = tf.gather(mask, _nearest_rows(size[1], model_width), axis=2)
        return tf.pad(mask, [[0, 0], [0, max_size[0] - size[0]], [0, max_size[1] - size[1]]])

    return tf.map_fn(resize_one, (masks, sizes),
                     fn_output_signature=tf.TensorSpec((masks.shape[1], None, None), masks.dtype))


def build_export_archive(model):
    """A keras ExportArchive holding the model's variables and both serving signatures."""
    ensure_built(model)
    height, width = model.image_size
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_fn(model),
                         input_signature=[tf.TensorSpec((None, height, width, 3), tf.uint8, name="images")])
    archive.add_endpoint("serving_bytes", bytes_serving_fn(model),
                         input_signature=[tf.TensorSpec((None,), tf.string, name="image_bytes")])
    class_names = checked_class_names(model)
    if class_names is not None:
        archive.add_variable_collection("class_names", [
            tf.Variable(name, dtype=tf.string, trainable=False, name=f"class_name_{i}")
            for i, name in enumerate(class_names)])
    return archive
