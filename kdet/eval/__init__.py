"""Evaluate a model on a dataset: detectors with pycocotools COCO AP and VOC mAP (detection.py), semantic
segmenters with mIoU, per-class IoU and pixel accuracy (semantic.py).

    evaluate_model_on(model, dataset, config)    the figures of either kind, by the model's task
"""


def evaluate_model_on(model, dataset, config, metric="both", progress=True):
    """Figures of `model` on a `DetectionDataset`, images resized as the config's pipeline does (data.resize)."""
    if model.task == "semantic":
        from kdet.eval.semantic import evaluate_semantic
        return evaluate_semantic(model, dataset, resize=config.data.resize, progress=progress)
    from kdet.eval.detection import evaluate_model
    return evaluate_model(model, dataset, metric, resize=config.data.resize, progress=progress)
