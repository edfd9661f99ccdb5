"""Non-maximum suppression with torchvision semantics, and the batched fixed-size detector post-processing.

`nms` and `batched_nms` run on TF's CombinedNonMaxSuppression kernel (each class one batch row, scores replaced by
their rank); with `builtins_only()` (TFLite) they and `combined_nms` run `tf.raw_ops.NonMaxSuppressionV5` with
`pad_to_max_output_size=True` and its `valid_outputs` count: it is a TFLite builtin, and after conversion TFLite
always returns the padded indices, so a count taken from the indices' shape would be wrong (tests/test_export_tflite.py
checks exported counts). The default path of `combined_nms` is TF's CombinedNonMaxSuppression on
only the rows (anchors) and classes where some score passes the threshold; the builtins path keeps every shape static
(a batch_size=1 TFLite export keeps no shape arithmetic, and the int8 Mask R-CNN export kept its detections only with
a static class count): its loop runs the kernel only for the (image, class) pairs with a passing score (a trip count,
not a shape) and, when they fit in COMPACT_ROWS, on a fixed number of rows holding every passing one.

Semantics (shared with torchvision.ops.nms): boxes are visited by descending score, equal scores by ascending
index; a box is suppressed by a kept box when their IoU is strictly greater than `iou_threshold`. Boxes must be
well-formed (y1 <= y2, x1 <= x2); degenerate boxes have IoU 0 with everything and are never suppressed.
"""
import functools

import tensorflow as tf

from kdet.ops.mode import builtins_only_enabled

COMPACT_ROWS = 1024  # see _combined_nms_builtins


def _nms_padded(boxes, scores, max_output_size, iou_threshold, score_threshold=float("-inf")):
    """-> (indices [max_output_size] int32 padded, valid count scalar int32). Keeps scores > score_threshold.

    Zero-area boxes go around the kernel: TFLite's NMS V5 selects a zero-area box again and again until the output
    is full (measured in LiteRT: indices [0, 1, 1, 1, 1, 1] where TF gives [0, 1, 2, 3, 4]), which exported
    detectors turned into rows of one repeated box. Such a box has IoU 0 with every box, so it neither suppresses
    nor is suppressed: NMS runs on the other boxes, and the zero-area ones are merged into its output by score.
    Equal scores then list the NMS-kept box before the zero-area one (TF would order them by index).
    """
    has_area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    lowest = tf.constant(float("-inf"), scores.dtype)
    indices, _, valid = tf.raw_ops.NonMaxSuppressionV5(
        boxes=boxes, scores=tf.where(has_area, scores, lowest), max_output_size=max_output_size,
        iou_threshold=iou_threshold, score_threshold=score_threshold, soft_nms_sigma=0.0, pad_to_max_output_size=True)
    kept_scores = tf.where(tf.range(tf.size(indices)) < valid, tf.gather(scores, indices), lowest)
    flat = tf.reshape(tf.where(~has_area & (scores > score_threshold), scores, lowest), [-1])
    merged_scores = tf.concat([kept_scores, flat], axis=0)
    merged_indices = tf.concat([indices, tf.range(tf.size(scores), dtype=indices.dtype)], axis=0)
    _, order = tf.math.top_k(merged_scores, k=tf.size(indices))  # stable: kept boxes first on equal scores
    count = tf.minimum(valid + tf.reduce_sum(tf.cast(~has_area & (scores > score_threshold), valid.dtype)),
                       tf.size(indices))
    return tf.gather(merged_indices, order), count


def nms(boxes, scores, iou_threshold):
    """torchvision.ops.nms.

    Args:
        boxes: [N, 4] yxyx.
        scores: [N].
        iou_threshold: suppress boxes with IoU > iou_threshold against a higher-scoring kept box.
    Returns:
        [K] int32 indices of the kept boxes, by descending score (ties by ascending index).
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    if not builtins_only_enabled():
        return _batched_nms_tf(boxes, scores, tf.zeros_like(scores, tf.int32), iou_threshold)
    indices, valid = _nms_padded(boxes, scores, tf.shape(boxes)[0], iou_threshold)
    return indices[:valid]


def batched_nms(boxes, scores, classes, iou_threshold):
    """torchvision.ops.batched_nms: NMS within each class independently.

    One NMS per class present, like torchvision's per-class path (its path for > 4000 boxes). Not torchvision's other
    path (one NMS over boxes offset by class): TF's NMS kernels compare each candidate with every kept box, so that
    would cost O(N * kept) instead of the sum over classes of O(N_c * kept_c) (10k boxes of 10 classes: ~1.5 s vs
    ~0.15 s), and offsets of thousands of pixels cost float32 IoU precision.

    Args:
        boxes: [N, 4] yxyx.
        scores: [N].
        classes: [N] int category of each box.
        iou_threshold: as in `nms`.
    Returns:
        [K] int32 kept indices, by descending score (ties by ascending index).
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    classes = tf.cast(tf.reshape(classes, [-1]), tf.int32)
    run = _batched_nms_builtins if builtins_only_enabled() else _batched_nms_tf
    return run(boxes, scores, classes, iou_threshold)


def _batched_nms_tf(boxes, scores, classes, iou_threshold):
    """batched_nms on one CombinedNonMaxSuppression: each class is a batch row [G, M] (G classes present, M boxes in
    the largest), which the kernel runs in parallel; its IoU is NMS V5's (zero-area boxes: IoU 0). A box's score is
    replaced by N - its position in the order (descending score, ascending index), exact in float32 for N < 2**24:
    the kernel's queue compares scores only, so equal scores would come out in heap order, and the rank it returns
    is the box's position. Boxes scoring -inf are dropped (as by NMS V5's score_threshold=-inf).
    Measured (benchmarks/run_all.py's inputs, 10 classes, 2 threads, one process, load ~5): 1k boxes 1.2 ms vs
    2.3 ms for the V5 loop (the builtins path), 10k 18 ms vs 46 ms."""
    n = tf.size(scores)
    by_score = tf.argsort(scores, direction="DESCENDING", stable=True)
    _, group, counts = tf.unique_with_counts(tf.gather(classes, by_score))  # group: [N] row of each ranked box
    ranked = tf.argsort(group, stable=True)  # positions in by_score, grouped by class, by rank within a class
    row = tf.gather(group, ranked)
    slots = tf.stack([row, tf.range(n) - tf.gather(tf.cumsum(counts, exclusive=True), row)], axis=1)
    source = tf.gather(by_score, ranked)
    rank = tf.where(tf.gather(scores, source) > float("-inf"), tf.cast(n - ranked, tf.float32), 0.0)
    shape = tf.stack([tf.size(counts), tf.reduce_max(tf.concat([counts, [1]], 0))])  # [G, M]
    row_scores = tf.scatter_nd(slots, rank, shape)  # 0 pads: not above the score threshold 0
    row_boxes = tf.scatter_nd(slots, tf.gather(boxes, source), tf.concat([shape, [4]], 0))
    _, kept_rank, _, _ = tf.raw_ops.CombinedNonMaxSuppression(
        boxes=row_boxes[:, :, None, :], scores=row_scores[..., None], max_output_size_per_class=shape[1],
        max_total_size=shape[1], iou_threshold=iou_threshold, score_threshold=0.0, pad_per_class=False,
        clip_boxes=False)
    positions = n - tf.cast(tf.boolean_mask(kept_rank, kept_rank > 0), tf.int32)
    kept = tf.scatter_nd(positions[:, None], tf.ones_like(positions), [n]) > 0  # [N] over by_score's order
    return tf.gather(by_score, tf.cast(tf.reshape(tf.where(kept), [-1]), tf.int32))


def _batched_nms_builtins(boxes, scores, classes, iou_threshold):
    """batched_nms from TFLite builtins: one NMS V5 per class in a loop."""
    # As `_nms_padded`: zero-area boxes neither suppress nor are suppressed, so they are kept (if their score passes)
    # outside the kernel. The boxes are grouped by class once (a stable sort), so each class is a slice and the
    # loop body is the kernel and a scatter (the per-class `where` + `nms` wrapper cost 3 ms at 1k boxes).
    has_area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    order = tf.argsort(classes, stable=True)
    sorted_boxes = tf.gather(boxes, order)
    sorted_scores = tf.gather(tf.where(has_area, scores, float("-inf")), order)
    # Each class's slice of the sorted order: starts where the class changes (UniqueWithCounts has no TFLite builtin).
    sorted_classes = tf.gather(classes, order)
    previous = tf.concat([tf.constant([-2 ** 31], tf.int32), sorted_classes], 0)[:-1]
    starts = tf.cast(tf.reshape(tf.where(tf.not_equal(sorted_classes, previous)), [-1]), tf.int32)
    counts = tf.concat([starts[1:], tf.shape(classes)], 0) - starts

    def one_class(i, keep):
        start, count = starts[i], counts[i]
        indices, _, valid = tf.raw_ops.NonMaxSuppressionV5(
            boxes=sorted_boxes[start:start + count], scores=sorted_scores[start:start + count],
            max_output_size=count, iou_threshold=iou_threshold, score_threshold=float("-inf"), soft_nms_sigma=0.0,
            pad_to_max_output_size=True)  # TFLite pads anyway: the count is `valid`, never the shape
        chosen = tf.gather(order, indices[:valid] + start)
        return i + 1, tf.tensor_scatter_nd_update(keep, chosen[:, None], tf.ones_like(chosen, tf.bool))

    _, keep = tf.while_loop(lambda i, _: i < tf.size(counts), one_class,
                            (tf.constant(0), ~has_area & (scores > float("-inf"))))
    kept = tf.cast(tf.reshape(tf.where(keep), [-1]), tf.int32)
    return tf.gather(kept, tf.argsort(tf.gather(scores, kept), direction="DESCENDING", stable=True))


def _candidates(boxes, scores, score_threshold):
    """The rows (boxes) and classes that some score above score_threshold: NMS only ever sees those, and the kernels
    scan every class x row (SSD300: 8732 x 90 scores, 171 rows and 6 classes pass its threshold).

    Args: boxes [B, N, 4] or [B, N, C, 4]; scores [B, N, C].
    Returns: (boxes [B, K, 4] or [B, K, C', 4], scores [B, K, C'], classes [C'] int32: the original class of each
        column, ascending). K = min(N, max(1, the most passing rows of an image)): an image's passing rows come first
        in ascending order (top_k keeps equal keys in index order), then rows that pass no class; C' >= 1. Each
        class's NMS sees the same boxes in the same order as before: same results.
    Only the TF path uses it: on the builtins path a class count known only when run lost Mask R-CNN's int8 TFLite
    detections (tests/test_mask_rcnn_export.py), and the compacted rows put shape arithmetic into a batch_size=1
    export (tests/test_export_tflite.py), so TFLite's NMS sees all rows and classes.
    """
    row_passes = tf.reduce_max(scores, axis=-1) > score_threshold  # [B, N]
    most = tf.reduce_max(tf.reduce_sum(tf.cast(row_passes, tf.int32), axis=1))
    k = tf.minimum(tf.maximum(most, 1), tf.shape(scores)[1])
    _, rows = tf.math.top_k(tf.cast(row_passes, tf.float32), k=k)  # [B, K]
    scores = tf.gather(scores, rows, batch_dims=1)
    boxes = tf.gather(boxes, rows, batch_dims=1)
    classes = tf.cast(tf.reshape(tf.where(tf.reduce_any(scores > score_threshold, axis=[0, 1])), [-1]), tf.int32)
    classes = tf.concat([classes, tf.zeros([1 - tf.minimum(tf.size(classes), 1)], tf.int32)], 0)  # >= 1 column
    scores = tf.gather(scores, classes, axis=2)
    if boxes.shape.rank == 4:
        boxes = tf.gather(boxes, classes, axis=2)
    return boxes, scores, classes


def _combined_nms_tf(boxes, scores, max_detections, max_per_class, iou_threshold, score_threshold):
    if boxes.shape.rank == 3:
        boxes = boxes[:, :, None, :]
    nmsed_boxes, nmsed_scores, nmsed_classes, valid = tf.image.combined_non_max_suppression(
        boxes, scores, max_output_size_per_class=max_per_class, max_total_size=max_detections,
        iou_threshold=iou_threshold, score_threshold=score_threshold, pad_per_class=False, clip_boxes=False)
    return nmsed_boxes, nmsed_scores, tf.cast(nmsed_classes, tf.int32), valid


def _merge_zero_area(scores, has_area, indices, valid, score_threshold):
    """`_nms_padded`'s zero-area rule for B images x C classes at once: the zero-area boxes scoring above the
    threshold (kept outside the kernel) merged by score into each (image, class) NMS output, kept boxes first on
    equal scores. Skipped (a cond) when there are none.

    scores: [B, N, C]; has_area: [B, N] or [B, N, C]; indices: [B * C, P] int32 NMS output (padded), valid: [B * C]
    -> (indices [B * C, P], count [B * C]).
    """
    size = indices.shape[-1]
    if has_area.shape.rank == 2:  # boxes shared by the classes: any zero-area box whose best score passes
        needed = tf.reduce_any(~has_area & (tf.reduce_max(scores, axis=2) > score_threshold))
        has_area = tf.expand_dims(has_area, 2)  # not [:, :, None]: see _combined_nms_builtins
    else:
        needed = tf.reduce_any(~has_area & (scores > score_threshold))

    def merge():  # the [B * C, N] layout only here (transposes of all scores are slow in LiteRT)
        zero_area = ~has_area & (scores > score_threshold)  # [B, N, C]
        num_boxes = tf.shape(scores)[1]
        lowest = float("-inf")
        rows = tf.reshape(tf.transpose(scores, [0, 2, 1]), [-1, num_boxes])
        extra = tf.reshape(tf.transpose(zero_area, [0, 2, 1]), [-1, num_boxes])
        kept = tf.where(tf.range(size)[None, :] < valid[:, None], tf.gather(rows, indices, batch_dims=1), lowest)
        k = min(size, scores.shape[1]) if scores.shape[1] is not None else tf.minimum(size, num_boxes)
        extra_scores, extra_indices = tf.math.top_k(tf.where(extra, rows, lowest), k=k)
        _, order = tf.math.top_k(tf.concat([kept, extra_scores], 1), k=size)  # stable: kept boxes first on ties
        count = tf.minimum(valid + tf.reduce_sum(tf.cast(extra, valid.dtype), axis=1), size)
        return tf.gather(tf.concat([indices, extra_indices], 1), order, batch_dims=1), count

    return tf.cond(needed, merge, lambda: (indices, valid))


def _pair_nms(boxes, scores, has_area, run_order, num_runs, max_per_class, iou_threshold, score_threshold):
    """NMS V5 of the first num_runs (image, class) pairs of run_order, in one loop, and the zero-area merge (on the
    rows it is given: a TFLite IF copies what it reads, so the compacted rows, not all, when compacted).

    boxes [B, N, 4] or [B, N, C, 4], scores [B, N, C], has_area [B, N] or [B, N, C]; run_order [B * C] pair
    indices (image * C + class) -> (indices [B * C, P] int32 into N, valid [B * C]); pairs not run: valid 0.
    """
    num_classes = scores.shape[-1]
    shared = boxes.shape.rank == 3
    pairs = tf.size(run_order)

    def one_class(i, pair_indices, pair_valid):
        pair = run_order[i]
        image, column = pair // num_classes, pair % num_classes
        image_boxes = tf.gather(boxes, image)  # [N, 4] or [N, C, 4]
        box_set = image_boxes if shared else tf.gather(image_boxes, column, axis=1)
        area = tf.gather(has_area, image) if shared else tf.gather(tf.gather(has_area, image), column, axis=1)
        pair_scores = tf.where(area, tf.gather(tf.gather(scores, image), column, axis=1), float("-inf"))  # [N]
        indices, _, valid = tf.raw_ops.NonMaxSuppressionV5(
            boxes=box_set, scores=pair_scores, max_output_size=max_per_class, iou_threshold=iou_threshold,
            score_threshold=score_threshold, soft_nms_sigma=0.0, pad_to_max_output_size=True)
        slot = tf.reshape(pair, [1, 1])
        return (i + 1, tf.tensor_scatter_nd_update(pair_indices, slot, tf.reshape(indices, [1, max_per_class])),
                tf.tensor_scatter_nd_update(pair_valid, slot, tf.reshape(valid, [1])))

    _, pair_indices, pair_valid = tf.while_loop(
        lambda i, *_: i < num_runs, one_class,
        (tf.constant(0), tf.zeros(tf.stack([pairs, max_per_class]), tf.int32), tf.zeros(tf.reshape(pairs, [1]),
                                                                                         tf.int32)))
    return _merge_zero_area(scores, has_area, pair_indices, pair_valid, score_threshold)


def _combined_nms_builtins(boxes, scores, max_detections, max_per_class, iou_threshold, score_threshold):
    """One NMS V5 per (image, class) that has a score above the threshold, in a single loop, then the top
    max_detections of all classes by score.

    Only the kernel runs in the loop: the zero-area rule of `_nms_padded` is applied to all (image, class) pairs at
    once, before the loop (mask) and after it (merge). A TFLite WHILE body runs op by op in the interpreter for
    every pair, so the per-pair masking, concat and top-k over all N boxes cost more than the kernel itself
    (benchmarks/profile_stages.py --tflite: SSD300's 90 classes). Outside the loop the [B, N, C] scores are read in
    place: without the [B, C, N] transposes and the area-masked copy of SSD300's 8732 x 90 scores its captured NMS
    call went from 12.2 to 3.0 ms in LiteRT.
    """
    batch = tf.shape(scores)[0]
    num_classes = scores.shape[-1]
    shared = boxes.shape.rank == 3
    # [B, N] or [B, N, C]. unstack / expand_dims, not boxes[..., k] / x[:, :, None]: with more than one dynamic
    # dimension such slices stay StridedSlices with ellipsis / new-axis masks, which have no TFLite builtin.
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    has_area = (y2 > y1) & (x2 > x1)
    # Only the pairs with a score above the threshold run the kernel (SSD300: 6 of 90 classes; its 90 loop steps
    # took 17.5 ms in LiteRT). The loop walks a static-length list with those pairs first and stops after them:
    # every shape stays as it was (a batch_size=1 export keeps no shape arithmetic), only the trip count depends on
    # the scores. A skipped pair has no score above the threshold, so the kernel would return valid 0 for it too (a
    # pair whose passing boxes all lack area runs and gets valid 0 from the kernel).
    pairs = batch * num_classes
    runs = tf.reshape(tf.reduce_max(scores, axis=1) > score_threshold, [-1])  # [B * C], image-major
    _, run_order = tf.math.top_k(tf.cast(runs, tf.float32), k=pairs)  # stable: the running pairs, ascending
    loop = functools.partial(_pair_nms, run_order=run_order, num_runs=tf.reduce_sum(tf.cast(runs, tf.int32)),
                             max_per_class=max_per_class, iou_threshold=iou_threshold,
                             score_threshold=score_threshold)
    # A TFLite WHILE copies every tensor it reads once per iteration, here all [B, N, C] scores (SSD300: 3 MB, most
    # of the loop's time). When every image has at most COMPACT_ROWS rows (boxes) with a passing score, the loop
    # gets those rows only: a fixed number (top_k of the pass flags: passing rows first, ascending, so each NMS sees
    # the same candidates in the same order), mapped back after. Otherwise (a cond) the loop gets every row.
    num_boxes = scores.shape[1]
    if num_boxes is None or num_boxes <= 2 * COMPACT_ROWS:
        pair_indices, pair_valid = loop(boxes, scores, has_area)
    else:
        row_passes = tf.reduce_max(scores, axis=2) > score_threshold  # [B, N]

        def compact():
            _, rows = tf.math.top_k(tf.cast(row_passes, tf.float32), k=COMPACT_ROWS)  # [B, R]
            indices, valid = loop(*(tf.gather(x, rows, batch_dims=1) for x in (boxes, scores, has_area)))
            pair_rows = tf.gather(rows, tf.range(pairs) // num_classes)  # [B * C, R]
            return tf.gather(pair_rows, indices, batch_dims=1), valid

        fits = tf.reduce_all(tf.reduce_sum(tf.cast(row_passes, tf.int32), axis=1) <= COMPACT_ROWS)
        pair_indices, pair_valid = tf.cond(fits, compact, lambda: loop(boxes, scores, has_area))
    pair_indices = tf.reshape(pair_indices, [batch, num_classes, max_per_class])
    slot_valid = tf.range(max_per_class)[None, None, :] < tf.reshape(pair_valid, [batch, num_classes, 1])
    # Each slot's score read from [B, N * C] at box * C + class (a gather from the transposed scores copied them).
    flat_slots = pair_indices * num_classes + tf.range(num_classes)[None, :, None]
    slot_scores = tf.gather(tf.reshape(scores, [batch, -1]), tf.reshape(flat_slots, [batch, -1]), batch_dims=1)
    candidates = num_classes * max_per_class
    flat_scores = tf.where(tf.reshape(slot_valid, [batch, candidates]), slot_scores, float("-inf"))
    flat_indices = tf.reshape(pair_indices, [batch, candidates])
    if candidates < max_detections:  # top_k needs k <= candidates
        flat_scores = tf.pad(flat_scores, [[0, 0], [0, max_detections - candidates]], constant_values=float("-inf"))
        flat_indices = tf.pad(flat_indices, [[0, 0], [0, max_detections - candidates]])
    # top_k is stable: equal scores keep the lower class, then the lower rank within the class.
    top_scores, top_slots = tf.math.top_k(flat_scores, k=max_detections)
    count = tf.minimum(tf.reduce_sum(tf.cast(slot_valid, tf.int32), axis=[1, 2]), max_detections)
    keep = tf.range(max_detections)[None, :] < count[:, None]
    box_index = tf.gather(flat_indices, top_slots, batch_dims=1)
    classes = tf.minimum(top_slots // max_per_class, num_classes - 1)  # padding slots point past the classes
    if shared:
        out_boxes = tf.gather(boxes, box_index, batch_dims=1)
    else:
        out_boxes = tf.gather_nd(boxes, tf.stack([box_index, classes], axis=-1), batch_dims=1)
    out_boxes = tf.where(keep[..., None], out_boxes, 0.0)
    out_scores = tf.where(keep, top_scores, 0.0)
    out_classes = tf.where(keep, classes, 0)
    return out_boxes, out_scores, out_classes, count


def combined_nms(boxes, scores, max_detections, iou_threshold=0.5, score_threshold=0.05,
                 max_detections_per_class=None):
    """Per-class NMS for a batch, padded to a fixed number of detections (the kdet detection dict).

    Same semantics as `tf.image.combined_non_max_suppression(pad_per_class=False, clip_boxes=False)`: for each
    image and class, NMS over boxes with score > score_threshold keeps at most max_detections_per_class; the
    best max_detections of all classes are returned by descending score. With `builtins_only()` active this
    runs NMS V5 per (image, class) in one loop (CombinedNonMaxSuppression is not a TFLite builtin); the two
    paths agree except possibly in the order of equal scores of different classes, which the builtins path
    breaks by ascending class.

    Args:
        boxes: [B, N, 4] yxyx shared by all classes, or [B, N, C, 4] one box per class.
        scores: [B, N, C] per-class scores (probabilities, background column removed).
        max_detections: K, rows in the output.
        iou_threshold: suppress IoU > iou_threshold within a class.
        score_threshold: keep scores strictly greater than this.
        max_detections_per_class: cap per image and class; defaults to max_detections.
    Returns:
        {"boxes": [B, K, 4], "scores": [B, K], "classes": [B, K] int32, "num_detections": [B] int32};
        rows at and after num_detections are 0.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    if boxes.shape.rank not in (3, 4):
        raise ValueError(f"boxes must be [B, N, 4] or [B, N, C, 4], got shape {boxes.shape}")
    if scores.shape.rank != 3 or scores.shape[-1] is None:
        raise ValueError(f"scores must be [B, N, C] with a static C, got shape {scores.shape}")
    max_detections = int(max_detections)
    max_per_class = max_detections if max_detections_per_class is None else int(max_detections_per_class)
    if builtins_only_enabled():
        out_boxes, out_scores, out_classes, count = _combined_nms_builtins(
            boxes, scores, max_detections, max_per_class, float(iou_threshold), float(score_threshold))
    else:
        boxes, scores, columns = _candidates(boxes, scores, float(score_threshold))
        out_boxes, out_scores, out_classes, count = _combined_nms_tf(
            boxes, scores, max_detections, max_per_class, float(iou_threshold), float(score_threshold))
        out_classes = tf.gather(columns, out_classes)
    keep = tf.range(max_detections)[None, :] < count[:, None]
    return {
        "boxes": tf.where(keep[..., None], out_boxes, 0.0),
        "scores": tf.where(keep, out_scores, 0.0),
        "classes": tf.where(keep, out_classes, 0),
        "num_detections": count,
    }
