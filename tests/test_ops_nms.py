"""kdet.ops nms / batched_nms / combined_nms against a greedy numpy reference; both combined_nms paths."""
import importlib

import numpy as np
import pytest
import tensorflow as tf

from kdet.ops import batched_nms, builtins_only, combined_nms, nms


def iou_one_to_many(box, boxes):
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    union = np.prod(box[2:] - box[:2]) + np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def nms_reference(boxes, scores, threshold):
    """Greedy NMS: descending score, ties by index; suppress IoU > threshold."""
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou_one_to_many(boxes[i], boxes) > threshold
    return np.array(keep, np.int64)


def batched_nms_reference(boxes, scores, classes, threshold):
    keep = np.zeros(len(boxes), bool)
    for c in np.unique(classes):
        idx = np.nonzero(classes == c)[0]
        keep[idx[nms_reference(boxes[idx], scores[idx], threshold)]] = True
    kept = np.nonzero(keep)[0]
    return kept[np.argsort(-scores[kept], kind="stable")]


def combined_reference(boxes, scores, max_detections, iou_threshold, score_threshold, per_class):
    """One image. boxes [N, 4] or [N, C, 4]; scores [N, C]. Order: score desc, then class, then NMS rank."""
    rows = []
    for c in range(scores.shape[1]):
        class_boxes = boxes if boxes.ndim == 2 else boxes[:, c]
        idx = np.nonzero(scores[:, c] > score_threshold)[0]
        kept = idx[nms_reference(class_boxes[idx], scores[idx, c], iou_threshold)][:per_class]
        rows += [(-scores[i, c], c, rank, class_boxes[i]) for rank, i in enumerate(kept)]
    rows.sort(key=lambda row: row[:3])
    rows = rows[:max_detections]
    out_boxes = np.zeros((max_detections, 4), np.float32)
    out_scores = np.zeros(max_detections, np.float32)
    out_classes = np.zeros(max_detections, np.int32)
    for k, (neg_score, c, _, box) in enumerate(rows):
        out_boxes[k], out_scores[k], out_classes[k] = box, -neg_score, c
    return out_boxes, out_scores, out_classes, len(rows)


def clustered_boxes(rng, count, spread=8.0):
    centres = rng.uniform(20, 200, (max(1, count // 5), 2)).repeat(5, axis=0)[:count]
    centres = np.concatenate([centres, rng.uniform(20, 200, (count - len(centres), 2))])
    centres += rng.normal(0, spread, centres.shape)
    size = rng.uniform(10, 40, (count, 2))
    return np.concatenate([centres - size / 2, centres + size / 2], axis=1).astype(np.float32)


@pytest.mark.parametrize("seed", range(10))
def test_nms_equals_reference(seed):
    rng = np.random.default_rng(seed)
    boxes = clustered_boxes(rng, int(rng.integers(1, 300)))
    scores = rng.uniform(0, 1, len(boxes)).astype(np.float32)
    if seed % 3 == 0:
        scores = np.round(scores * 4) / 4  # ties: kept in index order
    threshold = float(rng.choice([0.3, 0.5, 0.7]))
    expected = nms_reference(boxes, scores, threshold)
    np.testing.assert_array_equal(nms(boxes, scores, threshold).numpy(), expected)
    with builtins_only():  # NMS V5 (the TFLite path)
        np.testing.assert_array_equal(nms(boxes, scores, threshold).numpy(), expected)


def test_nms_edge_cases():
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)
    same = np.tile([[10, 10, 50, 50]], (5, 1)).astype(np.float32)
    np.testing.assert_array_equal(nms(same, [0.1, 0.9, 0.9, 0.3, 0.9], 0.5).numpy(), [1])  # tie: lowest index
    # IoU exactly 0.5 is not suppressed at threshold 0.5 (strictly greater suppresses)
    np.testing.assert_array_equal(nms([[0, 0, 10, 10], [0, 0, 10, 5]], [0.9, 0.8], 0.5).numpy(), [0, 1])
    # degenerate boxes and boxes outside the image are kept as ordinary boxes
    odd = np.array([[5, 5, 5, 5], [-50, -50, -10, -10], [-49, -49, -10, -10]], np.float32)
    np.testing.assert_array_equal(nms(odd, [0.5, 0.7, 0.6], 0.5).numpy(), [1, 0])


@pytest.mark.parametrize("builtins", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_batched_nms_equals_per_class_reference(seed, builtins):
    rng = np.random.default_rng(100 + seed)
    count = int(rng.integers(1, 400))
    boxes = clustered_boxes(rng, count, spread=4.0)
    if seed == 5:
        boxes -= 150.0  # negative coordinates: class regions must still not overlap
    scores = rng.uniform(0, 1, count).astype(np.float32)
    if seed % 2:
        scores = np.round(scores * 8) / 8  # ties: kept in index order, and suppressed by the lower index
        boxes[::7, 2:] = boxes[::7, :2]  # zero-area boxes: never suppressed, suppress nothing
    classes = rng.integers(0, int(rng.integers(1, 12)), count).astype(np.int32) * 7 - 20  # any int ids
    with builtins_only(builtins):
        kept = batched_nms(boxes, scores, classes, 0.5).numpy()
    np.testing.assert_array_equal(kept, batched_nms_reference(boxes, scores, classes, 0.5))


@pytest.mark.parametrize("builtins", [False, True])
def test_batched_nms_traced_with_unknown_size_and_minus_inf_scores(builtins):
    @tf.function(input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None]), tf.TensorSpec([None], tf.int32)])
    def run(boxes, scores, classes):
        with builtins_only(builtins):
            return batched_nms(boxes, scores, classes, 0.45)

    rng = np.random.default_rng(7)
    for count in (0, 1, 250):
        boxes = clustered_boxes(rng, count)
        scores = rng.uniform(0, 1, count).astype(np.float32)
        scores[::5] = -np.inf  # never kept (as NMS V5 with score_threshold=-inf)
        classes = rng.integers(0, 3, count).astype(np.int32)
        live = np.nonzero(scores > -np.inf)[0]
        expected = live[batched_nms_reference(boxes[live], scores[live], classes[live], 0.45)]
        np.testing.assert_array_equal(run(boxes, scores, classes).numpy(), expected)


def test_batched_nms_empty_and_two_classes_on_the_same_box():
    assert batched_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32), 0.5).shape == (0,)
    same = np.array([[0, 0, 10, 10]] * 3, np.float32)
    np.testing.assert_array_equal(batched_nms(same, [0.2, 0.9, 0.5], [0, 1, 0], 0.5).numpy(), [1, 2])


def run_both_paths(*args, **kwargs):
    tf_path = combined_nms(*args, **kwargs)
    with builtins_only():
        twin = combined_nms(*args, **kwargs)
    return {k: v.numpy() for k, v in tf_path.items()}, {k: v.numpy() for k, v in twin.items()}


def check_against_reference(result, boxes, scores, max_detections, iou_threshold, score_threshold, per_class):
    for b in range(len(scores)):
        ref_boxes, ref_scores, ref_classes, count = combined_reference(
            boxes[b], scores[b], max_detections, iou_threshold, score_threshold, per_class)
        assert result["num_detections"][b] == count
        np.testing.assert_array_equal(result["classes"][b], ref_classes)
        np.testing.assert_allclose(result["scores"][b], ref_scores, atol=1e-6)
        np.testing.assert_allclose(result["boxes"][b], ref_boxes, atol=1e-5)


@pytest.mark.parametrize("seed,per_class_boxes,max_per_class", [
    (0, False, None), (1, True, None), (2, False, 3), (3, True, 4), (4, False, None)])
def test_combined_nms_both_paths_equal_reference(seed, per_class_boxes, max_per_class):
    rng = np.random.default_rng(200 + seed)
    batch, count, classes, max_detections = int(rng.integers(1, 4)), 80, 4, 25
    shape = (batch, count, classes, 4) if per_class_boxes else (batch, count, 4)
    boxes = clustered_boxes(rng, int(np.prod(shape[:-1]))).reshape(shape)
    scores = rng.uniform(0, 1, (batch, count, classes)).astype(np.float32) ** 3
    per_class = max_per_class or max_detections
    tf_path, twin = run_both_paths(boxes, scores, max_detections, 0.5, 0.1, max_per_class)
    for result in (tf_path, twin):
        assert result["classes"].dtype == np.int32 and result["num_detections"].dtype == np.int32
        assert result["boxes"].shape == (batch, max_detections, 4)
        check_against_reference(result, boxes, scores, max_detections, 0.5, 0.1, per_class)


@pytest.mark.parametrize("per_class_boxes", [False, True])
@pytest.mark.parametrize("compact_rows", [None, 50, 20])
def test_combined_nms_sparse_scores(per_class_boxes, compact_rows, monkeypatch):
    """Few (box, class) scores above the threshold, in different rows and classes per image (SSD's case): NMS runs
    on those rows and classes only, with the same detections. compact_rows: the builtins path's row cap lowered
    below the 300 rows, so its NMS loop gets only the passing rows (50: every image's fit) or all (20: the first
    image's ~37 do not); a few passing boxes have zero area (merged after the loop, by full-set row)."""
    if compact_rows is not None:  # the module (kdet.ops.nms is the function kdet.ops exports)
        monkeypatch.setattr(importlib.import_module("kdet.ops.nms"), "COMPACT_ROWS", compact_rows)
    rng = np.random.default_rng(31)
    batch, count, classes = 3, 300, 20
    shape = (batch, count, classes, 4) if per_class_boxes else (batch, count, 4)
    boxes = clustered_boxes(rng, int(np.prod(shape[:-1])), spread=3.0).reshape(shape)
    scores = rng.uniform(0, 0.05, (batch, count, classes)).astype(np.float32)
    for b, hits in enumerate((40, 3, 0)):  # the last image has no candidate at all
        rows, columns = rng.integers(0, count, hits), rng.choice([2, 5, 11, 17], hits)
        scores[b, rows, columns] = rng.uniform(0.2, 1, hits)
        boxes[b, rows[:hits // 8], ..., 2] = boxes[b, rows[:hits // 8], ..., 0]  # zero height
    passing_rows = (scores.max(axis=2) > 0.1).sum(axis=1)
    assert 20 < passing_rows[0] <= 50 and (boxes[..., 2] == boxes[..., 0]).any()
    tf_path, twin = run_both_paths(boxes, scores, 15, 0.5, 0.1, 4)
    for result in (tf_path, twin):
        check_against_reference(result, boxes, scores, 15, 0.5, 0.1, 4)
    assert tf_path["num_detections"][0] > 4 and tf_path["num_detections"][2] == 0


def test_combined_nms_zero_detections_and_fewer_candidates_than_rows():
    rng = np.random.default_rng(9)
    boxes = clustered_boxes(rng, 10).reshape(1, 10, 4)
    low = rng.uniform(0, 0.2, (1, 10, 3)).astype(np.float32)
    for result in run_both_paths(boxes, low, 8, 0.5, 0.5):
        assert result["num_detections"][0] == 0
        assert not result["boxes"].any() and not result["scores"].any() and not result["classes"].any()
    # 2 classes x 3 per class < 10 rows: the count stops at 6 and the rest is padding
    high = rng.uniform(0.5, 1, (1, 10, 2)).astype(np.float32)
    for result in run_both_paths(boxes, high, 10, 1.0, 0.0, 3):
        assert result["num_detections"][0] == 6
        check_against_reference(result, boxes, high, 10, 1.0, 0.0, 3)


def test_combined_nms_builtins_tie_order_is_class_then_rank():
    boxes = np.array([[[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 9]]], np.float32)
    scores = np.array([[[0.5, 0.5], [0.5, 0.9], [0.4, 0.5]]], np.float32)
    with builtins_only():
        result = combined_nms(boxes, scores, 6, 0.5, 0.0)
    np.testing.assert_array_equal(result["classes"].numpy()[0, :5], [1, 0, 0, 1, 0])
    np.testing.assert_allclose(result["scores"].numpy()[0, :5], [0.9, 0.5, 0.5, 0.5, 0.0])
    check_against_reference({k: v.numpy() for k, v in result.items()}, boxes, scores, 6, 0.5, 0.0, 6)


@pytest.mark.parametrize("per_class_boxes", [False, True])
def test_combined_nms_zero_area_boxes_both_paths_equal_reference(per_class_boxes):
    """The builtins path keeps zero-area boxes out of the NMS V5 kernel and merges them into every (image, class)
    output at once after its loop: the same detections, counts and order as TF's kernel and the reference, also
    when the zero-area boxes alone would fill a class's cap."""
    rng = np.random.default_rng(31)
    batch, count, classes = 2, 60, 3
    shape = (batch, count, classes, 4) if per_class_boxes else (batch, count, 4)
    boxes = clustered_boxes(rng, int(np.prod(shape[:-1]))).reshape(-1, 4)
    degenerate = rng.choice(len(boxes), len(boxes) // 3, replace=False)
    boxes[degenerate, 2] = boxes[degenerate, 0]  # zero height
    boxes = boxes.reshape(shape)
    scores = rng.uniform(0, 1, (batch, count, classes)).astype(np.float32) ** 2
    for result in run_both_paths(boxes, scores, 30, 0.5, 0.1, 8):
        check_against_reference(result, boxes, scores, 30, 0.5, 0.1, 8)


@pytest.mark.parametrize("builtins", [False, True])
def test_combined_nms_in_graph_with_unknown_batch(builtins):
    @tf.function(input_signature=[tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None, 3])])
    def detect(boxes, scores):
        with builtins_only(builtins):
            return combined_nms(boxes, scores, 12, 0.45, 0.2)

    rng = np.random.default_rng(11)
    for batch in (1, 3):
        boxes = clustered_boxes(rng, batch * 40).reshape(batch, 40, 4)
        scores = rng.uniform(0, 1, (batch, 40, 3)).astype(np.float32)
        result = {k: v.numpy() for k, v in detect(boxes, scores).items()}
        check_against_reference(result, boxes, scores, 12, 0.45, 0.2, 12)
