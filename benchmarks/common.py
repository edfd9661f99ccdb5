"""What the accuracy benchmarks share: one training run through kdet's own recipe under a stated budget, then the
test split's figures, printed as JSON lines. No benchmark has a training loop of its own.

    model, stats = train_run("configs/retinanet_r18_fpn_bccd.yaml", ["model.args.depth=18"], "retinanet_r18",
                             budget_seconds=600)
    figures = evaluate_run(model, config)

The budget is `train.budget_seconds` with `train.budget_clock: cpu` (process CPU time, user + system, counted from
the end of the first step): on the 2 shared cores 600 CPU-s is 5 minutes of both cores whatever else runs. Training
stops at the first batch after the budget, or at the config's epochs if they end first.
"""
import json
import time

import numpy as np

import kdet
from kdet.build import load_split
from kdet.config import load_config
from kdet.eval import evaluate_model_on
from kdet.training.callbacks import cpu_seconds


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": round(float(value), 4), "unit": unit, **extra}), flush=True)


def train_run(config, overrides=(), name="run", budget_seconds=None, out_root="runs/bench"):
    """Train the config's model with `kdet.train` (the recipe `kdet train` uses) into out_root/name.

    Returns (model, config, stats) with stats {"steps", "epochs", "cpu_seconds", "wall_seconds", "step_ms_median",
    "final_loss", "budget_exhausted"}.
    """
    overrides = list(overrides) + [f"train.output_dir={out_root}/{name}"]
    if budget_seconds:
        overrides += [f"train.budget_seconds={budget_seconds}", "train.budget_clock=cpu"]
    config = load_config(config, overrides)
    cpu, wall = cpu_seconds(), time.perf_counter()
    result = kdet.train(config, verbose=2)
    history = result["history"]
    per_step = [row["train_seconds"] / row["steps"] for row in history[1:] if row.get("steps")] or \
        [history[0]["train_seconds"] / max(history[0]["steps"], 1)]
    stats = {"steps": int(result["model"].optimizer.iterations.numpy()), "epochs": result["epochs"],
             "cpu_seconds": round(cpu_seconds() - cpu), "wall_seconds": round(time.perf_counter() - wall),
             "step_ms_median": round(1000 * float(np.median(per_step)), 1),
             "final_loss": round(history[-1]["loss"], 4), "budget_exhausted": result["budget_exhausted"],
             "batch_size": config.train.batch_size, "image_size": list(config.model.image_size)}
    return result["model"], config, stats


def evaluate_run(model, config, split="test", metric="both"):
    """The figures of a trained model on a split (COCO AP + VOC mAP, or mIoU for semantic models)."""
    data = load_split(config, split)
    results = evaluate_model_on(model, data, config, metric, progress=False)
    results["num_images"] = len(data)
    return results


def emit_detection_figures(name, results, stats, **extra):
    """The standard lines: VOC mAP@0.5 with its per-class table, COCO AP / AP50 / AP75."""
    emit(f"{name}_test_mAP50", results["mAP50"], "VOC mAP@0.5", **stats, **extra,
         per_class={k: round(v, 4) for k, v in results["per_class_AP50"].items()})
    if "AP" in results:
        emit(f"{name}_test_AP", results["AP"], "COCO AP@[.5:.95]", AP50=round(results["AP50"], 4),
             AP75=round(results["AP75"], 4), per_class={k: round(v, 4) for k, v in results["per_class_AP"].items()})
