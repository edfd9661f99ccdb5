"""YOLO accuracy on BCCD: VOC mAP@0.5 on the test split for YOLOv1, Fast YOLO, YOLOv2 and tiny-YOLOv2 trained from
scratch on the CPU with a stated budget (the configs' epochs), YOLOv2's mAP against input size (the paper's 288 ... 544
table, same weights), TFLite fp32 vs int8 mAP for the YOLOv2 models, and the k-means priors' mean IoU against
hand-picked priors. One JSON line per figure.

    python benchmarks/bench_yolo_accuracy.py                                   # all four variants
    python benchmarks/bench_yolo_accuracy.py --variants yolov2 --epochs 4      # a shorter budget
    python benchmarks/bench_yolo_accuracy.py --cpu-seconds 600                 # at most 600 CPU-s per variant
    python benchmarks/bench_yolo_accuracy.py --variants yolov2 --reuse         # evaluate the saved weights again

Run from the repository root (the configs' data paths are relative to it). Training is `kdet.train`
(benchmarks/common.py): YOLOv2 variants train multi-scale because the model declares it (`data_needs`), exactly as
`kdet train` does. Runs go to runs/bench/<variant>/ (model.keras), TFLite files to OUT/.
"""
import argparse
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from common import emit, train_run
from kdet.build import load_split
from kdet.config import load_config
from kdet.data.anchors_kmeans import compute_priors
from kdet.data.pipeline import make_tf_dataset
from kdet.eval.detection import evaluate_artifact, evaluate_model
from kdet.export import export_tflite

VARIANTS = {
    "yolov1": "configs/yolov1_bccd.yaml",
    "yolov1_fast": "configs/yolov1_fast_bccd.yaml",
    "yolov2": "configs/yolov2_bccd.yaml",
    "yolov2_tiny": "configs/yolov2_tiny_bccd.yaml",
}
PAPER_EVAL_SIZES = (288, 352, 416, 480, 544)


def at_size(model, size):
    """The same weights in a model built for another (square) input size (fully convolutional models only)."""
    config = dict(model.get_config(), image_size=[size, size])
    clone = type(model).from_config(config)
    clone(tf.zeros([1, size, size, 3]))
    clone.set_weights(model.get_weights())
    return clone


def calibration_images(config, count=32):
    dataset = load_split(config, "train")
    batches = make_tf_dataset(dataset, tuple(config.model.image_size), 8, resize=config.data.resize)
    images = np.concatenate([b["images"].numpy() for b in batches.take((count + 7) // 8)])[:count]
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def run_variant(variant, epochs, out, reuse, cpu_seconds=None, overrides=()):
    overrides = list(overrides) + ([f"train.epochs={epochs}"] if epochs else [])
    saved = Path("runs/bench") / variant / "model.keras"
    if reuse and saved.is_file():
        config = load_config(VARIANTS[variant], overrides)
        model = keras.saving.load_model(saved)
        budget = {"budget": "reused weights"}
    else:
        model, config, stats = train_run(VARIANTS[variant], overrides, variant, cpu_seconds)
        limit = "" if cpu_seconds is None else f" or {cpu_seconds:.0f} CPU-s"
        budget = {"budget": f"{config.train.epochs} epochs{limit}: {stats['steps']} steps of "
                            f"{config.train.batch_size} images, {stats['wall_seconds'] / 60:.1f} min wall on 2 "
                            "shared CPU cores"}
        emit(f"{variant}_bccd_train_minutes", stats["wall_seconds"] / 60, "min", **stats)
    test = load_split(config, "test")
    size = config.model.image_size[0]
    results = evaluate_model(model, test, "both", resize=config.data.resize, progress=False)
    emit(f"{variant}_bccd_test_mAP50", results["mAP50"], "VOC mAP@0.5", image_size=size,
         per_class={k: round(v, 4) for k, v in results["per_class_AP50"].items()}, **budget)
    emit(f"{variant}_bccd_test_AP", results["AP"], "COCO AP@[.5:.95]", image_size=size, **budget)
    if variant == "yolov2":
        for eval_size in PAPER_EVAL_SIZES:
            value = evaluate_model(at_size(model, eval_size), test, "voc", resize=config.data.resize,
                                   progress=False)["mAP50"]
            emit(f"{variant}_bccd_test_mAP50_at_{eval_size}", value, "VOC mAP@0.5", image_size=eval_size, **budget)
    if variant.startswith("yolov2"):
        calibration = calibration_images(config)
        fp32 = export_tflite(model, out / f"{variant}.tflite")
        int8 = export_tflite(model, out / f"{variant}_int8.tflite", quantize="int8",
                             representative_images=calibration)
        maps = {name: evaluate_artifact(path, test, config.model.image_size, "voc", resize=config.data.resize,
                                        progress=False)["mAP50"]
                for name, path in (("fp32", fp32), ("int8", int8))}
        for name, value in maps.items():
            emit(f"{variant}_bccd_test_mAP50_tflite_{name}", value, "VOC mAP@0.5", image_size=size, **budget)
        emit(f"{variant}_bccd_int8_minus_fp32_mAP50", 100 * (maps["int8"] - maps["fp32"]), "points",
             calibration_images=len(calibration))


def run_priors():
    config = load_config(VARIANTS["yolov2"])
    result = compute_priors(load_split(config, "train"), 5, tuple(config.model.image_size))
    emit("bccd_kmeans5_priors_mean_iou", result["mean_iou"], "IoU", boxes=result["num_boxes"],
         priors_cells=result["priors_cells"])
    for name, value in result["hand_picked"].items():
        emit(f"bccd_hand_picked_{name}_mean_iou", value, "IoU")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, help="override every config's train.epochs")
    parser.add_argument("--cpu-seconds", type=float, help="also stop training after this much process CPU time")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override for every variant, e.g. --set model.args.dropout=0.0")
    parser.add_argument("--out", default="runs/bench_yolo")
    parser.add_argument("--reuse", action="store_true", help="evaluate saved weights instead of training")
    parser.add_argument("--skip-priors", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_priors:
        run_priors()
    for variant in args.variants:
        run_variant(variant, args.epochs, out, args.reuse, args.cpu_seconds, args.overrides)


if __name__ == "__main__":
    main()
