import numpy as np
import pytest

from kdet.errors import ConfigError, DataError
from kdet.metrics.coco_eval import evaluate_coco, yxyx_to_xywh
from kdet.metrics.iou import box_iou

COCO_IOU_THRESHOLDS = 0.5 + 0.05 * np.arange(10)
NAMES = ["cat", "dog"]


def _reference_ap(gt_boxes, det_boxes, det_scores):
    """Independent COCO AP for one image and one class: greedy matching by score at each of the 10 IoU
    thresholds (a match needs IoU >= t), precision envelope, sampled at the 101 recall points."""
    order = np.argsort(-np.asarray(det_scores), kind="stable")
    ious = box_iou(np.asarray(det_boxes)[order], gt_boxes)
    aps = []
    for t in COCO_IOU_THRESHOLDS:
        taken = np.zeros(len(gt_boxes), bool)
        hits = []
        for row in ious:
            free = np.where(~taken & (row >= t), row, -1)
            j = int(np.argmax(free))
            hits.append(free[j] >= 0)
            if hits[-1]:
                taken[j] = True
        tp = np.cumsum(hits)
        recall = tp / len(gt_boxes)
        precision = np.maximum.accumulate((tp / np.arange(1, len(hits) + 1))[::-1])[::-1]
        sampled = [precision[np.searchsorted(recall, r)] if r <= recall[-1] else 0.0
                   for r in np.linspace(0, 1, 101)]
        aps.append(np.mean(sampled))
    return float(np.mean(aps))


def _box_masks(boxes, height, width):
    masks = np.zeros((len(boxes), height, width), np.uint8)
    for m, (y1, x1, y2, x2) in zip(masks, np.asarray(boxes, int)):
        m[y1:y2, x1:x2] = 1
    return masks


def _perfect_set():
    """Three images: small / medium / large objects of both classes, and one image with no objects at all."""
    gts, dets = [], []
    specs = [([[2, 2, 12, 14], [30, 30, 70, 80]], [0, 1]),      # small (120 px), medium (2000 px)
             ([[0, 0, 100, 120], [5, 100, 25, 118]], [1, 0]),    # large, small
             ([], [])]                                            # empty image
    rng = np.random.default_rng(0)
    for image_id, (boxes, labels) in enumerate(specs, start=10):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        masks = _box_masks(boxes, 128, 128)
        # Cut a notch so masks are not plain rectangles: segm IoU must use the mask, not the box.
        masks[:, ::7, ::5] = 0
        gts.append({"boxes": boxes, "labels": labels, "masks": masks, "image_id": image_id,
                    "height": 128, "width": 128})
        dets.append({"boxes": boxes, "scores": rng.uniform(0.5, 1, len(boxes)), "classes": labels,
                     "masks": masks})
    return gts, dets


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_perfect_predictions_give_ap_one(iou_type, capsys):
    gts, dets = _perfect_set()
    result = evaluate_coco(gts, dets, NAMES, iou_type=iou_type)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"):
        assert result[key] == pytest.approx(1.0, abs=1e-9), key
    assert result["per_class"] == pytest.approx({"cat": 1.0, "dog": 1.0}, abs=1e-9)
    assert capsys.readouterr().out == ""       # pycocotools' chatter is silenced


def _shifted_case():
    """Two 10x10 boxes; detection A is shifted 2 px (IoU 8/12 = .667), detection B 1 px (IoU 9/11 = .818)
    and scores lower than A."""
    gt_boxes = np.array([[0, 0, 10, 10], [40, 40, 50, 50]], np.float32)
    det_boxes = np.array([[0, 2, 10, 12], [40, 41, 50, 51]], np.float32)
    scores = np.array([0.9, 0.8])
    return gt_boxes, det_boxes, scores


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_shifted_boxes_match_hand_value(iou_type):
    gt_boxes, det_boxes, scores = _shifted_case()
    np.testing.assert_allclose(np.diag(box_iou(det_boxes, gt_boxes)), [8 / 12, 9 / 11])
    # Thresholds .50-.65 (4): both TP -> AP 1.  .70-.80 (3): A is FP, B TP -> precision .5 up to recall .5,
    # i.e. 51 of the 101 recall points at .5.  .85-.95 (3): nothing matches -> 0.
    hand = (4 * 1.0 + 3 * (51 * 0.5 / 101)) / 10
    assert _reference_ap(gt_boxes, det_boxes, scores) == pytest.approx(hand, abs=1e-12)
    gts = [{"boxes": gt_boxes, "labels": [0, 0], "masks": _box_masks(gt_boxes, 64, 64), "image_id": 1,
            "height": 64, "width": 64}]
    dets = [{"boxes": det_boxes, "scores": scores, "classes": [0, 0], "masks": _box_masks(det_boxes, 64, 64)}]
    result = evaluate_coco(gts, dets, NAMES, iou_type=iou_type)
    assert result["AP"] == pytest.approx(hand, abs=1e-9)
    assert result["AP50"] == pytest.approx(1.0, abs=1e-9)
    assert result["AP75"] == pytest.approx(51 * 0.5 / 101, abs=1e-9)
    assert result["per_class"]["cat"] == pytest.approx(hand, abs=1e-9)
    assert np.isnan(result["per_class"]["dog"])         # no ground truth: undefined, not 0
    assert np.isnan(result["APl"])                       # no large objects: pycocotools' -1 becomes NaN
    # Recall at each threshold: 1, 1, 1, 1, .5, .5, .5, 0, 0, 0.
    assert result["AR100"] == pytest.approx((4 + 1.5) / 10, abs=1e-9)


def test_random_case_matches_reference():
    rng = np.random.default_rng(3)
    yx = rng.uniform(0, 200, (6, 2))
    hw = rng.uniform(20, 60, (6, 2))
    gt_boxes = np.concatenate([yx, yx + hw], 1)
    det_boxes = np.concatenate([gt_boxes + rng.normal(0, 4, (6, 4)), rng.uniform(0, 200, (3, 4)).cumsum(1)])
    scores = rng.uniform(0, 1, len(det_boxes))
    gts = [{"boxes": gt_boxes, "labels": np.zeros(6, int), "image_id": 3, "height": 300, "width": 300}]
    dets = [{"boxes": det_boxes, "scores": scores, "classes": np.zeros(len(det_boxes), int)}]
    result = evaluate_coco(gts, dets, NAMES)
    assert result["AP"] == pytest.approx(_reference_ap(gt_boxes, det_boxes, scores), abs=1e-9)


def test_no_detections_images_without_gt_and_crowd():
    gts, dets = _perfect_set()
    empty = [{"boxes": np.zeros((0, 4)), "scores": [], "classes": [], "masks": np.zeros((0, 128, 128))}
             for _ in dets]
    for iou_type in ("bbox", "segm"):
        result = evaluate_coco(gts, empty, NAMES, iou_type=iou_type)
        assert result["AP"] == 0.0 and result["AR100"] == 0.0

    # A confident detection in the image without objects ranks first as a FP: precision .5 at every recall.
    gt = {"boxes": [[0, 0, 10, 10]], "labels": [0], "image_id": 1}
    good = {"boxes": [[0, 0, 10, 10]], "scores": [0.5], "classes": [0]}
    stray = {"boxes": [[0, 0, 10, 10]], "scores": [0.9], "classes": [0]}
    no_gt = {"boxes": np.zeros((0, 4)), "labels": [], "image_id": 2}
    assert evaluate_coco([gt, no_gt], [good, stray], NAMES)["AP"] == pytest.approx(0.5, abs=1e-9)

    # A detection on a crowd region is neither TP nor FP.
    crowd = {"boxes": [[0, 0, 10, 10], [50, 50, 90, 90]], "labels": [0, 0], "iscrowd": [0, 1], "image_id": 1}
    on_crowd = {"boxes": [[0, 0, 10, 10], [55, 55, 85, 85]], "scores": [0.5, 0.9], "classes": [0, 0]}
    assert evaluate_coco([crowd], [on_crowd], NAMES)["AP"] == pytest.approx(1.0, abs=1e-9)


def test_conversion_and_errors():
    np.testing.assert_allclose(yxyx_to_xywh([[1, 2, 11, 22]]), [[2, 1, 20, 10]])
    gt = [{"boxes": [[0, 0, 10, 10]], "labels": [0], "image_id": 1, "height": 20, "width": 20}]
    det = [{"boxes": [[0, 0, 10, 10]], "scores": [0.5], "classes": [0]}]
    with pytest.raises(ConfigError, match="iou_type"):
        evaluate_coco(gt, det, NAMES, iou_type="keypoints")
    with pytest.raises(DataError, match=r"ground_truths\[0\].*masks"):
        evaluate_coco(gt, det, NAMES, iou_type="segm")
    gt[0]["masks"] = np.ones((1, 20, 20), np.uint8)
    det[0]["masks"] = np.ones((1, 10, 10), np.float32)
    with pytest.raises(DataError, match=r"detections\[0\]\['masks'\].*paste"):
        evaluate_coco(gt, det, NAMES, iou_type="segm")
    with pytest.raises(DataError, match="class id 2"):
        evaluate_coco(gt, [{"boxes": [[0, 0, 1, 1]], "scores": [1.0], "classes": [2]}], NAMES)


def test_real_annotations_match_the_official_json_path(shared_data):
    """labelme_voc3's COCO json: evaluating in memory gives every figure the file-based pycocotools path gives
    (loadRes on json-style results), so box conversion, areas, RLE and category ids are right."""
    import contextlib
    import io

    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(shared_data / "labelme_voc3" / "coco" / "annotations.json"))
    names = [c["name"] for c in coco.loadCats(coco.getCatIds()) if c["id"] > 0]   # id 0 is "_background_"
    rng = np.random.default_rng(5)
    gts, dets, results = [], [], {"bbox": [], "segm": []}
    for image in coco.loadImgs(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        xywh = np.array([a["bbox"] for a in anns], np.float64)
        boxes = np.stack([xywh[:, 1], xywh[:, 0], xywh[:, 1] + xywh[:, 3], xywh[:, 0] + xywh[:, 2]], 1)
        masks = np.stack([coco.annToMask(a) for a in anns])
        labels = np.array([a["category_id"] - 1 for a in anns])
        gts.append({"boxes": boxes, "labels": labels, "masks": masks, "area": [a["area"] for a in anns],
                    "iscrowd": [a["iscrowd"] for a in anns], "image_id": image["id"],
                    "height": image["height"], "width": image["width"]})
        # Jittered copies, one with a wrong class, and shifted masks: a mix of hits and misses at each threshold.
        det_boxes = boxes + rng.normal(0, 6, boxes.shape)
        det_labels = labels.copy()
        det_labels[0] = (det_labels[0] + 3) % len(names)
        det_masks = np.stack([np.roll(m, tuple(rng.integers(-8, 9, 2)), axis=(0, 1)) for m in masks])
        scores = rng.uniform(0.1, 1.0, len(anns))
        dets.append({"boxes": det_boxes, "scores": scores, "classes": det_labels, "masks": det_masks})
        rles = mask_utils.encode(np.asfortranarray(det_masks.transpose(1, 2, 0)))
        for box, label, score, rle in zip(det_boxes, det_labels, scores, rles):
            results["bbox"].append({"image_id": image["id"], "category_id": int(label) + 1, "score": float(score),
                                    "bbox": [box[1], box[0], box[3] - box[1], box[2] - box[0]]})
            results["segm"].append({"image_id": image["id"], "category_id": int(label) + 1, "score": float(score),
                                    "segmentation": rle})
    for iou_type in ("bbox", "segm"):
        with contextlib.redirect_stdout(io.StringIO()):
            official = COCOeval(coco, coco.loadRes(results[iou_type]), iou_type)
            official.evaluate()
            official.accumulate()
            official.summarize()
        ours = evaluate_coco(gts, dets, names, iou_type=iou_type)
        expected = [np.nan if v < 0 else v for v in official.stats]
        got = [ours[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100",
                                 "ARs", "ARm", "ARl")]
        np.testing.assert_allclose(got, expected, atol=1e-12, err_msg=iou_type)
        assert 0.05 < ours["AP"] < 0.95, iou_type          # a case that tells right from wrong
