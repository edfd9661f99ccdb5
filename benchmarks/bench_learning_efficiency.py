"""Learning efficiency: kdet's Faster R-CNN ResNet-18-FPN against torchvision's, both from scratch, same recipe, same
number of steps, several seeds, one evaluator (issue 18 item 6).

    python3 benchmarks/bench_learning_efficiency.py [--seeds 0 1 2] [--steps 160] [--sides kdet torchvision]
        [--set model.args.X=Y ...] [--tag NAME] [--out benchmarks/results/learning_efficiency.json]

Each run is its own process, one after the other: kdet's through the one training recipe
(benchmarks/common.train_run with `train.epochs=1, train.steps_per_epoch=<steps>`, no time budget) and
benchmarks/common.evaluate_run; torchvision's in the scratch venv (benchmarks/learneff_torchvision.py) on the same
config, the same kdet pipeline batches and kdet's evaluator. The shared recipe (RECIPE below, on top of
configs/faster_rcnn_r18_fpn_bccd.yaml): full-width ResNet-18 (torchvision's widths), FPN 64, 192x256 (BCCD's
480x640 / 2.5: RBCs ~35 px, platelets ~13 px, hence anchors 12-192), batch 2, SGD lr 0.01 momentum 0.9, weight
decay 1e-4, no warm-up, flip only, no validation pass. The size and the step count are what a 2-core machine shared
with other jobs allows for 6+ runs in an hour. `--set` overrides reach both sides (controlled changes go through
model.args; torchvision-only: `--tv-norm frozen`). Prints one JSON line per run and a summary per side (mean, sample
standard deviation, min-max of COCO AP and VOC mAP@0.5), and writes them all to --out (appending under --tag).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/faster_rcnn_r18_fpn_bccd.yaml"
TORCH_PYTHON = "/work/torchvenv/bin/python"
RECIPE = ["model.args.base_width=64", "train.batch_size=2", "train.optimizer=sgd", "train.learning_rate=0.01",
          "train.weight_decay=0.0001", "data.augment.flip=true", "data.augment.scale_jitter=[1.0, 1.0]",
          "data.augment.color_jitter=0.0", "train.log_images=0", "train.epochs=1", 'data.val_split=""',
          "model.image_size=[192, 256]", "model.args.anchor_sizes=[[12], [24], [48], [96], [192]]"]


def kdet_run(seed, steps, overrides):
    """One kdet run in this process: train through the recipe, evaluate on the test split -> result dict."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import evaluate_run, train_run
    model, config, stats = train_run(CONFIG, overrides + [f"train.seed={seed}", f"train.steps_per_epoch={steps}"],
                                     f"learneff_kdet_s{seed}", out_root="runs/bench")
    results = evaluate_run(model, config)
    return {"side": "kdet", "seed": seed, "AP": round(results["AP"], 4), "AP50": round(results["AP50"], 4),
            "mAP50": round(results["mAP50"], 4), "steps": stats["steps"], "wall_seconds": stats["wall_seconds"],
            "final_loss": stats["final_loss"], "batch_size": stats["batch_size"], "image_size": stats["image_size"]}


def _sets(overrides):
    return [item for override in overrides for item in ("--set", override)]


def run_side(side, seed, steps, overrides, tv_norm, tv_init):
    """One run in a fresh process (the last JSON line it prints is its result)."""
    if side == "kdet":  # the kdet process puts RECIPE in front itself
        command = [sys.executable, __file__, "--one-kdet-run", str(seed), "--steps", str(steps)] + _sets(overrides)
    else:
        command = [TORCH_PYTHON, str(ROOT / "benchmarks/learneff_torchvision.py"), "--config", CONFIG,
                   "--seed", str(seed), "--steps", str(steps), "--norm", tv_norm, "--init", tv_init] + _sets(RECIPE + overrides)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{") and '"side"' in line]
    if done.returncode or not lines:
        return {"side": side, "seed": seed, "error": (done.stderr or done.stdout)[-2000:]}
    return dict(json.loads(lines[-1]), process_wall_seconds=round(time.perf_counter() - start))


def summary(runs):
    """Per side: mean, sample std and min-max of AP and mAP50 over the seeds that finished."""
    out = {}
    for side in sorted({r["side"] for r in runs}):
        good = [r for r in runs if r["side"] == side and "AP" in r]
        if not good:
            continue
        row = {"seeds": [r["seed"] for r in good], "steps": good[0]["steps"]}
        for key in ("AP", "mAP50"):
            values = np.array([r[key] for r in good])
            row[key] = {"mean": round(float(values.mean()), 4),
                        "std": round(float(values.std(ddof=1)), 4) if len(values) > 1 else None,
                        "min": round(float(values.min()), 4), "max": round(float(values.max()), 4)}
        out[side] = row
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--sides", nargs="+", choices=["kdet", "torchvision"], default=["kdet", "torchvision"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    parser.add_argument("--tv-norm", choices=["batchnorm", "frozen"], default="batchnorm",
                        help="torchvision's trunk norm layer (fasterrcnn_resnet50_fpn without weights: batchnorm)")
    parser.add_argument("--tv-init", choices=["torchvision", "kdet"], default="torchvision",
                        help="torchvision's box head init: its own, or kdet's (a controlled change)")
    parser.add_argument("--tag", default="baseline", help="name of this comparison in the results file")
    parser.add_argument("--out", default="benchmarks/results/learning_efficiency.json")
    parser.add_argument("--one-kdet-run", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    overrides = RECIPE + args.overrides
    if args.one_kdet_run is not None:
        print(json.dumps(kdet_run(args.one_kdet_run, args.steps, overrides)), flush=True)
        return
    runs = []
    for seed in args.seeds:
        for side in args.sides:
            result = dict(run_side(side, seed, args.steps, args.overrides, args.tv_norm, args.tv_init), tag=args.tag)
            print(json.dumps(result), flush=True)
            runs.append(result)
    figures = summary(runs)
    print(json.dumps({"tag": args.tag, "summary": figures}), flush=True)
    path = ROOT / args.out
    stored = json.loads(path.read_text()) if path.exists() else {}
    earlier = [r for r in stored.get(args.tag, {}).get("runs", []) if (r["side"], r["seed"]) not in
               {(r["side"], r["seed"]) for r in runs}]  # a tag run side by side in two processes: both kept
    runs = earlier + runs
    stored[args.tag] = {"recipe": overrides, "tv_norm": args.tv_norm, "tv_init": args.tv_init, "steps": args.steps,
                        "runs": runs, "summary": summary(runs)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=1) + "\n")


if __name__ == "__main__":
    main()
