"""Pascal VOC: Annotations/*.xml + JPEGImages + ImageSets/Main/{split}.txt (+ Segmentation{Class,Object} PNGs).

The image and xml folders may have other names (`images_dir`, `annotations_dir`, relative to the root, "." for the
root itself): labelImg users often keep `images/` + `annotations/`, or both side by side.

Conventions chosen here:
- VOC's xmin/ymin/xmax/ymax are 1-based pixel indices. kdet subtracts 1 from all four (py-faster-rcnn's
  convention), so a box keeps its annotated size xmax - xmin, and a click without a drag (xmin == xmax, as in BCCD's
  BloodImage_00338.xml) stays a zero-area box that is dropped and reported. `write_voc` adds the 1 back, so
  read(write(x)) == x.
- A SegmentationClass / SegmentationObject PNG holds palette indices: class value v means class_names[v - 1]
  (VOC ids with VOC's 20 names), 0 = background, 255 = "ignore" (object borders, unlabelled regions).
  The class PNG is attached as `segmentation_path` (read it with `kdet.data.images.read_segmentation`:
  `tf.io.decode_png` expands the palette to colours and loses the ids).
- With `with_segmentation`, an image that has a SegmentationObject PNG takes its objects from that PNG: one
  instance per id, mask = its pixels, label = the majority class under it in SegmentationClass, box = tight
  around the mask; masks and boxes then always agree. The xml's objects are matched to instances by class and
  IoU >= 0.5 to carry their `difficult` flag, and an xml object without an instance is reported.
- A <filename> (or a split-list id) that is absolute or contains ".." is refused (the image skipped and counted,
  naming the xml): an annotation never makes kdet read a file outside the dataset.
- Default class_names: `<root>/class_names.txt` if present (one name a line, a leading `_background_` line is
  dropped; labelme writes it, and so does `write_voc`), else VOC's 20 names when every name found is a VOC name,
  else the sorted names found in all of Annotations/ (so every split gets the same labels).
"""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from kdet.data.check import sanitize_with_masks
from kdet.data.images import (check_record_image, encode_png, outside_reason, progress, read_image,
                              read_segmentation)
from kdet.data.records import DetectionDataset, ReadReport, Record
from kdet.errors import ConfigError, DataError

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
BACKGROUND_NAMES = ("_background_", "__background__", "background")
IGNORE = 255


class _Malformed(Exception):
    """An xml field is missing or not a number; the message names the field."""


def _text(element, path: str) -> str:
    found = element.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise _Malformed(f"missing <{path.replace('/', '>/<')}>")
    return found.text.strip()


def _number(element, path: str) -> float:
    text = _text(element, path)
    try:
        return float(text)
    except ValueError:
        raise _Malformed(f"<{path.replace('/', '>/<')}> {text!r} is not a number") from None


def _parse_objects(root_element):
    """[(index, name, (xmin, ymin, xmax, ymax), difficult) or (index, error message)] for each <object>."""
    objects = []
    for index, element in enumerate(root_element.findall("object")):
        try:
            name = _text(element, "name")
            corners = tuple(_number(element, f"bndbox/{key}") for key in ("xmin", "ymin", "xmax", "ymax"))
        except _Malformed as error:
            objects.append((index, f"object {index}: {error}: dropped"))
            continue
        flag = element.find("difficult")
        difficult = flag is not None and (flag.text or "0").strip() not in ("", "0")
        objects.append((index, name, corners, difficult))
    return objects


def _names_in(annotation_dir: Path) -> set:
    names = set()
    for xml_path in annotation_dir.glob("*.xml"):
        try:
            names.update(n.text.strip() for n in ElementTree.parse(xml_path).getroot().iterfind("object/name")
                         if n.text and n.text.strip())
        except ElementTree.ParseError:
            continue  # reported when (if) the file is read
    return names


def default_class_names(root, annotations_dir="Annotations") -> list:
    """The class list `read_voc` uses when none is given (see the module docstring)."""
    root = Path(root)
    listed = root / "class_names.txt"
    if listed.is_file():
        names = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [name for name in names if name not in BACKGROUND_NAMES]
    found = _names_in(root / annotations_dir)
    return list(VOC_CLASSES) if found and found <= set(VOC_CLASSES) else sorted(found)


def _image_path(image_dir: Path, image_id: str, filename) -> Path:
    if filename:
        candidate = image_dir / filename
        if candidate.is_file():
            return candidate
    for suffix in (".jpg", ".jpeg", ".png", ".JPG", ".PNG"):
        candidate = image_dir / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    return image_dir / (filename or f"{image_id}.jpg")


def _box_iou(box, boxes) -> np.ndarray:
    """box [4] vs boxes [M, 4], yxyx -> IoU [M]."""
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return intersection / np.maximum(area(box) + area(boxes) - intersection, 1e-9)


def _instances(object_png: Path, class_png: Path, height, width, xml_boxes, xml_labels, xml_difficult, where,
               report, strict):
    """Objects of one image from its SegmentationObject PNG: (boxes, labels, difficult, masks uint8 [N, H, W])."""
    objects = read_segmentation(object_png)
    classes = read_segmentation(class_png)
    if objects.shape != (height, width) or classes.shape != (height, width):
        raise _Malformed(f"segmentation PNGs are {objects.shape[::-1]} / {classes.shape[::-1]}, the image is "
                         f"{(width, height)}")
    boxes, labels, masks = [], [], []
    for instance in np.unique(objects):
        if instance in (0, IGNORE):
            continue
        mask = objects == instance
        values = classes[mask]
        values = values[(values != 0) & (values != IGNORE)]
        if values.size == 0:
            report.add(where, f"instance {instance} of {object_png.name} has no class in {class_png.name}: dropped",
                       "box", strict)
            continue
        rows, cols = np.nonzero(mask)
        boxes.append([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1])
        labels.append(int(np.bincount(values).argmax()) - 1)
        masks.append(mask.astype(np.uint8))
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    difficult = np.zeros(len(boxes), bool)
    matched = np.zeros(len(xml_boxes), bool)
    for index, (box, label) in enumerate(zip(boxes, labels)):
        candidates = np.flatnonzero((np.asarray(xml_labels) == label) & ~matched)
        if candidates.size:
            overlaps = _box_iou(box, xml_boxes[candidates])
            if overlaps.max() >= 0.5:
                best = candidates[overlaps.argmax()]
                matched[best] = True
                difficult[index] = xml_difficult[best]
    for index in np.flatnonzero(~matched):
        report.add(where, f"xml object with box {xml_boxes[index].tolist()} has no instance in "
                          f"{object_png.name}: dropped", "box", strict)
    stacked = np.stack(masks) if masks else np.zeros((0, height, width), np.uint8)
    return boxes, np.asarray(labels, np.int32), difficult, stacked


def _split_ids(root: Path, split, with_segmentation: bool, annotation_dir: Path):
    if split is None:
        return sorted(path.stem for path in annotation_dir.glob("*.xml"))
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    segmentation_listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if with_segmentation and segmentation_listing.is_file():
        listing = segmentation_listing  # VOC lists the images that have segmentation PNGs separately
    if not listing.is_file():
        raise DataError(listing, f"split list for split '{split}' not found")
    return [line.split()[0] for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_voc(root, split="train", class_names=None, strict=False, with_segmentation=False,
             verbose=True, images_dir="JPEGImages", annotations_dir="Annotations") -> DetectionDataset:
    """Read a VOC-layout dataset under `root` (see the module docstring for the conventions).

    split: the name of an ImageSets/Main/<split>.txt list (ImageSets/Segmentation/<split>.txt with
    `with_segmentation` when VOC has one), or None for every xml in Annotations/. With `with_segmentation`, an
    image without a SegmentationObject PNG keeps its xml boxes and has `masks=None`, and one without a
    SegmentationClass PNG has `segmentation_path=None`.
    images_dir / annotations_dir: the folders (relative to `root`) holding the images and the xml files, for a
    dataset that does not name them JPEGImages / Annotations (e.g. `images` + `labels`, as labelImg users do).
    Bad xml (not parseable, a missing field), bad images and bad boxes are counted in `dataset.report` with
    the file named and skipped (or raise DataError with `strict`).
    """
    root = Path(root)
    for option, value in (("images_dir", images_dir), ("annotations_dir", annotations_dir)):
        reason = outside_reason(value) if isinstance(value, str) and value else "is not a folder name"
        if reason is not None:
            raise ConfigError(f"VOC option {option} = {value!r} {reason}; give a folder relative to the root {root}")
    annotation_dir, image_dir = root / annotations_dir, root / images_dir
    if not annotation_dir.is_dir():
        raise DataError(annotation_dir, f"VOC annotation folder not found (annotations_dir: {annotations_dir!r})")
    image_ids = _split_ids(root, split, with_segmentation, annotation_dir)
    class_names = list(class_names) if class_names is not None else default_class_names(root, annotations_dir)
    if not class_names:
        raise ConfigError(f"read_voc: no class names given and none found under {root}")
    label_of = {name: label for label, name in enumerate(class_names)}
    report = ReadReport()
    records = []
    for number, image_id in enumerate(progress(image_ids, verbose, f"checking {root.name}/{split or 'all'}")):
        reason = outside_reason(image_id)
        if reason is not None:
            report.add(root / "ImageSets", f"image id {image_id!r} of split {split!r} {reason}: skipped", "image",
                       strict)
            continue
        xml_path = annotation_dir / f"{image_id}.xml"
        if not xml_path.is_file():
            report.add(xml_path, "annotation file not found: skipped", "image", strict)
            continue
        try:
            element = ElementTree.parse(xml_path).getroot()
            annotated = (int(_number(element, "size/height")), int(_number(element, "size/width")))
        except ElementTree.ParseError as error:
            report.add(xml_path, f"not well-formed XML ({error}): skipped", "image", strict)
            continue
        except _Malformed as error:
            report.add(xml_path, f"{error}: skipped", "image", strict)
            continue
        filename = (element.findtext("filename") or "").strip() or None
        reason = outside_reason(filename) if filename is not None else None
        if reason is not None:
            report.add(xml_path, f"<filename> {filename!r} {reason}; it must name a file in {images_dir}/: skipped",
                       "image", strict)
            continue
        image_path = _image_path(image_dir, image_id, filename)
        size = check_record_image(image_path, annotated, report, strict)
        if size is None:
            continue
        height, width = size
        boxes, labels, difficult = [], [], []
        for parsed in _parse_objects(element):
            if len(parsed) == 2:
                report.add(xml_path, parsed[1], "box", strict)
                continue
            index, name, (xmin, ymin, xmax, ymax), is_difficult = parsed
            if name not in label_of:
                report.add(xml_path, f"object {index}: label {name!r} is not in the class list {class_names}: "
                                     f"dropped", "box", strict)
                continue
            boxes.append([ymin - 1, xmin - 1, ymax - 1, xmax - 1])
            labels.append(label_of[name])
            difficult.append(is_difficult)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        masks, segmentation_path = None, None
        if with_segmentation:
            class_png = root / "SegmentationClass" / f"{image_id}.png"
            object_png = root / "SegmentationObject" / f"{image_id}.png"
            segmentation_path = str(class_png) if class_png.is_file() else None
            if object_png.is_file() and class_png.is_file():
                try:
                    boxes, labels, difficult, masks = _instances(object_png, class_png, height, width, boxes, labels,
                                                                 difficult, xml_path, report, strict)
                except _Malformed as error:
                    report.add(object_png, f"{error}: skipped", "image", strict)
                    continue
                except DataError as error:
                    report.add(error.path, f"{error.detail}: skipped", "image", strict)
                    continue
        boxes, labels, difficult, masks = sanitize_with_masks(boxes, labels, difficult, masks, height, width,
                                                              len(class_names), str(xml_path), report, strict)
        records.append(Record(image_id=number, height=height, width=width, boxes=boxes, labels=labels,
                              difficult=difficult, masks=masks, path=str(image_path),
                              segmentation_path=segmentation_path))
    return DetectionDataset(records=records, class_names=class_names, report=report)


def _coordinate(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6f}".rstrip("0")


def _annotation_xml(filename: str, record: Record, class_names, segmented: bool) -> bytes:
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "folder").text = "JPEGImages"
    ElementTree.SubElement(root, "filename").text = filename
    size = ElementTree.SubElement(root, "size")
    for key, value in (("width", record.width), ("height", record.height), ("depth", 3)):
        ElementTree.SubElement(size, key).text = str(int(value))
    ElementTree.SubElement(root, "segmented").text = str(int(segmented))
    for box, label, difficult in zip(record.boxes.tolist(), record.labels.tolist(), record.difficult.tolist()):
        obj = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(obj, "name").text = class_names[label]
        ElementTree.SubElement(obj, "pose").text = "Unspecified"
        ElementTree.SubElement(obj, "truncated").text = "0"
        ElementTree.SubElement(obj, "difficult").text = str(int(difficult))
        bndbox = ElementTree.SubElement(obj, "bndbox")
        y0, x0, y1, x1 = box
        for key, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1 + 1), ("ymax", y1 + 1)):
            ElementTree.SubElement(bndbox, key).text = _coordinate(value)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8")


def write_voc(dataset: DetectionDataset, root, split="train") -> None:
    """Write `dataset` in VOC layout under `root`, listing its images in ImageSets/Main/<split>.txt.

    Image files are copied (records in memory are written as PNG named `<split>_<image_id>`); class_names.txt
    records the label order. Semantic masks go to SegmentationClass (label + 1, 255 kept) and instance masks to
    SegmentationObject (instance k = the k-th object, later instances drawn over earlier ones), both as palette PNGs.
    """
    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "class_names.txt").write_text("\n".join(["_background_", *dataset.class_names]) + "\n", encoding="utf-8")
    names = []
    for record in dataset.records:
        stem = Path(record.path).stem if record.path is not None else None
        if stem is not None and stem not in names:
            name, image_file = stem, f"{stem}{Path(record.path).suffix}"
            if Path(record.path).resolve() != (root / "JPEGImages" / image_file).resolve():
                shutil.copyfile(record.path, root / "JPEGImages" / image_file)
        else:  # in memory, or a second file with the same stem: a name of its own
            name = f"{split}_{record.image_id:06d}"
            image_file = f"{name}.png"
            image = record.image if record.image is not None else read_image(record.path)
            (root / "JPEGImages" / image_file).write_bytes(encode_png(image))
        names.append(name)
        semantic = record.segmentation
        if semantic is None and record.segmentation_path is not None:
            semantic = read_segmentation(record.segmentation_path)
        if semantic is None and record.masks is not None:
            semantic = np.zeros((record.height, record.width), np.int32)
            for mask, label in zip(record.masks, record.labels):
                semantic[mask > 0] = label + 1
        if semantic is not None:
            (root / "SegmentationClass").mkdir(exist_ok=True)
            (root / "SegmentationClass" / f"{name}.png").write_bytes(encode_png(semantic, palette=True))
        if record.masks is not None:
            if len(record.masks) >= IGNORE:
                raise DataError(record.name, f"{len(record.masks)} instances do not fit a VOC SegmentationObject PNG")
            objects = np.zeros((record.height, record.width), np.int32)
            for index, mask in enumerate(record.masks):
                objects[mask > 0] = index + 1
            (root / "SegmentationObject").mkdir(exist_ok=True)
            (root / "SegmentationObject" / f"{name}.png").write_bytes(encode_png(objects, palette=True))
        xml = _annotation_xml(image_file, record, dataset.class_names, semantic is not None)
        (root / "Annotations" / f"{name}.xml").write_bytes(xml)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
