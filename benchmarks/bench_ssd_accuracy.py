"""SSD300 and SSDLite accuracy on BCCD under a fixed CPU budget: COCO AP and VOC mAP@0.5 on the test split, trained
from scratch with the paper's augmentation (the configs' data.augment.ssd: photometric, expand, min-IoU crop,
flip), and the SSDLite int8 TFLite model's mAP against its float32 TFLite twin. One JSON line per figure.

    python benchmarks/bench_ssd_accuracy.py                        # 600 CPU-seconds per model
    python benchmarks/bench_ssd_accuracy.py --variants ssdlite --cpu-seconds 300
    python benchmarks/bench_ssd_accuracy.py --variants ssd300_half      # VGG at half width, same budget

Training is `kdet.train` (benchmarks/common.py); the budget is process CPU time. Run from the repository root.
"""
import argparse
from pathlib import Path

import numpy as np

from common import emit, emit_detection_figures, evaluate_run, train_run
from kdet.build import load_split
from kdet.data.pipeline import make_tf_dataset
from kdet.eval.detection import evaluate_artifact
from kdet.export import export_tflite

HALF_WIDTH = ["model.args.vgg_widths=[32, 64, 128, 256, 256]", "model.args.fc_width=512",
              "model.args.extra_widths=[[128, 256], [64, 128], [64, 128], [64, 128]]"]
VARIANTS = {"ssd300": ("configs/ssd300_bccd.yaml", []),
            "ssd300_half": ("configs/ssd300_bccd.yaml", HALF_WIDTH),  # about 4x fewer FLOPs: more steps per budget
            "ssdlite": ("configs/ssdlite_bccd.yaml", [])}


def int8_against_fp32(model, config, out, stats):
    """mAP of the int8 TFLite model against its float32 TFLite twin, on the test split."""
    test = load_split(config, "test")
    calibration = make_tf_dataset(load_split(config, "train"), tuple(config.model.image_size), 32)
    images = np.clip(np.round(next(iter(calibration))["images"].numpy()), 0, 255).astype(np.uint8)
    fp32 = export_tflite(model, out / "ssdlite.tflite")
    int8 = export_tflite(model, out / "ssdlite_int8.tflite", quantize="int8", representative_images=images)
    maps = {name: evaluate_artifact(path, test, config.model.image_size, "voc", resize=config.data.resize,
                                    progress=False)["mAP50"] for name, path in (("fp32", fp32), ("int8", int8))}
    for name, value in maps.items():
        emit(f"ssdlite_bccd_test_mAP50_tflite_{name}", value, "VOC mAP@0.5", **stats)
    emit("ssdlite_bccd_int8_minus_fp32_mAP50", 100 * (maps["int8"] - maps["fp32"]), "points",
         calibration_images=len(images))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["ssd300", "ssdlite"], choices=list(VARIANTS))
    parser.add_argument("--cpu-seconds", type=float, default=600.0, help="training budget per model")
    parser.add_argument("--out", default="runs/bench_ssd", help="where the TFLite files go")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        path, overrides = VARIANTS[variant]
        model, config, stats = train_run(path, overrides, variant, args.cpu_seconds)
        emit_detection_figures(f"{variant}_bccd", evaluate_run(model, config), stats,
                               budget_cpu_seconds=args.cpu_seconds)
        if variant == "ssdlite":
            int8_against_fp32(model, config, out, stats)


if __name__ == "__main__":
    main()
