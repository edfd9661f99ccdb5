import numpy as np
import pytest
from PIL import Image

from kdet.errors import DataError
from kdet.inference.visualize import class_color, draw_detections, draw_segmentation, save_png, voc_palette


def test_voc_palette_known_entries():
    palette = voc_palette()
    # Entries of the official VOC colour map: background, aeroplane, bicycle, bird, person (15), void (255).
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[2].tolist() == [0, 128, 0]
    assert palette[3].tolist() == [128, 128, 0]
    assert palette[15].tolist() == [192, 128, 128]
    assert palette[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in palette}) == 256
    assert class_color(0) == (128, 0, 0) and class_color(1) == (0, 128, 0)


def test_boxes_are_drawn_in_the_class_colour_on_their_edges():
    image = np.zeros((100, 120, 3), np.uint8)
    boxes = [[30, 20, 70, 60],     # class 0, yxyx
             [40, 80, 90, 110],    # class 1
             [5, 5, 15, 15]]       # below the score threshold
    out = draw_detections(image, boxes, [0, 1, 1], [0.93, 0.6, 0.1], ["cell", "rbc"], score_threshold=0.3,
                          line_width=2)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert not image.any()                                     # input untouched
    red, green = class_color(0), class_color(1)
    assert red != green
    # Left, right and bottom edges of box 0 (columns 20 and 59, row 69), at mid-height / mid-width.
    assert tuple(out[50, 20]) == red and tuple(out[50, 21]) == red    # line width 2
    assert tuple(out[50, 59]) == red and tuple(out[69, 40]) == red
    assert tuple(out[50, 40]) == (0, 0, 0)                          # interior stays clear
    assert tuple(out[65, 80]) == green and tuple(out[65, 109]) == green
    # The filtered box leaves no trace; the label sits above box 0 in the class colour, with text in it.
    assert not out[5:15, 5:15].any()
    label = out[10:30, 20:60]
    assert (label == red).all(axis=-1).sum() > 50
    assert (label.min(axis=-1) > 150).sum() > 20                    # light (anti-aliased) text on the dark red


def test_labels_names_and_other_formats():
    image = np.full((60, 60, 3), 255, np.uint8)
    plain = draw_detections(image, [[0, 0, 30, 40]], [2], None, None)   # ground truth: no scores, no names
    assert tuple(plain[15, 39]) == class_color(2)                      # label inside (no room above)
    xyxy = draw_detections(image.astype(np.float32), [[0, 0, 40, 30]], [2], None, None,
                           bounding_box_format="xyxy")
    np.testing.assert_array_equal(plain, xyxy)
    padded = draw_detections(image, [[0, 0, 30, 40]], [-1], [1.0], ["a"])
    np.testing.assert_array_equal(padded, image)
    with pytest.raises(DataError, match="boxes"):
        draw_detections(image, [[0, 0, 1, 1]], [0, 1], [0.5], ["a"])


def test_segmentation_overlay_blends_voc_colours():
    image = np.full((4, 6, 3), 100, np.uint8)
    mask = np.zeros((4, 6, 1), np.int32)
    mask[:, 3:] = 1
    mask[0, 0] = 255
    out = draw_segmentation(image, mask, num_classes=21, alpha=0.5)
    assert tuple(out[2, 4]) == (114, 50, 50)          # .5 * 100 + .5 * (128, 0, 0)
    assert tuple(out[2, 1]) == (100, 100, 100)        # background left as it is
    assert tuple(out[0, 0]) == (162, 162, 146)        # ignore: .5 * 100 + .5 * (224, 224, 192)
    with_background = draw_segmentation(image, mask, 21, alpha=1.0, background_index=None)
    assert tuple(with_background[2, 1]) == (0, 0, 0)
    with pytest.raises(DataError, match="class id 30"):
        draw_segmentation(image, np.full((4, 6), 30), 21)
    with pytest.raises(DataError, match="shape"):
        draw_segmentation(image, np.zeros((3, 6)), 21)


def test_save_png_round_trip(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    path = save_png(image, tmp_path / "sub" / "out.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
