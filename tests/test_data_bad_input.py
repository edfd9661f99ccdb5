"""Bad input: every reader names the file and either skips + counts the problem, or raises a one-line DataError."""
import json
import re

import numpy as np
import pytest
from PIL import Image, ImageFile

from kdet.data.coco import read_coco
from kdet.data.images import check_image, read_image
from kdet.data.io import load_dataset, write_dataset
from kdet.data.shapes import make_shapes
from kdet.data.tfrecord import read_tfrecord, tfrecord_to_dataset
from kdet.data.voc import read_voc
from kdet.data.yolo import read_yolo
from kdet.errors import ConfigError, DataError

BCCD_IDS = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00002"]


def edit_xml(root, image_id, pattern, new):
    """Replace the first match of the regex `pattern` in the xml of `image_id`."""
    path = root / "Annotations" / f"{image_id}.xml"
    text, count = re.subn(pattern, new, path.read_text(), count=1)
    assert count == 1
    path.write_text(text)


def one_line(error):
    message = str(error.value)
    assert "\n" not in message
    return message


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- images

def test_truncated_jpeg_is_detected_even_if_pillow_was_told_to_accept_it(voc_copy):
    image = voc_copy / "JPEGImages" / "BloodImage_00001.jpg"
    truncate(image)
    with pytest.raises(DataError, match="BloodImage_00001.jpg"):
        check_image(image)
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # what some libraries set globally
    try:
        with pytest.raises(DataError):
            check_image(image)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for the caller
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    dataset = read_voc(voc_copy, verbose=False)
    assert len(dataset) == 2 and dataset.report.skipped_images == 1
    assert "BloodImage_00001.jpg" in dataset.report.problems[0] and "truncated" in dataset.report.problems[0]
    with pytest.raises(DataError) as error:
        read_voc(voc_copy, strict=True, verbose=False)
    assert "BloodImage_00001.jpg" in one_line(error)


def test_not_an_image_and_missing_image(tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_text("not a jpeg")
    with pytest.raises(DataError, match="fake.jpg: cannot decode"):
        check_image(fake)
    with pytest.raises(DataError, match="missing.png: image file not found"):
        read_image(tmp_path / "missing.png")


def test_image_modes_become_rgb(tmp_path, shared_data):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.repeat(gray[:, :, None], 3, axis=2))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = [10, 20, 30]
    rgba[..., 3] = 7
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])  # alpha dropped
    # 16-bit microscopy: stretched by its own range (documented rule), checked against numpy
    raw = np.asarray(Image.open(shared_data / "stardist_nuclei" / "img2d.tif"), np.float64)
    expected = np.round((raw - raw.min()) / (raw.max() - raw.min()) * 255).astype(np.uint8)
    image = read_image(shared_data / "stardist_nuclei" / "img2d.tif")
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[:, :, 1], expected)
    assert check_image(shared_data / "stardist_nuclei" / "img2d.tif") == (512, 512)


# ---------------------------------------------------------------- VOC xml

def test_xml_missing_a_coordinate_drops_that_box_naming_the_field(voc_copy):
    edit_xml(voc_copy, "BloodImage_00000", "<xmin>260</xmin>", "")
    dataset = read_voc(voc_copy, verbose=False)
    assert len(dataset) == 3 and dataset.report.dropped_boxes == 1
    (problem,) = dataset.report.problems
    assert "BloodImage_00000.xml" in problem and "<bndbox>/<xmin>" in problem


def test_xml_missing_size_or_name_or_broken(voc_copy):
    edit_xml(voc_copy, "BloodImage_00000", "<height>480</height>", "")
    edit_xml(voc_copy, "BloodImage_00001", "<name>RBC</name>", "")
    (voc_copy / "Annotations" / "BloodImage_00002.xml").write_text("")  # an empty annotation file
    dataset = read_voc(voc_copy, class_names=["Platelets", "RBC", "WBC"], verbose=False)
    assert dataset.report.skipped_images == 2 and dataset.report.dropped_boxes == 1
    problems = "\n".join(dataset.report.problems)
    assert "BloodImage_00000.xml: missing <size>/<height>: skipped" in problems
    assert "BloodImage_00001.xml: object" in problems and "missing <name>" in problems
    assert "BloodImage_00002.xml: not well-formed XML" in problems
    with pytest.raises(DataError) as error:
        read_voc(voc_copy, class_names=["Platelets", "RBC", "WBC"], strict=True, verbose=False)
    assert "BloodImage_0000" in one_line(error)


def test_xml_bad_boxes_negative_zero_and_not_a_number(voc_copy):
    edit_xml(voc_copy, "BloodImage_00000", "<xmax>491</xmax>", "<xmax>200</xmax>")  # xmax < xmin: negative width
    edit_xml(voc_copy, "BloodImage_00001", r"<ymax>\d+</ymax>", "<ymax>nan</ymax>")  # NaN
    edit_xml(voc_copy, "BloodImage_00002", r"<xmin>\d+</xmin>", "<xmin>abc</xmin>")  # not a number
    dataset = read_voc(voc_copy, verbose=False)
    problems = dataset.report.problems
    assert dataset.report.dropped_boxes == 3 and len(dataset) == 3
    assert "BloodImage_00000.xml" in problems[0] and "zero or negative area" in problems[0]
    assert "BloodImage_00001.xml" in problems[1] and "non-finite" in problems[1]
    assert "BloodImage_00002.xml" in problems[2] and "is not a number" in problems[2]


def test_label_not_in_the_class_list(voc_copy):
    wbc = sum((voc_copy / "Annotations" / f"{i}.xml").read_text().count("<name>WBC") for i in BCCD_IDS)
    dataset = read_voc(voc_copy, class_names=["Platelets", "RBC"], verbose=False)
    assert wbc > 0 and dataset.report.dropped_boxes == wbc
    assert all("label 'WBC' is not in the class list" in p for p in dataset.report.problems)
    assert all(set(r.labels.tolist()) <= {0, 1} for r in dataset.records)


def test_size_that_disagrees_with_the_image(voc_copy):
    edit_xml(voc_copy, "BloodImage_00002", "<width>640</width>", "<width>320</width>")
    dataset = read_voc(voc_copy, verbose=False)
    assert dataset.report.skipped_images == 1
    assert "BloodImage_00002.jpg: image is 640x480 but the annotation says 320x480" in dataset.report.problems[0]


def test_missing_split_list_and_files(voc_copy):
    with pytest.raises(DataError) as error:
        read_voc(voc_copy, split="val")
    assert "val.txt" in one_line(error)
    (voc_copy / "JPEGImages" / "BloodImage_00000.jpg").unlink()
    (voc_copy / "Annotations" / "BloodImage_00001.xml").unlink()
    dataset = read_voc(voc_copy, verbose=False)
    assert len(dataset) == 1 and dataset.report.skipped_images == 2
    assert any("BloodImage_00000.jpg: image file not found" in p for p in dataset.report.problems)
    assert any("BloodImage_00001.xml: annotation file not found" in p for p in dataset.report.problems)


# ---------------------------------------------------------------- COCO json

def small_coco(tmp_path, annotations):
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "a.png")
    document = {"images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 60}],
                "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}], "annotations": annotations}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(document))
    return path


def test_coco_nan_negative_zero_area_and_unknown_category(tmp_path):
    path = small_coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 20]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [float("nan"), 2, 10, 20]},
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [5, 5, -4, 10]},
        {"id": 4, "image_id": 1, "category_id": 7, "bbox": [5, 5, 0, 10]},
        {"id": 5, "image_id": 1, "category_id": 99, "bbox": [5, 5, 3, 3]},
        {"id": 6, "image_id": 1, "category_id": 7, "bbox": [50, 30, 30, 30]},  # half outside: clipped
        {"id": 7, "image_id": 42, "category_id": 7, "bbox": [1, 1, 3, 3]},  # no such image
        {"id": 8, "image_id": 1, "category_id": 7, "bbox": "oops"},
    ])
    dataset = read_coco(path, verbose=False)
    record = dataset.records[0]
    np.testing.assert_allclose(record.boxes, [[2, 1, 22, 11], [30, 50, 40, 60]])
    np.testing.assert_array_equal(record.labels, [0, 1])
    assert dataset.category_ids == [3, 7]
    assert (dataset.report.dropped_boxes, dataset.report.clipped_boxes) == (6, 1)
    problems = "\n".join(dataset.report.problems)
    assert "non-finite" in problems and "zero or negative area" in problems
    assert "category_id 99 is not in the categories" in problems
    assert "refers to image_id 42" in problems and "'oops' is not 4 numbers" in problems
    assert all("ann.json" in p or "a.png" in p for p in dataset.report.problems)
    with pytest.raises(DataError) as error:
        read_coco(path, strict=True, verbose=False)
    one_line(error)


def test_coco_crowd_is_difficult_and_missing_segmentation_with_masks(tmp_path):
    path = small_coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 1,
         "segmentation": {"size": [40, 60], "counts": [0, 5, 35, 5, 2355]}},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [20, 10, 10, 10]}])
    dataset = read_coco(path, with_masks=True, verbose=False)
    record = dataset.records[0]
    assert record.difficult.tolist() == [True] and record.masks.shape == (1, 40, 60)
    assert record.masks.sum() == 10 and record.masks[0][:5, :2].all()  # uncompressed RLE is column-major
    assert "annotation 2: segmentation is neither polygons nor RLE: dropped" in dataset.report.problems[0]


@pytest.mark.parametrize("content, message", [("", "is empty"), ("{not json", "not valid JSON"),
                                              ('{"images": []}', "missing the 'categories' list")])
def test_coco_empty_or_malformed_json(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError) as error:
        read_coco(path)
    assert "bad.json" in one_line(error) and message in str(error.value)


# ---------------------------------------------------------------- YOLO txt

def test_yolo_bad_lines_are_counted_with_their_line_number(tmp_path):
    write_dataset(make_shapes(2, max_objects=1, seed=0), "yolo", tmp_path)
    labels = sorted((tmp_path / "labels" / "train").glob("*.txt"))
    labels[0].write_text("0 0.5 0.5 0.2 0.2\n"  # fine
                         "7 0.5 0.5 0.2 0.2\n"  # class out of range
                         "1 0.5 0.5 0.0 0.2\n"  # zero width
                         "1 0.5 0.5 0.2\n"  # too few values
                         "x 0.5 0.5 0.2 0.2\n"  # not numbers
                         "2 nan 0.5 0.2 0.2\n"  # NaN
                         "\n")  # blank lines are fine
    labels[1].write_text("")  # an empty file: an image without objects, not a problem
    dataset = read_yolo(tmp_path / "data.yaml", verbose=False)
    assert [len(r.labels) for r in dataset.records] == [1, 0]
    np.testing.assert_allclose(dataset.records[0].boxes, [[51.2, 51.2, 76.8, 76.8]], atol=1e-4)
    problems = dataset.report.problems
    assert dataset.report.dropped_boxes == 5 and all(labels[0].name in p for p in problems)
    for number, text in [(2, "class 7 is not one of the 3 classes"), (3, "zero or negative width"),
                         (4, "has 4 values"), (5, "is not numbers"), (6, "non-finite")]:
        assert any(f"line {number}" in p and text in p for p in problems), text
    labels[1].unlink()  # a missing label file: also no objects
    assert len(read_yolo(tmp_path / "data.yaml", verbose=False).records[1].labels) == 0


def test_yolo_yaml_problems(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(DataError, match="empty.yaml: a YOLO dataset yaml must be a mapping"):
        read_yolo(tmp_path / "empty.yaml")
    (tmp_path / "gap.yaml").write_text("train: images\nnames: {0: a, 2: c}\n")
    with pytest.raises(DataError, match=r"gap.yaml: .*missing \[1\]"):
        read_yolo(tmp_path / "gap.yaml")
    (tmp_path / "nosplit.yaml").write_text("train: images\nnames: [a]\n")
    with pytest.raises(DataError, match="nosplit.yaml: no 'val' split"):
        read_yolo(tmp_path / "nosplit.yaml", split="val")
    with pytest.raises(DataError, match="images: image directory or list of split 'train' not found"):
        read_yolo(tmp_path / "nosplit.yaml")


# ---------------------------------------------------------------- paths, formats, TFRecord

def test_missing_paths_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    for form in ("coco", "voc", "yolo", "tfrecord"):
        with pytest.raises(DataError) as error:
            load_dataset(form, missing)
        assert "nowhere" in one_line(error)
    with pytest.raises(DataError, match="nowhere.tfrecord: no TFRecord file found"):
        read_tfrecord(tmp_path / "nowhere.tfrecord")
    with pytest.raises(DataError, match="nowhere.json: COCO annotation file not found"):
        read_coco(tmp_path / "nowhere.json")


def test_unknown_format_option_or_missing_path_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown dataset format 'pascal'"):
        load_dataset("pascal", "x")
    with pytest.raises(ConfigError, match="needs a path"):
        load_dataset("coco")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['colour'\]"):
        load_dataset("shapes", num_images=1, colour="red")
    with pytest.raises(ConfigError, match="unknown split"):
        load_dataset("shapes", split="holdout", num_images=1)
    with pytest.raises(ConfigError):
        write_dataset(make_shapes(1), "shapes", "x")


def test_corrupt_tfrecord(tmp_path):
    path = write_dataset(make_shapes(3, seed=1), "tfrecord", tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(DataError) as error:
        tfrecord_to_dataset(path)
    assert "train.tfrecord" in one_line(error)
