"""RetinaNet accuracy on BCCD under a fixed CPU budget: COCO AP and VOC mAP@0.5 on the test split for RetinaNet
ResNet-18-FPN and ResNet-50-FPN trained from scratch, and the paper's ablation (Table 1): the same R18 model with
sigmoid cross-entropy instead of focal loss, under the same budget. One JSON line per figure.

    python benchmarks/bench_retinanet_accuracy.py                         # 600 CPU-seconds per model
    python benchmarks/bench_retinanet_accuracy.py --cpu-seconds 300 --variants r18 r18_ce
    python benchmarks/bench_retinanet_accuracy.py --variants r18 r18_ce --seed 1     # another seed, same budget

The budget is process CPU time (`budget.py`): 600 CPU-s is 5 minutes of both cores. Training stops at the first batch
after the budget (or at the config's epochs). Run from the repository root (the configs' data paths are relative to it).
"""
import argparse
import json
import time

import keras
import tensorflow as tf

from budget import CPUBudget, cpu_seconds
from kdet.training import callbacks as training
from kdet.api import build_model, load_split
from kdet.config import load_config
from kdet.data.pipeline import make_tf_dataset
from kdet.eval.detection import evaluate_model

VARIANTS = {
    "r18": ("configs/retinanet_r18_fpn_bccd.yaml", []),
    "r18_ce": ("configs/retinanet_r18_fpn_bccd.yaml", ["model.args.classification_loss=cross_entropy"]),
    "r50": ("configs/retinanet_r50_fpn_bccd.yaml", []),
}


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": round(float(value), 4), "unit": unit, **extra}), flush=True)


def train_budgeted(config, budget_seconds, element_map=None):
    """Fit the config's model on its train split until the CPU budget is spent.

    element_map: an optional function applied to each padded batch before target encoding (e.g. SSDAugment).
    Returns (model, {"steps", "epochs", "cpu_seconds", "wall_seconds", "final_loss"}).
    """
    keras.utils.set_random_seed(config.train.seed)
    model = build_model(config)
    model.compile(optimizer=training.make_optimizer(config.train))
    dataset = load_split(config, "train")
    batches = make_tf_dataset(dataset, tuple(config.model.image_size), config.train.batch_size, training=True,
                              augment=config.data.augment, resize=config.data.resize, seed=config.train.seed)
    if element_map is not None:
        batches = batches.map(element_map, num_parallel_calls=tf.data.AUTOTUNE)
    data = batches.map(lambda b: (b["images"], model.encode_targets(b)), num_parallel_calls=tf.data.AUTOTUNE)
    budget = CPUBudget(budget_seconds)
    wall = time.perf_counter()
    history = model.fit(data, epochs=config.train.epochs, verbose=2, callbacks=[budget])
    stats = {"steps": int(model.optimizer.iterations.numpy()), "epochs": len(history.history["loss"]),
             "cpu_seconds": round(cpu_seconds() - budget.start), "wall_seconds": round(time.perf_counter() - wall),
             "final_loss": round(history.history["loss"][-1], 4)}
    return model, stats


def evaluate_test(name, model, config, stats, budget_seconds):
    test = load_split(config, "test")
    results = evaluate_model(model, test, "both", resize=config.data.resize, progress=False)
    extra = dict(stats, budget_cpu_seconds=budget_seconds, image_size=list(config.model.image_size),
                 test_images=len(test))
    emit(f"{name}_bccd_test_AP", results["AP"], "COCO AP@[.5:.95]", **extra)
    emit(f"{name}_bccd_test_mAP50", results["mAP50"], "VOC mAP@0.5",
         per_class={k: round(v, 4) for k, v in results["per_class_AP50"].items()}, **extra)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cpu-seconds", type=float, default=600.0, help="training budget per model")
    parser.add_argument("--seed", type=int, help="override train.seed (figures are then suffixed _seed<N>)")
    args = parser.parse_args(argv)
    for variant in args.variants:
        path, overrides = VARIANTS[variant]
        seed = [] if args.seed is None else [f"train.seed={args.seed}"]
        config = load_config(path, overrides + seed)
        model, stats = train_budgeted(config, args.cpu_seconds)
        suffix = "" if args.seed is None else f"_seed{args.seed}"
        evaluate_test(f"retinanet_{variant}{suffix}", model, config, stats, args.cpu_seconds)


if __name__ == "__main__":
    main()
