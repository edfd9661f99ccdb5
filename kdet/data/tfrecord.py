"""TFRecord files with the TF Object Detection API's feature keys, written from and read back into kdet.

Keys (one tf.train.Example per image): image/encoded, image/format ('jpeg' | 'png'), image/height, image/width,
image/source_id (the image_id as text), image/filename, image/object/bbox/{xmin,xmax,ymin,ymax} (normalised to
0..1), image/object/class/label (1-based, as the OD API: kdet label + 1), image/object/class/text,
image/object/difficult, and when present image/object/mask (one PNG per instance, the OD API's PNG mask
format) and image/segmentation/class/encoded (a single-channel PNG of class ids: 0 = background, label + 1,
255 = ignore; DeepLab's key). `write_tfrecord` also writes the OD API's `label_map.pbtxt` beside the file, so the
class list survives classes that never occur.

`read_tfrecord` parses with graph ops only (no Python runs per element), so it is a plain input pipeline stage.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from kdet.data.decode import decode_in_graph, decodes_in_graph
from kdet.data.images import encode_png, image_format, read_image, read_segmentation
from kdet.data.records import DetectionDataset, ReadReport, Record
from kdet.errors import DataError

LABEL_MAP_NAME = "label_map.pbtxt"


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _encoded_image(record: Record):
    """(bytes, 'jpeg' | 'png'): the original file when TF decodes it to the same RGB as kdet, else a PNG."""
    if record.image is not None:
        return encode_png(record.image), "png"
    # Files kdet's rule decodes in the graph are stored as they are; 16-bit, CMYK and other files are re-encoded
    # so the image in the record is exactly what `read_image` gives.
    if decodes_in_graph(record.path):
        return Path(record.path).read_bytes(), image_format(record.path)
    return encode_png(read_image(record.path)), "png"


def _example(record: Record, class_names) -> tf.train.Example:
    encoded, kind = _encoded_image(record)
    y0, x0, y1, x1 = (record.boxes[:, i] for i in range(4))
    name = Path(record.path).name if record.path is not None else f"{record.image_id}.png"
    features = {
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([kind.encode()]),
        "image/height": _ints([record.height]),
        "image/width": _ints([record.width]),
        "image/source_id": _bytes([str(record.image_id).encode()]),
        "image/filename": _bytes([name.encode()]),
        "image/object/bbox/xmin": _floats(x0 / record.width),
        "image/object/bbox/xmax": _floats(x1 / record.width),
        "image/object/bbox/ymin": _floats(y0 / record.height),
        "image/object/bbox/ymax": _floats(y1 / record.height),
        "image/object/class/label": _ints(record.labels + 1),
        "image/object/class/text": _bytes(class_names[label].encode() for label in record.labels),
        "image/object/difficult": _ints(record.difficult),
    }
    if record.masks is not None:
        features["image/object/mask"] = _bytes(encode_png(np.asarray(mask, np.uint8)) for mask in record.masks)
    segmentation = record.segmentation
    if segmentation is None and record.segmentation_path is not None:
        segmentation = read_segmentation(record.segmentation_path)
    if segmentation is not None:
        # a plain grayscale PNG, not a palette one: tf.io.decode_png would turn palette indices into colours
        features["image/segmentation/class/encoded"] = _bytes([encode_png(np.asarray(segmentation, np.uint8))])
        features["image/segmentation/class/format"] = _bytes([b"png"])
    return tf.train.Example(features=tf.train.Features(feature=features))


def write_tfrecord(dataset: DetectionDataset, path) -> None:
    """Write every record of `dataset` to the TFRecord file `path`, and `label_map.pbtxt` in the same directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in dataset.records:
            writer.write(_example(record, dataset.class_names).SerializeToString())
    items = "".join(f"item {{\n  id: {label + 1}\n  name: '{name}'\n}}\n"
                    for label, name in enumerate(dataset.class_names))
    (path.parent / LABEL_MAP_NAME).write_text(items, encoding="utf-8")


_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/source_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/class/text": tf.io.VarLenFeature(tf.string),
    "image/object/difficult": tf.io.VarLenFeature(tf.int64),
    "image/object/mask": tf.io.VarLenFeature(tf.string),
    "image/segmentation/class/encoded": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def _image_id(source_id):
    """int64: source_id as a number when it is one, else a stable hash of it (other writers use file names)."""
    is_number = tf.strings.regex_full_match(source_id, "[0-9]{1,18}")
    return tf.cond(is_number, lambda: tf.strings.to_number(source_id, tf.int64),
                   lambda: tf.strings.to_hash_bucket_fast(source_id, 2 ** 62))


def _parse(serialized):
    """One serialized Example -> dict of everything kdet reads from it (graph ops only)."""
    features = tf.io.parse_single_example(serialized, _FEATURES)
    dense = {key: tf.sparse.to_dense(value) if isinstance(value, tf.SparseTensor) else value
             for key, value in features.items()}
    image = decode_in_graph(dense["image/encoded"])
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    scale = tf.cast(tf.stack([height, width, height, width]), tf.float32)
    boxes = tf.stack([dense["image/object/bbox/ymin"], dense["image/object/bbox/xmin"],
                      dense["image/object/bbox/ymax"], dense["image/object/bbox/xmax"]], axis=-1) * scale
    num_boxes = tf.shape(boxes)[0]
    encoded_masks = dense["image/object/mask"]

    def decode_masks():
        masks = tf.map_fn(lambda png: tf.io.decode_png(png, channels=1)[:, :, 0], encoded_masks,
                          fn_output_signature=tf.TensorSpec([None, None], tf.uint8))
        return tf.reshape(masks, [num_boxes, height, width])

    # map_fn cannot stack zero masks of unknown size, so an image without objects takes the zeros branch
    has_all_masks = tf.logical_and(tf.shape(encoded_masks)[0] == num_boxes, num_boxes > 0)
    masks = tf.cond(has_all_masks, decode_masks,
                    lambda: tf.zeros([num_boxes, height, width], tf.uint8))
    encoded_segmentation = dense["image/segmentation/class/encoded"]
    segmentation = tf.cond(
        tf.strings.length(encoded_segmentation) > 0,
        lambda: tf.cast(tf.io.decode_png(encoded_segmentation, channels=1), tf.int32),
        lambda: tf.fill([height, width, 1], tf.constant(255, tf.int32)))  # no mask: every pixel "ignore"
    return {
        "image": image, "boxes": boxes, "labels": tf.cast(dense["image/object/class/label"], tf.int32) - 1,
        "image_id": _image_id(dense["image/source_id"]), "original_size": tf.stack([height, width]),
        "difficult": dense["image/object/difficult"] > 0, "texts": dense["image/object/class/text"],
        "masks": masks, "has_masks": tf.shape(encoded_masks)[0] > 0, "segmentation": segmentation,
        "has_segmentation": tf.strings.length(encoded_segmentation) > 0,
    }


def _files(path) -> list:
    patterns = [str(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    files = []
    for pattern in patterns:
        matched = tf.io.gfile.glob(pattern)
        if not matched:
            raise DataError(pattern, "no TFRecord file found")
        files.extend(sorted(matched))
    return files


def read_tfrecord(path, with_masks=False, with_segmentation=False) -> tf.data.Dataset:
    """A tf.data.Dataset of kdet element dicts from TFRecord file(s) `path` (a path, a glob pattern, or a list).

    Element: {"images": float32 [H, W, 3] 0..255, "bounding_boxes": {"boxes": float32 [N, 4] yxyx px,
    "labels": int32 [N] 0-based}, "image_id": int64, "original_size": int32 [2]} plus "masks" uint8 [N, H, W]
    with `with_masks` (zeros for an image whose record holds no masks) and "segmentation_masks" int32 [H, W, 1]
    with `with_segmentation` (all 255 = ignore for an image without one). A corrupt file fails when iterated:
    use `tfrecord_to_dataset` to check a file first.
    """

    def to_element(serialized):
        parsed = _parse(serialized)
        element = {"images": tf.cast(parsed["image"], tf.float32),
                   "bounding_boxes": {"boxes": parsed["boxes"], "labels": parsed["labels"]},
                   "image_id": parsed["image_id"], "original_size": parsed["original_size"]}
        if with_masks:
            element["masks"] = parsed["masks"]
        if with_segmentation:
            element["segmentation_masks"] = parsed["segmentation"]
        return element

    return tf.data.TFRecordDataset(_files(path)).map(to_element, num_parallel_calls=tf.data.AUTOTUNE)


def _label_map(directory: Path):
    """{label: name} from the OD API label_map.pbtxt in `directory`, or {} when there is none."""
    label_map = directory / LABEL_MAP_NAME
    if not label_map.is_file():
        return {}
    items = re.findall(r"item\s*\{([^}]*)\}", label_map.read_text(encoding="utf-8"))
    names = {}
    for item in items:
        found_id = re.search(r"\bid\s*:\s*(\d+)", item)
        found_name = re.search(r"\b(?:display_)?name\s*:\s*['\"]([^'\"]*)['\"]", item)
        if found_id and found_name:
            names[int(found_id.group(1)) - 1] = found_name.group(1)
    return names


def tfrecord_to_dataset(path, class_names=None) -> DetectionDataset:
    """Read TFRecord file(s) `path` fully into a DetectionDataset (images in memory), e.g. to check or convert them.

    class_names: the label order; default from label_map.pbtxt beside the (first) file, completed by the
    class/text of the objects, and `class_<i>` for a label with neither. A corrupt file raises DataError.
    """
    files = _files(path)
    names = dict(_label_map(Path(files[0]).parent))
    records = []
    try:
        for parsed in tf.data.TFRecordDataset(files).map(_parse).as_numpy_iterator():
            for label, text in zip(parsed["labels"].tolist(), parsed["texts"].tolist()):
                names.setdefault(label, text.decode("utf-8"))
            height, width = (int(v) for v in parsed["original_size"])
            records.append(Record(
                image_id=int(parsed["image_id"]), height=height, width=width, boxes=parsed["boxes"],
                labels=parsed["labels"], difficult=parsed["difficult"], image=parsed["image"],
                masks=parsed["masks"] if parsed["has_masks"] else None,
                segmentation=parsed["segmentation"][:, :, 0] if parsed["has_segmentation"] else None))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(error.message)).splitlines()[0]
        raise DataError(files[0] if len(files) == 1 else files, f"cannot read TFRecord: {message}") from None
    if any(record.masks is not None for record in records):
        for record in records:  # an image without objects has no mask strings: give it an empty [0, H, W]
            if record.masks is None and len(record.labels) == 0:
                record.masks = np.zeros((0, record.height, record.width), np.uint8)
    if class_names is None:
        count = max([label + 1 for label in names] + [0])
        class_names = [names.get(label, f"class_{label}") for label in range(count)]
    return DetectionDataset(records=records, class_names=list(class_names), report=ReadReport())
