"""kdet.ops.yolo_grid against loop references written from the YOLOv1 / YOLOv2 papers (as in the lecture)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from kdet.ops import best_prior, yolo_v1_decode, yolo_v1_encode, yolo_v2_decode, yolo_v2_encode


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def clipped(box, image_h, image_w):
    y1, x1, y2, x2 = box
    return min(max(y1, 0), image_h), min(max(x1, 0), image_w), min(max(y2, 0), image_h), min(max(x2, 0), image_w)


def v1_encode_reference(boxes, labels, image_size, grid, num_classes):
    image_h, image_w = image_size
    target = np.zeros((grid, grid, 5 + num_classes))
    for box, label in zip(boxes, labels):
        y1, x1, y2, x2 = clipped(box, image_h, image_w)
        if label < 0 or y2 <= y1 or x2 <= x1:
            continue
        cy, cx = (y1 + y2) / 2 / image_h * grid, (x1 + x2) / 2 / image_w * grid
        row, col = min(int(cy), grid - 1), min(int(cx), grid - 1)
        if target[row, col, 4]:
            continue  # first object keeps the cell
        target[row, col, :5] = [cy - row, cx - col, (y2 - y1) / image_h, (x2 - x1) / image_w, 1]
        target[row, col, 5 + label] = 1
    return target


def v2_encode_reference(boxes, labels, anchors, image_size, num_classes, stride=32):
    """Cells of `stride` pixels from the top left; ceil(size / stride) of them cover the image."""
    image_h, image_w = image_size
    grid_h, grid_w = math.ceil(image_h / stride), math.ceil(image_w / stride)
    target = np.zeros((grid_h, grid_w, len(anchors), 5 + num_classes))
    for box, label in zip(boxes, labels):
        y1, x1, y2, x2 = clipped(box, image_h, image_w)
        h, w = y2 - y1, x2 - x1
        if label < 0 or h <= 0 or w <= 0:
            continue
        shape_iou = [min(h, ah) * min(w, aw) / (h * w + ah * aw - min(h, ah) * min(w, aw)) for ah, aw in anchors]
        a = int(np.argmax(shape_iou))
        cy, cx = (y1 + y2) / 2 / stride, (x1 + x2) / 2 / stride
        row, col = min(int(cy), grid_h - 1), min(int(cx), grid_w - 1)
        if target[row, col, a, 4]:
            continue
        target[row, col, a, :5] = [cy - row, cx - col, math.log(h / anchors[a][0]), math.log(w / anchors[a][1]), 1]
        target[row, col, a, 5 + label] = 1
    return target


def random_ground_truth(rng, count, image_size, num_classes):
    image_h, image_w = image_size
    corner = rng.uniform([-20, -20], [image_h, image_w], (count, 2))
    size = rng.uniform(2, 0.6 * image_h, (count, 2))
    boxes = np.concatenate([corner, corner + size], axis=1).astype(np.float32)
    labels = rng.integers(-1, num_classes, count).astype(np.int32)
    return boxes, labels


@pytest.mark.parametrize("seed", range(5))
def test_v1_encode_equals_reference(seed):
    rng = np.random.default_rng(seed)
    boxes, labels = random_ground_truth(rng, 30, (448, 448), 20)
    target = yolo_v1_encode(boxes, labels, (448, 448), 7, 20).numpy()
    np.testing.assert_allclose(target, v1_encode_reference(boxes, labels, (448, 448), 7, 20), atol=1e-5)


def test_v1_encode_lecture_example_collisions_and_empty():
    # lecture: S = 3 on a 448 image, centre (x, y) = (220, 190), w = 224, h = 143 -> cell (row 1, col 1)
    box = [[190 - 71.5, 220 - 112, 190 + 71.5, 220 + 112]]
    target = yolo_v1_encode(box, [4], (448, 448), 3, 5).numpy()
    cell = 448 / 3
    np.testing.assert_allclose(target[1, 1, :5], [190 / cell - 1, 220 / cell - 1, 143 / 448, 224 / 448, 1], atol=1e-5)
    assert abs(target[1, 1, 1] - 0.48) < 0.01 and target[1, 1, 5 + 4] == 1 and target.sum() > 0
    # two objects in one cell: the first keeps it; a padded row and a zero-area row are ignored
    boxes = np.array([[10, 10, 30, 30], [12, 12, 28, 28], [100, 100, 120, 120], [50, 50, 50, 60]], np.float32)
    target = yolo_v1_encode(boxes, [1, 2, -1, 0], (128, 128), 4, 3).numpy()
    assert target[..., 4].sum() == 1 and target[0, 0, 5 + 1] == 1
    batched = yolo_v1_encode(np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), np.int32), (64, 64), 4, 3)
    assert batched.shape == (2, 4, 4, 8) and not batched.numpy().any()


def test_v1_decode_equals_reference_and_inverts_encode():
    rng = np.random.default_rng(1)
    num_boxes, num_classes, grid, image_size = 2, 3, 5, (200, 300)
    predictions = rng.uniform(0, 1, (2, grid, grid, num_boxes * 5 + num_classes)).astype(np.float32)
    boxes, scores = (t.numpy() for t in yolo_v1_decode(predictions, image_size, num_boxes, num_classes))
    assert boxes.shape == (2, grid * grid * num_boxes, 4) and scores.shape == (2, grid * grid * num_boxes, 3)
    for b in range(2):
        for i in range(grid):
            for j in range(grid):
                for k in range(num_boxes):
                    y, x, sh, sw, conf = predictions[b, i, j, k * 5:k * 5 + 5]
                    cy, cx = (y + i) / grid * 200, (x + j) / grid * 300
                    h, w = sh ** 2 * 200, sw ** 2 * 300
                    n = (i * grid + j) * num_boxes + k
                    np.testing.assert_allclose(boxes[b, n], [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2],
                                               rtol=1e-5, atol=1e-4)
                    np.testing.assert_allclose(scores[b, n], conf * predictions[b, i, j, 10:], rtol=1e-6)
    # encode -> predictions holding the target (sqrt sizes) -> decode gives the boxes back
    gt = np.array([[20, 30, 90, 120], [110, 200, 190, 290]], np.float32)
    target = yolo_v1_encode(gt, [0, 2], image_size, grid, num_classes).numpy()
    as_prediction = np.concatenate([target[..., :2], np.sqrt(target[..., 2:4]), target[..., 4:5],
                                    np.zeros_like(target[..., :5]), target[..., 5:]], axis=-1)[None]
    decoded, class_scores = (t.numpy()[0] for t in yolo_v1_decode(as_prediction, image_size, 2, num_classes))
    found = np.nonzero(class_scores.max(axis=1) > 0.5)[0]
    np.testing.assert_allclose(decoded[found], gt, atol=1e-3)
    np.testing.assert_array_equal(class_scores[found].argmax(axis=1), [0, 2])


def test_v2_decode_equals_reference():
    rng = np.random.default_rng(2)
    anchors = np.array([[20, 30], [60, 40], [100, 120]], np.float32)
    grid_h, grid_w, num_classes = 4, 6, 5
    predictions = rng.normal(0, 1, (1, grid_h, grid_w, 3 * (5 + num_classes))).astype(np.float32)
    result = {k: v.numpy() for k, v in yolo_v2_decode(predictions, anchors, num_classes).items()}
    raw = predictions.reshape(1, grid_h, grid_w, 3, 5 + num_classes)
    for i in range(grid_h):
        for j in range(grid_w):
            for a in range(3):
                ty, tx, th, tw, to = raw[0, i, j, a, :5]
                cy, cx = (sigmoid(ty) + i) * 32, (sigmoid(tx) + j) * 32  # stride 32
                h, w = anchors[a, 0] * math.exp(th), anchors[a, 1] * math.exp(tw)
                logits = raw[0, i, j, a, 5:].astype(np.float64)
                probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
                n = (i * grid_w + j) * 3 + a
                np.testing.assert_allclose(result["boxes"][0, n], [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2],
                                           rtol=1e-5, atol=1e-3)
                assert abs(result["objectness"][0, n] - sigmoid(to)) < 1e-6
                np.testing.assert_allclose(result["class_probs"][0, n], probs, atol=1e-6)
                np.testing.assert_allclose(result["scores"][0, n], sigmoid(to) * probs, atol=1e-6)


@pytest.mark.parametrize("seed, image_size", [(0, (160, 160)), (1, (160, 160)), (2, (96, 224)), (3, (100, 150))])
def test_v2_encode_equals_reference(seed, image_size):
    """Square, non-square and not-a-multiple-of-32 images (100 x 150: a 4 x 5 grid whose last cells reach past the
    image)."""
    rng = np.random.default_rng(10 + seed)
    anchors = [(16.0, 16.0), (40.0, 20.0), (20.0, 40.0), (80.0, 90.0)]
    boxes, labels = random_ground_truth(rng, 25, image_size, 4)
    target = yolo_v2_encode(boxes, labels, anchors, image_size, 4).numpy()
    want = v2_encode_reference(boxes, labels, anchors, image_size, 4)
    assert target.shape == want.shape == (math.ceil(image_size[0] / 32), math.ceil(image_size[1] / 32), 4, 9)
    np.testing.assert_allclose(target, want, atol=1e-5)


def test_encode_and_decode_with_tensor_sizes_equal_the_static_ones():
    """In a trace relaxed to unknown sizes (multi-scale fit, predict at a new size) image sizes and grids are
    tensors: YOLOv1 / YOLOv2 targets and decoded boxes are the ones static shapes give."""
    rng = np.random.default_rng(4)
    anchors = np.array([[16, 16], [40, 20]], np.float32)
    boxes, labels = random_ground_truth(rng, 12, (100, 150), 3)
    spec = [tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, None, 3])]

    @tf.function(input_signature=spec)
    def encode(boxes, labels, image):
        size = (tf.shape(image)[0], tf.shape(image)[1])
        return yolo_v1_encode(boxes, labels, size, 3, 3), yolo_v2_encode(boxes, labels, anchors, size, 3)

    v1, v2 = encode(boxes, labels, tf.zeros([100, 150, 3]))
    assert encode.get_concrete_function().structured_outputs[1].shape.as_list() == [None, None, 2, 8]
    np.testing.assert_allclose(v1.numpy(), yolo_v1_encode(boxes, labels, (100, 150), 3, 3).numpy(), atol=1e-6)
    np.testing.assert_allclose(v2.numpy(), v2_encode_reference(boxes, labels, anchors, (100, 150), 3), atol=1e-5)

    raw = rng.normal(0, 1, (2, 4, 5, 2 * 8)).astype(np.float32)
    dynamic = tf.function(lambda p: yolo_v2_decode(p, anchors, 3), input_signature=[tf.TensorSpec([None] * 3 + [16])])
    v1_dynamic = tf.function(lambda p, s: yolo_v1_decode(p, (s[0], s[1]), 2, 3),
                             input_signature=[tf.TensorSpec([None, 3, 3, 13]), tf.TensorSpec([2], tf.int32)])
    for key, value in yolo_v2_decode(raw, anchors, 3).items():
        np.testing.assert_allclose(dynamic(raw)[key].numpy(), value.numpy(), atol=1e-6, err_msg=key)
    v1_raw = rng.uniform(0, 1, (2, 3, 3, 13)).astype(np.float32)
    for got, want in zip(v1_dynamic(v1_raw, tf.constant([100, 150])), yolo_v1_decode(v1_raw, (100, 150), 2, 3)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_v2_encode_then_decode_recovers_boxes_in_a_graph():
    anchors = np.array([[16, 16], [40, 20], [90, 80]], np.float32)
    gt = np.array([[[10, 12, 30, 28], [50, 40, 95, 60], [0, 0, 0, 0]]], np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None], tf.int32)])
    def encode(boxes, labels):
        return yolo_v2_encode(boxes, labels, anchors, (128, 128), 2)

    target = encode(gt, np.array([[1, 0, -1]], np.int32)).numpy()
    assert target[..., 4].sum() == 2
    offsets = np.clip(target[..., :2], 1e-6, 1 - 1e-6)
    raw = np.concatenate([np.log(offsets / (1 - offsets)), target[..., 2:4], np.where(target[..., 4:5] > 0, 9.0, -9.0),
                          target[..., 5:] * 9.0], axis=-1).reshape(1, 4, 4, -1).astype(np.float32)
    decoded = yolo_v2_decode(raw, anchors, 2)
    found = np.nonzero(decoded["objectness"].numpy()[0] > 0.5)[0]
    np.testing.assert_allclose(decoded["boxes"].numpy()[0, found][np.argsort(found)], gt[0, :2], atol=1e-3)
    np.testing.assert_array_equal(np.sort(decoded["class_probs"].numpy()[0, found].argmax(axis=1)), [0, 1])


def test_best_prior_by_shape_iou_first_on_ties():
    anchors = [[10, 10], [20, 40], [40, 20], [10, 10]]
    np.testing.assert_array_equal(best_prior(tf.constant([10.0, 22.0, 38.0, 5.0]), tf.constant([10.0, 38.0, 22.0, 5.0]),
                                             anchors).numpy(), [0, 1, 2, 0])
