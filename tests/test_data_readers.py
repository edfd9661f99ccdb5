"""Every reader against the real files in shared/data, and shapes -> every writer -> reader round trips."""
import inspect
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import kdet.data.check
import kdet.data.coco
import kdet.data.images
import kdet.data.io
import kdet.data.shapes
import kdet.data.tfrecord
import kdet.data.voc
import kdet.data.yolo
from kdet.data.check import check_dataset, format_check
from kdet.data.coco import read_coco, write_coco
from kdet.data.images import read_segmentation
from kdet.data.io import load_dataset, write_dataset
from kdet.data.records import Record
from kdet.data.shapes import make_shapes
from kdet.data.tfrecord import read_tfrecord, tfrecord_to_dataset, write_tfrecord
from kdet.data.voc import read_voc, write_voc
from kdet.data.yolo import read_yolo, write_yolo


@pytest.fixture(scope="module")
def bccd(shared_data):
    return shared_data / "bccd" / "BCCD"


@pytest.fixture(scope="module")
def bccd_all(bccd):
    return read_voc(bccd, split=None, verbose=False)


# ---------------------------------------------------------------- BCCD (VOC xml)

def test_bccd_splits_and_class_counts(bccd):
    per_split = {}
    for split, expected in (("train", 205), ("val", 87), ("test", 72)):
        dataset = read_voc(bccd, split=split, verbose=False)
        assert len(dataset) == expected
        assert dataset.class_names == ["Platelets", "RBC", "WBC"]
        per_split[split] = check_dataset(dataset)["boxes_per_class"]
    totals = {name: sum(counts[name] for counts in per_split.values()) for name in ["Platelets", "RBC", "WBC"]}
    # README: RBC 4155, WBC 372, Platelets 361; the two zero-area boxes are RBCs and are dropped
    assert totals == {"Platelets": 361, "RBC": 4153, "WBC": 372}


def test_bccd_zero_area_boxes_are_reported_by_name(bccd_all):
    assert len(bccd_all) == 364
    report = bccd_all.report
    assert (report.skipped_images, report.dropped_boxes, report.clipped_boxes) == (0, 2, 0)
    assert any("BloodImage_00338.xml" in line and "zero" in line for line in report.problems)
    assert any("BloodImage_00343.xml" in line and "zero" in line for line in report.problems)
    text = format_check(check_dataset(bccd_all))
    assert "BloodImage_00338.xml" in text and "BloodImage_00343.xml" in text
    assert "RBC" in text and "640x480: 364" in text


def test_bccd_box_convention_against_the_xml(bccd, bccd_all):
    """VOC corners are 1-based: kdet box = [ymin - 1, xmin - 1, ymax - 1, xmax - 1] of the xml, as yxyx."""
    record = next(r for r in bccd_all.records if r.path.endswith("BloodImage_00000.jpg"))
    root = ElementTree.parse(bccd / "Annotations" / "BloodImage_00000.xml").getroot()
    expected = [[float(o.findtext(f"bndbox/{k}")) - 1 for k in ("ymin", "xmin", "ymax", "xmax")]
                for o in root.findall("object")]
    names = [o.findtext("name") for o in root.findall("object")]
    np.testing.assert_allclose(record.boxes, expected, atol=1e-5)
    assert [bccd_all.class_names[label] for label in record.labels] == names
    assert record.boxes[0].tolist() == [176, 259, 375, 490]  # the README's WBC: 260 177 491 376
    assert (record.height, record.width) == (480, 640)


# ---------------------------------------------------------------- COCO8 / COCO8-seg (YOLO txt)

def test_coco8_yolo_box_from_a_txt_line(shared_data):
    dataset = read_yolo(shared_data / "coco8" / "coco8" / "coco8.yaml", split="train", verbose=False)
    assert len(dataset.class_names) == 80 and dataset.class_names[45] == "bowl"
    assert [len(r.labels) for r in dataset.records] == [8, 2, 2, 1]
    record = dataset.records[0]
    assert record.path.endswith("000000000009.jpg") and (record.height, record.width) == (480, 640)
    # first line "45 0.479492 0.688771 0.955609 0.5955" by hand, image 640 x 480:
    # x = 0.479492*640 -/+ 0.955609*640/2 = 1.08 / 612.66976; y = 0.688771*480 -/+ 0.5955*480/2 = 187.69008 / 473.53008
    np.testing.assert_allclose(record.boxes[0], [187.69008, 1.08, 473.53008, 612.66976], atol=1e-3)
    assert record.labels[0] == 45
    val = read_yolo(shared_data / "coco8" / "coco8" / "coco8.yaml", split="val", verbose=False)
    assert [len(r.labels) for r in val.records] == [2, 1, 9, 5]  # 30 objects in all, as the README says
    assert not dataset.report.problems and not val.report.problems


def test_coco8_seg_polygons_give_boxes_and_masks(shared_data):
    detect = read_yolo(shared_data / "coco8" / "coco8" / "coco8.yaml", split="train", verbose=False)
    segment = read_yolo(shared_data / "coco8" / "coco8-seg" / "coco8-seg.yaml", split="train", with_masks=True,
                        verbose=False)
    for box_record, polygon_record in zip(detect.records, segment.records):
        np.testing.assert_array_equal(box_record.labels, polygon_record.labels)
        # COCO's boxes are the extent of its polygons: the two label sets agree to rounding
        np.testing.assert_allclose(box_record.boxes, polygon_record.boxes, atol=0.01)
        assert polygon_record.masks.shape == (len(polygon_record.labels), polygon_record.height,
                                              polygon_record.width)
    record = segment.records[0]
    line = (shared_data / "coco8" / "coco8-seg" / "labels" / "train" / "000000000009.txt").read_text().split("\n")[0]
    values = np.asarray(line.split()[1:], float)
    xs, ys = values[0::2] * record.width, values[1::2] * record.height
    shoelace = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
    rle = mask_utils.frPyObjects([np.stack([xs, ys], 1).ravel().tolist()], record.height, record.width)
    assert record.masks[0].sum() == mask_utils.area(rle)[0]
    assert abs(record.masks[0].sum() - shoelace) / shoelace < 0.01
    np.testing.assert_allclose(record.boxes[0], [ys.min(), xs.min(), ys.max(), xs.max()], atol=1e-3)
    mask_rows, mask_cols = np.nonzero(record.masks[0])
    assert mask_rows.min() >= np.floor(ys.min()) - 1 and mask_cols.max() <= np.ceil(xs.max()) + 1


# ---------------------------------------------------------------- labelme_voc3 (COCO json + VOC PNGs)

def test_labelme_coco_json_instances_and_masks(shared_data):
    dataset = read_coco(shared_data / "labelme_voc3" / "coco" / "annotations.json", with_masks=True, verbose=False)
    assert len(dataset) == 3 and len(dataset.class_names) == 20  # the _background_ category is not a class
    assert dataset.category_ids == list(range(1, 21)) and dataset.class_names[14] == "person"
    stats = check_dataset(dataset)
    assert stats["num_boxes"] == 12
    counts = {name: n for name, n in stats["boxes_per_class"].items() if n}
    assert counts == {"person": 6, "bus": 2, "bottle": 1, "car": 1, "chair": 1, "sofa": 1}
    for record in dataset.records:
        assert record.masks.shape == (len(record.labels), record.height, record.width)
        for box, mask in zip(record.boxes, record.masks):
            rows, cols = np.nonzero(mask)
            tight = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1])
            np.testing.assert_allclose(tight, box, atol=2.0)  # the polygon's raster sits in its bbox


def test_labelme_voc_pngs_keep_255_and_match_the_coco_json(shared_data):
    root = shared_data / "labelme_voc3" / "voc"
    dataset = read_voc(root, split=None, with_segmentation=True, verbose=False)
    assert len(dataset.class_names) == 20 and dataset.class_names[14] == "person"  # from class_names.txt
    semantic = read_segmentation(dataset.records[0].segmentation_path)
    assert dataset.records[0].segmentation_path.endswith("2011_000003.png")
    assert set(np.unique(semantic).tolist()) == {0, 5, 15, 255}  # 255 stays "ignore", not a class
    coco = read_coco(shared_data / "labelme_voc3" / "coco" / "annotations.json", with_masks=True, verbose=False)
    coco_by_name = {r.path.rsplit("/", 1)[-1]: r for r in coco.records}
    assert sum(len(r.labels) for r in dataset.records) == 12
    for record in dataset.records:
        other = coco_by_name[record.path.rsplit("/", 1)[-1]]
        assert sorted(record.labels.tolist()) == sorted(other.labels.tolist())
        # each PNG instance is the same object as one polygon of the json: same class, mask IoU > 0.85
        for mask, label in zip(record.masks, record.labels):
            ious = [(mask & m).sum() / (mask | m).sum() for m, l in zip(other.masks, other.labels) if l == label]
            assert max(ious) > 0.85
    assert not dataset.report.problems


# ---------------------------------------------------------------- round trips

def fractional(dataset):
    """Shapes with sub-pixel boxes (and no masks), so writers must keep fractions, not just integers."""
    for record in dataset.records:
        record.boxes = record.boxes + np.array([0.37, 0.21, -0.43, -0.11], np.float32)
        record.masks = record.segmentation = None
    return dataset


def assert_same(expected, actual, masks=False):
    assert actual.class_names == expected.class_names
    assert len(actual) == len(expected)
    for a, b in zip(expected.records, actual.records):
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3)
        np.testing.assert_array_equal(b.labels, a.labels)
        assert (b.height, b.width) == (a.height, a.width)
        if masks:
            np.testing.assert_array_equal(b.masks, a.masks)
    assert not actual.report.problems


@pytest.mark.parametrize("form", ["coco", "voc", "yolo", "tfrecord"])
def test_round_trip_fractional_boxes(tmp_path, form):
    dataset = fractional(make_shapes(12, seed=21))
    write_dataset(dataset, form, tmp_path, split="val")
    options = {} if form == "tfrecord" else {"verbose": False}
    assert_same(dataset, load_dataset(form, tmp_path, split="val", **options))


def test_round_trip_masks_coco(tmp_path):
    dataset = make_shapes(8, seed=22)
    write_coco(dataset, tmp_path / "shapes.json")
    assert len(list((tmp_path / "images").glob("shapes_*.png"))) == 8
    back = read_coco(tmp_path / "shapes.json", with_masks=True, verbose=False)
    assert_same(dataset, back, masks=True)
    for a, b in zip(dataset.records, back.records):
        np.testing.assert_array_equal(kdet.data.images.read_image(b.path), a.image)


def test_round_trip_masks_voc(tmp_path):
    dataset = make_shapes(8, seed=23)
    write_voc(dataset, tmp_path, split="train")
    back = read_voc(tmp_path, split="train", with_segmentation=True, verbose=False)
    assert_same(dataset, back, masks=True)  # boxes come back from the SegmentationObject masks, exactly
    for a, b in zip(dataset.records, back.records):
        np.testing.assert_array_equal(read_segmentation(b.segmentation_path), a.segmentation)
    # VOC lists its segmented images in ImageSets/Segmentation: with_segmentation reads that list when present
    (tmp_path / "ImageSets" / "Segmentation").mkdir()
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("train_000002\ntrain_000005\n")
    assert len(read_voc(tmp_path, split="train", with_segmentation=True, verbose=False)) == 2
    assert len(read_voc(tmp_path, split="train", verbose=False)) == 8


def test_round_trip_tfrecord_element_dicts(tmp_path):
    dataset = make_shapes(6, min_objects=0, max_objects=3, seed=24)
    write_tfrecord(dataset, tmp_path / "s.tfrecord")
    back = tfrecord_to_dataset(tmp_path / "s.tfrecord")
    assert_same(dataset, back, masks=True)
    elements = list(read_tfrecord(tmp_path / "s.tfrecord", with_masks=True, with_segmentation=True))
    for record, element in zip(dataset.records, elements):
        np.testing.assert_array_equal(element["images"].numpy(), record.image.astype(np.float32))
        np.testing.assert_allclose(element["bounding_boxes"]["boxes"].numpy().reshape(-1, 4), record.boxes, atol=1e-3)
        np.testing.assert_array_equal(element["bounding_boxes"]["labels"].numpy(), record.labels)
        np.testing.assert_array_equal(element["masks"].numpy(), record.masks)
        np.testing.assert_array_equal(element["segmentation_masks"].numpy()[:, :, 0], record.segmentation)
        assert element["image_id"].numpy() == record.image_id
        assert element["original_size"].numpy().tolist() == [128, 128]


def test_tfrecord_uses_the_od_api_keys(tmp_path):
    import tensorflow as tf

    dataset = make_shapes(1, seed=25)
    write_tfrecord(dataset, tmp_path / "s.tfrecord")
    raw = next(iter(tf.data.TFRecordDataset(str(tmp_path / "s.tfrecord")))).numpy()
    feature = tf.train.Example.FromString(raw).features.feature
    record = dataset.records[0]
    assert feature["image/object/class/label"].int64_list.value == (record.labels + 1).tolist()  # 1-based
    np.testing.assert_allclose(feature["image/object/bbox/xmin"].float_list.value, record.boxes[:, 1] / 128)
    np.testing.assert_allclose(feature["image/object/bbox/ymax"].float_list.value, record.boxes[:, 2] / 128)
    assert feature["image/format"].bytes_list.value == [b"png"]
    assert feature["image/source_id"].bytes_list.value == [b"0"]
    assert [t.decode() for t in feature["image/object/class/text"].bytes_list.value] == \
        [dataset.class_names[label] for label in record.labels]
    assert "item {\n  id: 1\n  name: 'circle'\n}" in (tmp_path / "label_map.pbtxt").read_text()


def test_real_files_round_trip_through_every_writer(tmp_path, bccd):
    """BCCD records point at JPEG files: writers copy or reference them, readers find them again."""
    dataset = read_voc(bccd, split="test", verbose=False)
    dataset.records = dataset.records[:6]
    for form in ("coco", "voc", "yolo", "tfrecord"):
        out = tmp_path / form
        write_dataset(dataset, form, out, split="test")
        back = load_dataset(form, out, split="test", **({} if form == "tfrecord" else {"verbose": False}))
        assert_same(dataset, back)
    # the tfrecord holds the original JPEG bytes, not a re-encoding
    raw = (tmp_path / "tfrecord" / "test.tfrecord").read_bytes()
    assert open(dataset.records[0].path, "rb").read() in raw


def test_yolo_writer_merges_splits_into_one_yaml(tmp_path):
    write_yolo(make_shapes(3, seed=1), tmp_path, split="train")
    write_yolo(make_shapes(2, seed=2), tmp_path, split="val")
    assert len(read_yolo(tmp_path / "data.yaml", split="train", verbose=False)) == 3
    assert len(read_yolo(tmp_path / "data.yaml", split="val", verbose=False)) == 2


# ---------------------------------------------------------------- dispatch and check

def test_load_dataset_shapes_splits_are_disjoint():
    train = load_dataset("shapes", num_images=3)
    val = load_dataset("shapes", split="val", num_images=3)
    assert not any(np.array_equal(a.image, b.image) for a in train.records for b in val.records)
    assert load_dataset("shapes", num_images=2, max_objects=1).records[0].labels.shape == (1,)


def test_check_dataset_counts_against_numpy():
    dataset = make_shapes(20, seed=30)
    stats = check_dataset(dataset)
    labels = np.concatenate([r.labels for r in dataset.records])
    assert stats["boxes_per_class"] == dict(zip(dataset.class_names, np.bincount(labels, minlength=3).tolist()))
    assert stats["num_images"] == 20 and stats["num_boxes"] == len(labels)
    assert stats["image_sizes"] == {"128x128": 20}
    widths = np.concatenate([r.boxes[:, 3] - r.boxes[:, 1] for r in dataset.records])
    assert stats["box_width"]["median"] == pytest.approx(float(np.median(widths)))
    empty = check_dataset(type(dataset)(records=[Record(0, 4, 4, np.zeros((0, 4)), [])], class_names=["a"]))
    assert empty["box_width"] is None and empty["images_without_boxes"] == 1
    assert "images: 1 (1 without boxes)" in format_check(empty)


def test_no_py_function_or_tf_keras_in_the_data_modules():
    for module in (kdet.data.check, kdet.data.coco, kdet.data.images, kdet.data.io, kdet.data.shapes,
                   kdet.data.tfrecord, kdet.data.voc, kdet.data.yolo):
        source = inspect.getsource(module)
        assert "py_function(" not in source and "tf.keras" not in source, module.__name__
