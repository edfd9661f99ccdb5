"""Issue 17 items 1, 2, 11 (data): COCO fields of the wrong type, file names that leave the dataset, and one image
decoder for training, evaluation and prediction (16-bit PNGs at the brightness `read_image` sees, JPEGs with
Pillow's pixels)."""
import json

import numpy as np
import pytest
from PIL import Image

from kdet.build import load_split
from kdet.cli import main
from kdet.config import load_config
from kdet.data.coco import read_coco, write_coco
from kdet.data.images import read_image
from kdet.data.io import load_dataset
from kdet.data.pipeline import make_tf_dataset
from kdet.data.records import DetectionDataset, Record
from kdet.data.voc import read_voc
from kdet.errors import DataError

BCCD_IDS = ["BloodImage_00000", "BloodImage_00001"]


def coco_file(tmp_path, images, categories=None, annotations=()):
    """A COCO json in tmp_path over two 40x60 PNGs a.png and b.png."""
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(tmp_path / name)
    document = {"images": images, "categories": categories or [{"id": 3, "name": "cat"}],
                "annotations": list(annotations)}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(document))
    return path


GOOD = {"id": 1, "file_name": "a.png", "height": 40, "width": 60}


@pytest.mark.parametrize("field, value, message", [
    ("height", "40", "images[1] (id 2): 'height' must be a positive integer, got '40': skipped"),
    ("height", None, "images[1] (id 2): 'height' must be a positive integer, got null: skipped"),
    ("width", "wide", "images[1] (id 2): 'width' must be a positive integer, got 'wide': skipped"),
    ("width", 0, "images[1] (id 2): 'width' must be a positive integer, got 0: skipped"),
    ("file_name", "/etc/hosts", "images[1] (id 2): 'file_name' '/etc/hosts' is an absolute path; file names must be "
                                "relative to the image folder: skipped"),
    ("file_name", "../outside/a.png", "images[1] (id 2): 'file_name' '../outside/a.png' contains '..'"),
    ("file_name", "sub\\..\\..\\a.png", "contains '..'"),
    ("file_name", "C:/data/a.png", "is an absolute path"),
])
def test_coco_image_fields_of_the_wrong_kind_skip_the_image_naming_file_and_key(tmp_path, field, value, message):
    path = coco_file(tmp_path, [GOOD, {"id": 2, "file_name": "b.png", "height": 40, "width": 60, field: value}])
    dataset = read_coco(path, verbose=False)
    assert [r.image_id for r in dataset.records] == [1]  # the good image is kept
    assert dataset.report.skipped_images == 1
    assert dataset.report.problems[0].startswith(f"{path}: ") and message in dataset.report.problems[0]
    with pytest.raises(DataError) as error:
        read_coco(path, strict=True, verbose=False)
    assert "\n" not in str(error.value) and message.removesuffix(": skipped") in str(error.value)


def test_coco_string_category_id_is_refused_naming_the_category(tmp_path):
    path = coco_file(tmp_path, [GOOD], categories=[{"id": 1, "name": "dog"}, {"id": "3", "name": "cat"}])
    with pytest.raises(DataError) as error:
        read_coco(path, verbose=False)
    assert str(error.value) == f"{path}: categories[1] 'id' must be an integer, got '3'"


def test_coco_annotation_that_is_not_an_object_is_dropped_naming_it(tmp_path):
    path = coco_file(tmp_path, [GOOD], annotations=[
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 20]}, 42, "box", None])
    dataset = read_coco(path, verbose=False)
    np.testing.assert_allclose(dataset.records[0].boxes, [[2, 1, 22, 11]])
    assert dataset.report.dropped_boxes == 3
    assert dataset.report.problems == [f"{path}: annotations[1] is not an object (got 42): dropped",
                                       f"{path}: annotations[2] is not an object (got \"box\"): dropped",
                                       f"{path}: annotations[3] is not an object (got null): dropped"]


def test_a_split_without_a_usable_image_stops_training_with_the_first_problem(tmp_path, capsys):
    path = coco_file(tmp_path, [{"id": 1, "file_name": "a.png", "height": "40", "width": 60}])
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {{name: classloc, num_classes: 1, image_size: [32, 32]}}\n"
                      f"data: {{format: coco, path: {path}, val_split: ''}}\n"
                      f"train: {{output_dir: {tmp_path / 'run'}, epochs: 1}}\n")
    with pytest.raises(DataError) as error:
        load_split(load_config(config), "train")
    assert str(error.value) == (f"{path}: the train split ('train') has no usable image (1 images skipped, 0 boxes "
                                f"dropped, 0 boxes clipped); first problem: {path}: images[0] (id 1): 'height' must "
                                f"be a positive integer, got '40': skipped")
    # the CLI: exit 2, that one line, no traceback, nothing written in the run directory
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"kdet: error: {error.value}" in err.splitlines() and "Traceback" not in err
    assert list((tmp_path / "run").iterdir()) == []


@pytest.mark.parametrize("filename, reason", [("/work/shared/data/bccd/BCCD/JPEGImages/BloodImage_00001.jpg",
                                               "is an absolute path"),
                                              ("../../JPEGImages/BloodImage_00001.jpg", "contains '..'")])
def test_voc_filename_leaving_the_dataset_is_refused_naming_the_xml(voc_copy, filename, reason):
    xml = voc_copy / "Annotations" / "BloodImage_00001.xml"
    text = xml.read_text()
    start, end = text.index("<filename>") + len("<filename>"), text.index("</filename>")
    xml.write_text(text[:start] + filename + text[end:])
    dataset = read_voc(voc_copy, verbose=False)
    assert len(dataset) == 1 and dataset.records[0].path.endswith("BloodImage_00000.jpg")
    assert dataset.report.problems == [f"{xml}: <filename> {filename!r} {reason}; it must name a file in "
                                       f"JPEGImages/: skipped"]


def test_voc_split_list_entry_leaving_the_dataset_is_refused(voc_copy):
    (voc_copy / "ImageSets" / "Main" / "train.txt").write_text("BloodImage_00000\n../../etc/passwd\n")
    dataset = read_voc(voc_copy, verbose=False)
    assert len(dataset) == 1
    assert dataset.report.problems == [f"{voc_copy / 'ImageSets'}: image id '../../etc/passwd' of split 'train' "
                                       f"contains '..': skipped"]


def test_coco_written_elsewhere_copies_its_images_and_reads_back(voc_copy, tmp_path):
    dataset = read_voc(voc_copy, verbose=False)
    target = tmp_path / "converted" / "train.json"
    write_coco(dataset, target)
    names = [entry["file_name"] for entry in json.loads(target.read_text())["images"]]
    assert names == ["images/train_000000.jpg", "images/train_000001.jpg"]
    back = read_coco(target, verbose=False)
    assert back.report.problems == [] and len(back) == 2
    np.testing.assert_allclose(back.records[1].boxes, dataset.records[1].boxes)
    np.testing.assert_array_equal(read_image(back.records[0].path), read_image(dataset.records[0].path))


# ---------------------------------------------------------------- one decoder

def _pipeline_image(record, size):
    """The image the training / evaluation pipeline makes of `record` at its own size (no augmentation)."""
    batch = next(iter(make_tf_dataset(DetectionDataset([record], ["a"]), size, 1, training=False)))
    return batch["images"][0].numpy()


def test_a_16_bit_png_trains_at_the_brightness_read_image_sees(tmp_path):
    values = (np.arange(48 * 64).reshape(48, 64) % 3000 + 1000).astype(np.uint16)  # 1000..3999 of 0..65535
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"  # what PIL writes of a uint16 array
    expected = np.round((values - 1000.0) / 2999.0 * 255.0)  # the documented rule: stretched by its own range
    seen = read_image(tmp_path / "deep.png")  # what kdet predict sees
    np.testing.assert_array_equal(seen, np.repeat(expected[:, :, None], 3, axis=2))
    record = Record(0, 48, 64, np.zeros((0, 4)), [], path=str(tmp_path / "deep.png"))
    trained = _pipeline_image(record, (48, 64))
    np.testing.assert_array_equal(trained, seen)  # was a mean of 0.0 (TF's v / 257 of small values)
    assert 120 < trained.mean() < 135


def test_jpeg_training_evaluation_and_predict_see_the_same_pixels_as_pillow(shared_data):
    records = load_dataset("voc", shared_data / "bccd" / "BCCD", split="test", verbose=False).records[:3]
    for record in records:
        pillow = np.asarray(Image.open(record.path).convert("RGB"))
        np.testing.assert_array_equal(read_image(record.path), pillow)
        np.testing.assert_array_equal(_pipeline_image(record, (record.height, record.width)), pillow)


def test_mixed_sources_in_one_dataset_each_decoded_by_the_rule(tmp_path, shared_data):
    jpeg = shared_data / "bccd" / "BCCD" / "JPEGImages" / "BloodImage_00000.jpg"
    Image.fromarray(np.arange(480 * 640, dtype=np.uint16).reshape(480, 640) % 500).save(tmp_path / "deep.png")
    memory = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    records = [Record(0, 480, 640, np.zeros((0, 4)), [], path=str(jpeg)),
               Record(1, 480, 640, np.zeros((0, 4)), [], path=str(tmp_path / "deep.png")),
               Record(2, 480, 640, np.zeros((0, 4)), [], image=memory)]
    batch = next(iter(make_tf_dataset(DetectionDataset(records, ["a"]), (480, 640), 3, training=False)))
    for image, expected in zip(batch["images"].numpy(), [read_image(jpeg), read_image(tmp_path / "deep.png"), memory]):
        np.testing.assert_array_equal(image, expected)
