"""Faster R-CNN accuracy under a stated CPU budget: train from scratch (joint training, one `model.fit`) for a budget
of process CPU time (benchmarks/budget.py), then COCO AP (pycocotools) and VOC mAP@0.5, overall and per class, on the test split.

    python benchmarks/bench_faster_rcnn_accuracy.py --config configs/faster_rcnn_r18_fpn_bccd.yaml --cpu-seconds 1200
    python benchmarks/bench_faster_rcnn_accuracy.py --config configs/faster_rcnn_vgg16_shapes.yaml --cpu-seconds 600 \
        --set model.args.representation_size=256

Prints one JSON line per figure ({"name", "value", "unit"}); the weights go to train.output_dir/last.weights.h5.
"""
import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from budget import CPUBudget, cpu_seconds
from kdet.training import callbacks as training
from kdet.api import build_model, load_split
from kdet.config import load_config
from kdet.data.pipeline import make_tf_dataset
from kdet.eval.detection import evaluate_model


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": value, "unit": unit, **extra}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--cpu-seconds", type=float, default=1200.0,
                        help="training budget in process CPU seconds (benchmarks/budget.py)")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    t = config.train
    keras.utils.set_random_seed(t.seed)
    train_data, test_data = load_split(config, "train"), load_split(config, "test")
    model = build_model(config)
    model.compile(optimizer=training.make_optimizer(t))
    size = tuple(config.model.image_size)
    ds = make_tf_dataset(train_data, size, t.batch_size, training=True, augment=config.data.augment,
                         resize=config.data.resize, seed=t.seed)
    ds = ds.map(lambda batch: (batch["images"], model.encode_targets(batch)), num_parallel_calls=tf.data.AUTOTUNE)
    budget = CPUBudget(args.cpu_seconds)
    started = time.perf_counter()
    history = model.fit(ds.repeat(), epochs=t.epochs, steps_per_epoch=t.steps_per_epoch or
                        -(-len(train_data) // t.batch_size), callbacks=[budget], verbose=2).history
    train_seconds = time.perf_counter() - started
    train_cpu_seconds = cpu_seconds() - budget.start
    out = Path(t.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_weights(out / training.CHECKPOINT)

    tag = Path(args.config).stem
    steps = len(budget.step_times) + 1
    emit(f"{tag}/train_time", round(train_seconds, 1), "s", budget_cpu_seconds=args.cpu_seconds,
         cpu_seconds=round(train_cpu_seconds), steps=steps,
         epochs=len(history["loss"]), images=steps * t.batch_size, train_images=len(train_data))
    emit(f"{tag}/train_step_time", round(1000 * float(np.median(budget.step_times)), 1), "ms",
         batch_size=t.batch_size, image_size=list(size))
    emit(f"{tag}/final_loss", round(float(history["loss"][-1]), 4), "loss",
         parts={k: round(float(v[-1]), 4) for k, v in history.items() if k != "loss"})
    results = evaluate_model(model, test_data, "both", resize=config.data.resize, progress=False)
    emit(f"{tag}/test_mAP50_voc", round(float(results["mAP50"]), 4), "mAP", images=len(test_data))
    emit(f"{tag}/test_AP_coco", round(float(results["AP"]), 4), "AP", AP50=round(float(results["AP50"]), 4),
         AP75=round(float(results["AP75"]), 4))
    for name, value in results["per_class_AP50"].items():
        emit(f"{tag}/test_AP50_voc/{name}", round(float(value), 4), "AP")
    for name, value in results["per_class_AP"].items():
        emit(f"{tag}/test_AP_coco/{name}", round(float(value), 4), "AP")


if __name__ == "__main__":
    main()
