"""The config-driven Python API; the CLI is a thin shell over it. Each function takes a config (YAML path, dict or
`Config`) and `overrides` (the CLI's `--set key=value` list).

    model = kdet.build_model("configs/classloc_shapes.yaml")
    kdet.train("configs/classloc_shapes.yaml", overrides=["train.epochs=2"], callbacks=[...])
    kdet.evaluate("configs/classloc_shapes.yaml")            # COCO AP + VOC mAP on the test split
    kdet.predict("configs/classloc_shapes.yaml", ["img.png"], out_dir="out")
    kdet.export("configs/classloc_shapes.yaml", formats=["saved_model", "tflite"])
    kdet.benchmark(["saved_models/m/1", "saved_models/m/m.tflite"])

Without a config, kdet models are plain Keras models: `kdet.models.RetinaNet(...).fit(dataset)`.
"""
from pathlib import Path

import numpy as np

from kdet import build
from kdet.build import load_split, restore  # noqa: F401  (public: the splits and checkpoints of a config)
from kdet.config import load_config
from kdet.data.pipeline import make_tf_dataset
from kdet.errors import KdetError
from kdet.eval import evaluate_model_on


def build_model(config, overrides=()):
    """The Keras model named by `model.name`, built (weights created) at `model.image_size`."""
    return build.build_model(load_config(config, overrides))


def train(config, overrides=(), resume=False, callbacks=(), verbose="auto"):
    """Train with the config's schedule (`model.fit` through kdet.training.recipe), checkpointing every epoch into
    `train.output_dir`; `resume=True` continues from the last checkpoint; `callbacks` are Keras callbacks.

    Returns {"history": [per-epoch logs], "checkpoint", "model_file", "epochs", "model", "report"}.
    """
    from kdet.training.run import train as run_training
    return run_training(load_config(config, overrides), resume=resume, callbacks=callbacks, verbose=verbose)


def evaluate(config, overrides=(), split="test", checkpoint=None, metric="both", progress=True, precision="float32",
             fold_bn=True):
    """Detectors: COCO AP (pycocotools) and VOC mAP@0.5 on a split, boxes in each image's own frame.
    Semantic models: mIoU, per-class IoU and pixel accuracy (255 ignored).
    precision / fold_bn: the inference copy evaluated (kdet.models.inference_copy: "bfloat16" compute, BN folded)."""
    config = load_config(config, overrides)
    model = _inference(build.load_trained_model(config, checkpoint), precision, fold_bn)
    dataset = build.load_split(config, split)
    results = evaluate_model_on(model, dataset, config, metric, progress=progress)
    results["num_images"] = len(dataset)
    results["skipped"] = dataset.report.summary()
    return results


def predict(config=None, images=(), out_dir="predictions", overrides=(), checkpoint=None, score_threshold=0.3,
            tiled=False, save_images=True, save_json=True, save_format="auto", precision="float32", fold_bn=True,
            heatmap=False):
    """Detect objects in images: files, folders, glob patterns, or numpy arrays / tensors ([H, W, 3] or
    [B, H, W, 3]). Writes per image <name>.png or .jpg (boxes, labels, instance masks drawn) and <name>.json into
    `out_dir` (None: write nothing); output names never collide (`kdet.inference.inputs`).

    The model: the config's trained run (its model.keras), or `checkpoint` (a .keras file, e.g. one written by
    `kdet convert torchvision`), which needs no config. Class names come from the model. Returns the per-image
    results (boxes yxyx in the image's own pixels, scores, class ids and names, milliseconds; instance models add
    "masks" as COCO RLE). Semantic models write <name>.png as a colour overlay, <name>_mask.png (class ids) and
    <name>.json (pixels per class); `tiled=True` segments at the image's own resolution by overlap-tile prediction.
    precision / fold_bn: run an inference copy ("bfloat16" compute, BN folded; kdet.models.inference_copy).
    heatmap: also write <name>_heatmap.png, the class-max heatmap over the image (models with heatmaps: CenterNet).
    """
    if config is None:
        if not checkpoint:
            raise KdetError("predict needs a config (--config) or a model file (--checkpoint model.keras)")
        model, resize = build.load_model_file(checkpoint), "stretch"
        class_names = list(model.class_names or [str(i) for i in range(model.num_classes)])
    else:
        config = load_config(config, overrides)
        model, resize = build.load_trained_model(config, checkpoint), config.data.resize
        class_names = build.class_names_of(model, config)
    model = _inference(model, precision, fold_bn)
    if model.task == "semantic":
        if heatmap:
            raise KdetError("--heatmap: segmentation models have no heatmaps")
        from kdet.eval.semantic import predict_files as predict_semantic
        from kdet.inference.inputs import image_paths
        return predict_semantic(model, image_paths(images), out_dir, class_names, tiled=tiled)
    from kdet.inference.predict import predict_images
    return predict_images(model, images, out_dir, class_names, score_threshold, resize=resize,
                          save_images=save_images, save_json=save_json, save_format=save_format, heatmap=heatmap)


def export(config=None, overrides=(), formats=None, quantize=None, checkpoint=None, out_dir=None, name=None,
           precision="float32", fold_bn=True):
    """SavedModel (TF Serving layout), TFLite and/or ONNX of the trained model. Returns {format: path}.

    Without a config, `checkpoint` must be a .keras file (e.g. from `kdet convert torchvision`): every format,
    written to out_dir (default saved_models) under name (default: the file's stem); int8 needs a config (its
    calibration images come from the training data). BatchNorm is folded into the convolutions unless
    fold_bn=False; precision "bfloat16" writes a bfloat16 SavedModel (SavedModel only)."""
    from kdet.export import export_model
    if config is None:
        if not checkpoint:
            raise KdetError("export needs a config (--config) or a model file (--checkpoint model.keras)")
        if quantize == "int8":
            raise KdetError("int8 export calibrates on training images: it needs --config")
        model = build.load_model_file(checkpoint)
        return export_model(model, out_dir or "saved_models", name or Path(checkpoint).stem,
                            formats=formats or ["saved_model", "tflite", "onnx"], quantize=quantize,
                            precision=precision, fold_bn=fold_bn)
    config = load_config(config, overrides)
    model = build.load_trained_model(config, checkpoint)
    formats = formats or config.export.formats
    quantize = quantize if quantize is not None else config.export.quantize
    representative = None
    if quantize == "int8":
        dataset = build.load_split(config, "train")
        batches = make_tf_dataset(dataset, tuple(model.image_size), 8, resize=config.data.resize).take(8)
        representative = np.concatenate([b["images"].numpy() for b in batches])
    return export_model(model, out_dir or config.export.out_dir, name or config.export.name, formats=formats,
                        quantize=quantize, representative_images=representative, precision=precision,
                        fold_bn=fold_bn)


def benchmark(paths, runs=50, warmup=5, batch=1, seed=0, precision="float32", fold_bn=True):
    """Latency of artifacts (.keras, SavedModel, .tflite, .onnx) on the same images, timed in turns in one process.
    Returns one row per artifact: {"name", "format", "median_ms", "p90_ms", "mean_ms", "fps", "batch"}.
    precision / fold_bn apply to .keras files (exported artifacts carry what they were exported with)."""
    from kdet.inference.benchmark import benchmark_artifacts
    return benchmark_artifacts(paths, runs=runs, warmup=warmup, batch=batch, seed=seed, precision=precision,
                               fold_bn=fold_bn)


def _inference(model, precision, fold_bn):
    from kdet.models.inference_copy import inference_model
    return inference_model(model, precision=precision, fold_bn=fold_bn)
