"""Score a semantic segmentation model on a dataset: mIoU, per-class IoU and pixel accuracy in each image's own
frame (ignore 255), and for instance-labelled data the instance AP@0.5 of the prediction's connected components.

    evaluate_semantic(model, dataset)                 -> {"mIoU", "pixel_accuracy", "per_class_iou": {name: iou}}
    instance_metrics(pred_instances, gt_instances)    -> {"AP50", "precision", "recall", "merged", ...}
    connected_components(foreground)                  -> int32 [H, W] component ids
    predict_files(model, paths, out_dir)              -> colour overlays + class-id PNGs (what `kdet predict` writes)

The model runs compiled (`model.predict_on_batch`: predict_step -> call -> decode(outputs, input size)) at its own
size, as it was trained; its probabilities are cut to the image part of the input (letterbox) and resized bilinearly
to the original size before the argmax, so the scores compare with the original masks, not resized ones.
"""
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from kdet.data.label_image import check_segmentation, record_mask
from kdet.data.pipeline import make_tf_dataset
from kdet.jsonio import write_json
from kdet.metrics.miou import SegmentationEvaluator


def predict_semantic(model, dataset, batch_size=4, resize="stretch", progress=False):
    """Yield (record, probabilities float32 [H, W, C]) in each record's original size, in record order."""
    ds = make_tf_dataset(dataset, model.image_size, batch_size, training=False, resize=resize)
    records = iter(dataset.records)
    with tqdm(total=len(dataset), desc="evaluate", unit="img", disable=not progress, leave=False) as bar:
        for batch in ds:
            probabilities = model.predict_on_batch(batch["images"])["probabilities"]
            for i, (scale, size) in enumerate(zip(batch["scale"].numpy(), batch["original_size"].numpy())):
                record = next(records)
                # The image occupies the top-left round(size * scale) of the input (all of it when stretched).
                valid = np.minimum(np.round(size * scale).astype(int), model.image_size)
                crop = probabilities[i, :valid[0], :valid[1]]
                yield record, tf.image.resize(crop, size, method="bilinear").numpy()
            bar.update(len(probabilities))


def evaluate_semantic(model, dataset, batch_size=4, resize="stretch", ignore_index=255, progress=True):
    """mIoU / per-class IoU / pixel accuracy of `model` on `dataset`'s semantic masks (checked first).

    Args:
        model: a semantic kdet model (`task == "semantic"`, predicts num_classes + 1 channels, 0 = background).
        dataset: a DetectionDataset whose records have `segmentation` or `segmentation_path`.
    Returns:
        {"mIoU": float, "pixel_accuracy": float, "per_class_iou": {class name: IoU or NaN}, "num_images": int}
        (classes: "background" then dataset.class_names).
    """
    num_classes = model.num_mask_classes
    check_segmentation(dataset, num_classes, ignore_index)  # every mask's size and ids, before the model runs
    evaluator = SegmentationEvaluator(num_classes, ignore_index)
    count = 0
    for record, probabilities in predict_semantic(model, dataset, batch_size, resize, progress):
        mask = record_mask(record)  # read again here: a whole dataset's masks need not fit in memory
        if mask is None:
            continue
        evaluator.update(probabilities.argmax(-1), mask)
        count += 1
    result = evaluator.result()
    names = ["background"] + list(dataset.class_names)
    names += [str(i) for i in range(len(names), num_classes)]
    return {"mIoU": result["mIoU"], "pixel_accuracy": result["pixel_accuracy"],
            "per_class_iou": dict(zip(names, (float(v) for v in result["per_class_iou"]))), "num_images": count}


def _links(foreground, index, dy, dx):
    """Flat indices (a, b) of foreground pixel pairs (y, x) - (y + dy, x + dx), dy >= 0."""
    height, width = foreground.shape
    rows, rows_next = slice(0, height - dy), slice(dy, height)
    cols, cols_next = (slice(0, width - dx), slice(dx, width)) if dx >= 0 else (slice(-dx, width), slice(0, width + dx))
    both = foreground[rows, cols] & foreground[rows_next, cols_next]
    return index[rows, cols][both], index[rows_next, cols_next][both]


def predict_image(model, image, tiled=False):
    """uint8 [H, W, 3] -> {"masks": int32 [H, W], "probabilities": [H, W, C]} in the image's own size.

    tiled=False resizes the image to the model size and the probabilities back (bilinear); tiled=True runs
    overlap-tile prediction (U-Net) at the native resolution.
    """
    if tiled:
        from kdet.models.segmentation_base import predict_tiled
        return predict_tiled(model, image)
    resized = tf.image.resize(tf.cast(image, tf.float32), model.image_size)[None]
    probabilities = model.predict_on_batch(resized)["probabilities"][0]
    probabilities = tf.image.resize(probabilities, np.shape(image)[:2], method="bilinear").numpy()
    return {"masks": probabilities.argmax(-1).astype(np.int32), "probabilities": probabilities}


def predict_files(model, paths, out_dir, class_names=None, tiled=False, alpha=0.5):
    """Segment image files; for each writes <stem>.png (VOC-palette colour overlay), <stem>_mask.png (palette PNG
    of class ids, readable by kdet.data.images.read_segmentation) and <stem>.json (pixels per class).

    class_names: names of the foreground classes (mask value k = class_names[k - 1]); tiled: see predict_image.
    Returns the list of per-image result dicts.
    """
    from kdet.data.images import encode_png, read_image
    from kdet.inference.visualize import draw_segmentation, save_png
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = ["background"] + list(class_names or [str(i) for i in range(model.num_classes)])
    results = []
    for path in paths:
        image = read_image(path)
        mask = predict_image(model, image, tiled)["masks"]
        stem = Path(path).stem
        save_png(draw_segmentation(image, mask, model.num_mask_classes, alpha=alpha), out / f"{stem}.png")
        (out / f"{stem}_mask.png").write_bytes(encode_png(mask.astype(np.uint8), palette=True))
        counts = np.bincount(mask.ravel(), minlength=model.num_mask_classes)
        result = {"image": str(path), "mask": str(out / f"{stem}_mask.png"),
                  "pixels": {names[c]: int(n) for c, n in enumerate(counts) if n}}
        write_json(result, out / f"{stem}.json")
        results.append(result)
    return results


def connected_components(foreground, connectivity=4):
    """bool [H, W] -> int32 [H, W]: 0 background, 1..K the components (numbered in raster order of first pixel).

    Union-find on the links between neighbouring foreground pixels, vectorised with numpy (no SciPy dependency):
    every root is hooked to the smallest root it is linked to, then pointers are jumped to their roots, until
    every link joins one root.
    """
    foreground = np.asarray(foreground, bool)
    height, width = foreground.shape
    index = np.arange(height * width).reshape(height, width)
    offsets = [(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if connectivity == 8 else [])
    links = [_links(foreground, index, dy, dx) for dy, dx in offsets]
    a = np.concatenate([link[0] for link in links])
    b = np.concatenate([link[1] for link in links])
    parent = np.arange(height * width)  # parent[i] <= i always, so hooking never makes a cycle
    while True:
        root_a, root_b = parent[a], parent[b]
        if np.array_equal(root_a, root_b):
            break
        low = np.minimum(root_a, root_b)
        np.minimum.at(parent, root_a, low)
        np.minimum.at(parent, root_b, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    roots = parent.reshape(height, width)[foreground]
    labels = np.zeros((height, width), np.int32)
    labels[foreground] = np.searchsorted(np.unique(roots), roots) + 1
    return labels


def _iou_matrix(pred, gt):
    """IoU [P, G] between the components of two label images (0 = background)."""
    pred_ids = np.unique(pred[pred > 0])
    gt_ids = np.unique(gt[gt > 0])
    if not len(pred_ids) or not len(gt_ids):
        return np.zeros((len(pred_ids), len(gt_ids))), pred_ids, gt_ids
    both = (pred > 0) & (gt > 0)
    p_index = np.searchsorted(pred_ids, pred[both])
    g_index = np.searchsorted(gt_ids, gt[both])
    intersection = np.zeros((len(pred_ids), len(gt_ids)))
    np.add.at(intersection, (p_index, g_index), 1)
    pred_area = np.array([(pred == i).sum() for i in pred_ids], float)
    gt_area = np.array([(gt == i).sum() for i in gt_ids], float)
    union = pred_area[:, None] + gt_area[None, :] - intersection
    return intersection / union, pred_ids, gt_ids


def instance_metrics(pred_instances, gt_instances, iou_threshold=0.5):
    """Instance scores of a predicted label image against the ground truth label image (0 = background).

    AP50 is the Data Science Bowl 2018 / StarDist "average precision" at IoU 0.5: TP / (TP + FP + FN), where a
    predicted and a true instance match when their IoU exceeds 0.5 (then the match is unique).
    merged: predicted instances that each cover more than half of two or more true instances (touching nuclei
    fused into one blob: the failure U-Net's border weights address).
    Returns {"AP50", "precision", "recall", "tp", "fp", "fn", "merged", "num_pred", "num_gt"}.
    """
    pred_instances = np.asarray(pred_instances)
    gt_instances = np.asarray(gt_instances)
    iou, pred_ids, gt_ids = _iou_matrix(pred_instances, gt_instances)
    tp = int((iou > iou_threshold).any(axis=1).sum()) if iou.size else 0
    fp = len(pred_ids) - tp
    fn = len(gt_ids) - tp
    merged = 0
    if len(pred_ids) and len(gt_ids):
        both = (pred_instances > 0) & (gt_instances > 0)
        covered = np.zeros((len(pred_ids), len(gt_ids)))
        np.add.at(covered, (np.searchsorted(pred_ids, pred_instances[both]),
                            np.searchsorted(gt_ids, gt_instances[both])), 1)
        gt_area = np.array([(gt_instances == i).sum() for i in gt_ids], float)
        halves_covered = ((covered / gt_area[None, :]) > 0.5).sum(axis=1)  # per predicted instance
        merged = int((halves_covered >= 2).sum())
    total = tp + fp + fn
    return {"AP50": tp / total if total else 1.0, "precision": tp / len(pred_ids) if len(pred_ids) else 0.0,
            "recall": tp / len(gt_ids) if len(gt_ids) else 0.0, "tp": tp, "fp": fp, "fn": fn, "merged": merged,
            "num_pred": int(len(pred_ids)), "num_gt": int(len(gt_ids))}
