"""Faster R-CNN accuracy under a stated CPU budget: train from scratch through kdet's training recipe (any
`train.schedule`: joint, alternating), then COCO AP (pycocotools) and VOC mAP@0.5, overall and per class, on the
test split.

    python benchmarks/bench_faster_rcnn_accuracy.py --config configs/faster_rcnn_r18_fpn_bccd.yaml --cpu-seconds 1200
    python benchmarks/bench_faster_rcnn_accuracy.py --config configs/faster_rcnn_vgg16_shapes.yaml --cpu-seconds 600 \
        --set model.args.representation_size=256

Prints one JSON line per figure ({"name", "value", "unit"}); the run (model.keras, history) goes to
runs/bench/<config name>. Run from the repository root (the configs' data paths are relative to it).
"""
import argparse
from pathlib import Path

from common import emit, emit_detection_figures, evaluate_run, train_run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a Faster R-CNN config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    parser.add_argument("--cpu-seconds", type=float, default=1200.0, help="training budget in process CPU seconds")
    args = parser.parse_args(argv)
    tag = Path(args.config).stem
    model, config, stats = train_run(args.config, args.overrides, tag, args.cpu_seconds)
    emit(f"{tag}/train_time", stats["wall_seconds"], "s", budget_cpu_seconds=args.cpu_seconds, **stats)
    emit_detection_figures(tag, evaluate_run(model, config), stats)


if __name__ == "__main__":
    main()
