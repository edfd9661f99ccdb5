"""The AP change of bfloat16 inference on BCCD: each config's model trained once under a CPU budget, then the SAME
weights evaluated on the test split in float32 and in bfloat16 (the inference copies `kdet evaluate --precision
float32|bfloat16` evaluates: kdet.models.inference_copy, BN folded in both). One JSON line per (model, precision).

    python benchmarks/bench_bf16_accuracy.py                                   # the three BCCD detectors, 300 CPU-s
    python benchmarks/bench_bf16_accuracy.py --configs configs/ssdlite_bccd.yaml --cpu-seconds 600 --out bf16.jsonl
    python benchmarks/bench_bf16_accuracy.py --reuse        # evaluate runs/bench/bf16_<name>/model.keras, no training
    python benchmarks/bench_bf16_accuracy.py --reuse --float32-layers 'regression/output$'   # which stage loses it

--float32-layers: regular expressions matched (re.search) against the layer paths of the bfloat16 copy; the layers
that match compute in float32 (their variables are float32 under mixed_bfloat16 anyway), an extra
"bfloat16+float32_layers" row: to find the stage whose bfloat16 output costs AP.

Each line: {"model", "config", "precision", "AP", "AP50", "AP75", "mAP50", "num_detections" (test split, all
images), "delta_AP" / "delta_AP50" / "delta_mAP50" (bfloat16 minus float32, AP points x100), "wall_seconds" of the
evaluation, plus the training stats}. Training is `kdet.train` (benchmarks/common.py). Run from the repository root.
"""
import argparse
import json
import os
import re
import time

from common import train_run

from kdet.build import load_split, load_trained_model
from kdet.config import load_config
from kdet.eval.detection import detect_dataset, evaluate_detections
from kdet.models.inference_copy import inference_model

CONFIGS = ("configs/retinanet_r18_fpn_bccd.yaml", "configs/ssdlite_bccd.yaml", "configs/faster_rcnn_r18_fpn_bccd.yaml")
OUT_ROOT = "runs/bench"


def run_name(config_path):
    return "bf16_" + os.path.splitext(os.path.basename(config_path))[0]


def bfloat16_with_float32_layers(model, patterns):
    """The bfloat16 inference copy with the layers whose path matches a pattern computing in float32."""
    copy = inference_model(model, precision="bfloat16", fold_bn=True)
    layers = [layer for layer in copy._flatten_layers(include_self=False, recursive=True)
              if any(re.search(p, layer.path or layer.name) for p in patterns)]
    if not layers:
        raise SystemExit(f"--float32-layers {patterns}: no layer path matches")
    for layer in layers:
        layer.dtype_policy = "float32"
    return copy, [layer.path or layer.name for layer in layers]


def evaluate_precision(model, config, dataset, precision, float32_layers=()):
    """Figures of `model`'s inference copy at `precision` on `dataset` (stretch / letterbox as the config says)."""
    matched = None
    if precision == "bfloat16+float32_layers":
        copy, matched = bfloat16_with_float32_layers(model, float32_layers)
    else:
        copy = inference_model(model, precision=precision, fold_bn=True)
    start = time.perf_counter()
    detections = detect_dataset(copy, dataset, resize=config.data.resize, progress=False)
    figures = evaluate_detections(dataset, detections, "both")
    return {"AP": figures["AP"], "AP50": figures["AP50"], "AP75": figures["AP75"], "mAP50": figures["mAP50"],
            "num_detections": int(sum(len(d["scores"]) for d in detections)),
            "eval_wall_seconds": round(time.perf_counter() - start, 1),
            **({"float32_layers": matched} if matched else {})}


def bench_config(config_path, cpu_seconds, reuse, precisions, float32_layers=()):
    name = run_name(config_path)
    checkpoint = os.path.join(OUT_ROOT, name, "model.keras")
    if reuse:
        config = load_config(config_path, [f"train.output_dir={OUT_ROOT}/{name}"])
        model, stats = load_trained_model(config, checkpoint), {"reused": checkpoint}
    else:
        model, config, stats = train_run(config_path, [], name, cpu_seconds, out_root=OUT_ROOT)
        stats["budget_cpu_seconds"] = cpu_seconds
    dataset = load_split(config, "test")
    if float32_layers:
        precisions = list(precisions) + ["bfloat16+float32_layers"]
    rows = {p: evaluate_precision(model, config, dataset, p, float32_layers) for p in precisions}
    lines = []
    for precision, row in rows.items():
        line = {"model": config.model.name, "config": config_path, "precision": precision,
                **{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}}
        if precision != "float32" and "float32" in rows:
            for key in ("AP", "AP50", "mAP50"):
                line[f"delta_{key}"] = round(100 * (row[key] - rows["float32"][key]), 2)
            line["delta_num_detections"] = row["num_detections"] - rows["float32"]["num_detections"]
        line.update({"num_images": len(dataset), **stats})
        lines.append(line)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--cpu-seconds", type=float, default=300.0, help="training budget per model (process CPU)")
    parser.add_argument("--reuse", action="store_true", help=f"evaluate {OUT_ROOT}/bf16_<config>/model.keras")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--float32-layers", nargs="+", default=(), help="regexes of layer paths kept float32")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    for config_path in args.configs:
        for line in bench_config(config_path, args.cpu_seconds, args.reuse, args.precisions,
                                 args.float32_layers):
            text = json.dumps(line)
            print(text, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(text + "\n")


if __name__ == "__main__":
    main()
