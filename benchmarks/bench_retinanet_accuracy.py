"""RetinaNet accuracy on BCCD under a fixed CPU budget: COCO AP and VOC mAP@0.5 on the test split for RetinaNet
ResNet-18-FPN and ResNet-50-FPN trained from scratch, and the paper's ablation (Table 1): the same R18 model with
sigmoid cross-entropy instead of focal loss, under the same budget. One JSON line per figure.

    python benchmarks/bench_retinanet_accuracy.py                         # 600 CPU-seconds per model
    python benchmarks/bench_retinanet_accuracy.py --cpu-seconds 300 --variants r18 r18_ce
    python benchmarks/bench_retinanet_accuracy.py --variants r18 r18_ce --seed 1     # another seed, same budget

Training is `kdet.train` (benchmarks/common.py); the budget is process CPU time. Run from the repository root.
"""
import argparse

from common import emit_detection_figures, evaluate_run, train_run

VARIANTS = {
    "r18": ("configs/retinanet_r18_fpn_bccd.yaml", []),
    "r18_ce": ("configs/retinanet_r18_fpn_bccd.yaml", ["model.args.classification_loss=cross_entropy"]),
    "r50": ("configs/retinanet_r50_fpn_bccd.yaml", []),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cpu-seconds", type=float, default=600.0, help="training budget per model")
    parser.add_argument("--seed", type=int, help="override train.seed (figures are then suffixed _seed<N>)")
    args = parser.parse_args(argv)
    for variant in args.variants:
        path, overrides = VARIANTS[variant]
        seed = [] if args.seed is None else [f"train.seed={args.seed}"]
        name = f"retinanet_{variant}{'' if args.seed is None else f'_seed{args.seed}'}"
        model, config, stats = train_run(path, overrides + seed, name, args.cpu_seconds)
        emit_detection_figures(f"{name}_bccd", evaluate_run(model, config), stats,
                               budget_cpu_seconds=args.cpu_seconds)


if __name__ == "__main__":
    main()
