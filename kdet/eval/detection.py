"""Run a model over a dataset and score it: detections back in each image's own pixel frame, then pycocotools
COCO AP and Pascal VOC mAP (`kdet.metrics`). Used by `kdet evaluate` and by the evaluation callback during `fit`."""
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from kdet.data.pipeline import make_tf_dataset
from kdet.errors import DataError
from kdet.metrics.coco_eval import evaluate_coco
from kdet.metrics.voc_map import evaluate_voc


def detect_dataset(model, dataset, batch_size=8, resize="stretch", progress=True, image_size=None):
    """Detections for every record of `dataset`, in record order, boxes mapped back to the original image.

    model: a kdet Detector, or an exported artifact's runner from `kdet.export.load_runner` (uint8 images -> numpy
        detection dict), in which case `image_size` (H, W) says what size it takes.
    Returns a list of dicts {"boxes": [K, 4] yxyx px, "scores": [K], "classes": [K], "image_id": int}, plus
    "masks": [K, h, w] uint8 in the original image's pixels when the model outputs masks (instance segmentation).
    """
    if hasattr(model, "detect"):
        detect = tf.function(model.detect, reduce_retracing=True)
        image_size = model.image_size

        def run(images):
            return {k: v.numpy() for k, v in detect(images).items()}
    else:
        if image_size is None:
            raise ValueError("detect_dataset needs image_size for an exported artifact's runner")

        def run(images):
            return model(np.clip(np.round(images.numpy()), 0, 255).astype(np.uint8))
    ds = make_tf_dataset(dataset, tuple(image_size), batch_size, training=False, resize=resize)
    results = []
    with tqdm(total=len(dataset), desc="evaluate", unit="img", disable=not progress, leave=False) as bar:
        for batch in ds:
            out = run(batch["images"])
            scale = np.tile(batch["scale"].numpy(), [1, 2])
            for i, image_id in enumerate(batch["image_id"].numpy()):
                n = int(out["num_detections"][i])
                result = {"boxes": out["boxes"][i, :n] / scale[i], "scores": out["scores"][i, :n],
                          "classes": out["classes"][i, :n], "image_id": int(image_id)}
                if "masks" in out:
                    result["masks"] = masks_to_original(out["masks"][i, :n], scale[i, :2],
                                                        batch["original_size"].numpy()[i])
                results.append(result)
            bar.update(len(scale))
    return results


def masks_to_original(masks, scale, original_size):
    """Masks [K, H, W] of the network input -> [K, h, w] of the original image (nearest pixel).

    scale (sy, sx): input pixels per original pixel (stretch or letterbox, whose padding lies past the image)."""
    height, width = (int(v) for v in original_size)
    rows = np.minimum(np.floor((np.arange(height) + 0.5) * scale[0]).astype(int), masks.shape[1] - 1)
    cols = np.minimum(np.floor((np.arange(width) + 0.5) * scale[1]).astype(int), masks.shape[2] - 1)
    return masks[:, rows][:, :, cols]


def ground_truths(dataset, with_masks=False):
    """The records as the per-image ground-truth dicts `kdet.metrics` takes (original frame); with_masks adds their
    instance masks (then COCO's object areas are mask areas, as in COCO's own json)."""
    missing = [r.name for r in dataset.records if with_masks and r.masks is None]
    if missing:
        raise DataError(missing[0], "the model predicts masks but this record has no instance masks for mask AP")
    return [{"boxes": r.boxes, "labels": r.labels, "difficult": r.difficult, "image_id": r.image_id,
             "height": r.height, "width": r.width, **({"masks": r.masks} if with_masks else {})}
            for r in dataset.records]


def evaluate_detections(dataset, detections, metric="both"):
    """COCO (AP, AP50, AP75, APs/m/l) and/or VOC (mAP@0.5) figures as a flat dict of floats, plus per-class tables."""
    segm = bool(detections) and all("masks" in d for d in detections)  # an instance-segmentation model
    gts = ground_truths(dataset, with_masks=segm)
    results = {}
    if metric in ("coco", "both"):
        coco = evaluate_coco(gts, detections, dataset.class_names)
        results.update({k: v for k, v in coco.items() if not isinstance(v, dict)})
        results["per_class_AP"] = coco.get("per_class", {})
        if segm:
            masks = evaluate_coco(gts, detections, dataset.class_names, iou_type="segm")
            results.update({f"mask_{k}": v for k, v in masks.items() if not isinstance(v, dict)})
            results["per_class_mask_AP"] = masks.get("per_class", {})
    if metric in ("voc", "both"):
        voc = evaluate_voc(gts, detections, len(dataset.class_names), class_names=dataset.class_names)
        results["mAP50"] = voc["mAP"]
        results["per_class_AP50"] = voc["per_class"]
    return results


def evaluate_model(model, dataset, metric="both", batch_size=8, resize="stretch", progress=True):
    return evaluate_detections(dataset, detect_dataset(model, dataset, batch_size, resize, progress), metric)


def evaluate_artifact(path, dataset, image_size, metric="both", batch_size=8, resize="stretch", progress=True):
    """`evaluate_model` for an exported model (SavedModel dir, .tflite, .onnx, .keras) through
    `kdet.export.load_runner`: e.g. the mAP of an int8 TFLite model against its float twin."""
    from kdet.inference.runners import load_runner
    runner = load_runner(path)
    return evaluate_detections(dataset, detect_dataset(runner, dataset, batch_size, resize, progress, image_size),
                               metric)
