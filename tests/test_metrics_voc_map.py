import numpy as np
import pytest

from kdet.errors import DataError
from kdet.metrics.voc_map import evaluate_voc, voc_ap


def _devkit_voc_ap(rec, prec, use_07_metric=False):
    """py-faster-rcnn's voc_eval.voc_ap, verbatim apart from names: the reference the devkit port is held to."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def test_voc_ap_hand_curve():
    # Ranked: TP, FP, (ignored), FP, TP with 2 positives.
    recall = np.array([0.5, 0.5, 0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 0.5, 1 / 3, 0.5])
    # Area: recall 0 -> 0.5 at precision 1, 0.5 -> 1 at the envelope 0.5.
    assert voc_ap(recall, precision) == pytest.approx(0.75, abs=1e-12)
    # 11 points: recall >= 0, .1, ..., .5 reach precision 1 (6 points); .6 ... 1 only 0.5 (5 points).
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(8.5 / 11, abs=1e-12)


def test_voc_ap_matches_devkit_on_random_curves():
    rng = np.random.default_rng(1)
    for _ in range(20):
        hits = rng.random(40) < 0.5
        tp = np.cumsum(hits)
        fp = np.cumsum(~hits)
        rec = tp / max(int(hits.sum()) + 3, 1)
        prec = tp / (tp + fp)
        for use_07 in (False, True):
            assert voc_ap(rec, prec, use_07) == pytest.approx(_devkit_voc_ap(rec, prec, use_07), abs=1e-12)
    assert voc_ap([], []) == 0.0


def _hand_case():
    """Class 0: TP, duplicate (FP), hit on a difficult box (ignored), miss (FP), TP. Class 1: perfect.
    Class 2: no ground truth, one stray detection."""
    gts = [
        {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], "labels": [0, 0, 0],
         "difficult": [False, False, True], "image_id": 7},
        {"boxes": [[0, 0, 20, 20]], "labels": [1], "image_id": 8},
    ]
    dets = [
        {"boxes": [[0, 0, 10, 10], [0, 1, 10, 11], [40, 40, 50, 50], [60, 60, 70, 70], [20, 20, 30, 30]],
         "scores": [0.9, 0.8, 0.7, 0.6, 0.5], "classes": [0, 0, 0, 0, 0]},
        {"boxes": [[0, 0, 20, 20], [5, 5, 9, 9]], "scores": [0.9, 0.3], "classes": [1, 2]},
    ]
    return gts, dets


def test_evaluate_voc_hand_case_difficult_and_duplicate():
    gts, dets = _hand_case()
    result = evaluate_voc(gts, dets, num_classes=3, class_names=["a", "b", "c"])
    assert result["per_class"]["a"] == pytest.approx(0.75, abs=1e-12)
    assert result["per_class"]["b"] == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(result["per_class"]["c"])          # no ground truth: undefined
    assert result["mAP"] == pytest.approx((0.75 + 1.0) / 2, abs=1e-12)   # and excluded from the mean
    result07 = evaluate_voc(gts, dets, num_classes=3, use_07_metric=True)
    assert result07["per_class"]["0"] == pytest.approx(8.5 / 11, abs=1e-12)


def test_difficult_box_counted_when_flag_removed():
    gts, dets = _hand_case()
    gts[0]["difficult"] = [False, False, False]
    # Now 3 positives and the ranked list is TP, FP, TP, FP, TP:
    # rec .333 .333 .667 .667 1, prec 1 .5 .667 .5 .6 -> 1/3 * (1 + 2/3 + 0.6)
    result = evaluate_voc(gts, dets, num_classes=3)
    assert result["per_class"]["0"] == pytest.approx((1 + 2 / 3 + 0.6) / 3, abs=1e-12)


def test_iou_threshold_is_strict_and_images_do_not_mix():
    gts = [{"boxes": [[0, 0, 10, 10]], "labels": [0]}, {"boxes": np.zeros((0, 4)), "labels": []}]
    # IoU exactly 0.5 is a miss (devkit: ovmax > ovthresh); a detection in the image without gt is a FP.
    half = [{"boxes": [[0, 0, 10, 5]], "scores": [0.9], "classes": [0]},
            {"boxes": np.zeros((0, 4)), "scores": [], "classes": []}]
    assert evaluate_voc(gts, half, 1)["mAP"] == 0.0
    other_image = [{"boxes": [[0, 0, 10, 10]], "scores": [0.5], "classes": [0]},
                   {"boxes": [[0, 0, 10, 10]], "scores": [0.9], "classes": [0]}]
    # FP (score .9) then TP: recall 1 reached at precision .5.
    assert evaluate_voc(gts, other_image, 1)["mAP"] == pytest.approx(0.5, abs=1e-12)
    assert evaluate_voc(gts, other_image, 1, iou_threshold=0.99)["mAP"] == pytest.approx(0.5, abs=1e-12)


def test_padding_and_bad_input():
    gts = [{"boxes": [[0, 0, 10, 10], [0, 0, 0, 0]], "labels": [0, -1], "image_id": 1}]
    dets = [{"boxes": [[0, 0, 10, 10], [0, 0, 0, 0]], "scores": [0.9, 0.0], "classes": [0, -1], "image_id": 1}]
    assert evaluate_voc(gts, dets, 1)["mAP"] == 1.0
    with pytest.raises(DataError, match=r"detections\[0\]\['classes'\]"):
        evaluate_voc(gts, [{"boxes": [[0, 0, 1, 1]], "scores": [1.0], "classes": [4]}], 1)
    with pytest.raises(DataError, match=r"detections\[0\]\['scores'\]"):
        evaluate_voc(gts, [{"boxes": [[0, 0, 1, 1]], "scores": [1.0, 2.0], "classes": [0]}], 1)
    with pytest.raises(DataError, match="image_id"):
        evaluate_voc(gts, [dict(dets[0], image_id=2)], 1)
    with pytest.raises(DataError, match="ground_truths has 1"):
        evaluate_voc(gts, dets * 2, 1)


def _devkit_voc_eval(recs, detections, classname, ovthresh=0.5, use_07_metric=False):
    """py-faster-rcnn's voc_eval on in-memory records (xyxy boxes), with the devkit's "+1" pixel widths
    removed because kdet boxes are continuous; otherwise line for line."""
    class_recs, npos = {}, 0
    for imagename, objects in recs.items():
        R = [obj for obj in objects if obj["name"] == classname]
        bbox = np.array([x["bbox"] for x in R]).reshape(-1, 4)
        difficult = np.array([x["difficult"] for x in R]).astype(bool)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(R)}
    lines = [d for d in detections if d[1] == classname]
    image_ids = [x[0] for x in lines]
    confidence = np.array([x[2] for x in lines])
    BB = np.array([x[3] for x in lines]).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence)
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin, 0.0)
            ih = np.maximum(iymax - iymin, 0.0)
            inters = iw * ih
            uni = (bb[2] - bb[0]) * (bb[3] - bb[1]) + (BBGT[:, 2] - BBGT[:, 0]) * (BBGT[:, 3] - BBGT[:, 1]) - inters
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return _devkit_voc_ap(rec, prec, use_07_metric)


def test_real_bccd_boxes_match_devkit_voc_eval(shared_data):
    """BCCD test split (dense, overlapping blood cells) with jittered, duplicated and spurious detections and
    some boxes flagged difficult: per-class AP equals the devkit's voc_eval."""
    import xml.etree.ElementTree as ET

    root = shared_data / "bccd" / "BCCD"
    names = ["RBC", "WBC", "Platelets"]
    rng = np.random.default_rng(4)
    recs, devkit_dets, gts, dets = {}, [], [], []
    for image_id, stem in enumerate((root / "ImageSets" / "Main" / "test.txt").read_text().split()):
        objects = []
        for obj in ET.parse(root / "Annotations" / f"{stem}.xml").getroot().iter("object"):
            box = obj.find("bndbox")
            xyxy = [float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
            if xyxy[2] > xyxy[0] and xyxy[3] > xyxy[1]:
                objects.append({"name": obj.find("name").text.strip(), "bbox": xyxy,
                                "difficult": bool(rng.random() < 0.1)})
        recs[stem] = objects
        xyxy = np.array([o["bbox"] for o in objects]).reshape(-1, 4)
        labels = np.array([names.index(o["name"]) for o in objects], int)
        gts.append({"boxes": xyxy[:, [1, 0, 3, 2]], "labels": labels,
                    "difficult": [o["difficult"] for o in objects], "image_id": image_id})
        jittered = xyxy + rng.normal(0, 8, xyxy.shape)
        duplicates = jittered[rng.random(len(xyxy)) < 0.2] + rng.normal(0, 3, (1, 4))
        spurious = np.sort(rng.uniform(0, 480, (3, 4)), axis=0)[:, [0, 2, 1, 3]]
        spurious = np.concatenate([spurious[:, :2], spurious[:, :2] + rng.uniform(10, 80, (3, 2))], 1)
        det_xyxy = np.concatenate([jittered, duplicates, spurious])
        det_labels = np.concatenate([labels, labels[: len(duplicates)], rng.integers(0, 3, 3)])
        det_labels[rng.random(len(det_labels)) < 0.05] = rng.integers(0, 3)   # a few wrong classes
        scores = rng.uniform(0, 1, len(det_xyxy))
        dets.append({"boxes": det_xyxy[:, [1, 0, 3, 2]], "scores": scores, "classes": det_labels})
        devkit_dets += [(stem, names[c], s, b.tolist()) for c, s, b in zip(det_labels, scores, det_xyxy)]
    assert len(gts) == 72
    for use_07 in (False, True):
        result = evaluate_voc(gts, dets, 3, use_07_metric=use_07, class_names=names)
        for name in names:
            expected = _devkit_voc_eval(recs, devkit_dets, name, use_07_metric=use_07)
            assert result["per_class"][name] == pytest.approx(expected, abs=1e-12), (name, use_07)
        assert 0.2 < result["mAP"] < 0.95
