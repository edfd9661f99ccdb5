"""YOLO speed on the CPU: FPS (batch 1) of the paper-size networks, YOLOv1 / Fast YOLO at 448 and YOLOv2 /
tiny-YOLOv2 at 416 (20 VOC classes), as Keras (`tf.function(model.detect)`), SavedModel and TFLite fp32 / fp16 /
int8 (2 threads, builtins only, decode + NMS inside), and the int8 / fp32 latency ratio. One JSON line per figure.

    python benchmarks/bench_yolo_speed.py [--models yolo_v2 tiny_yolo_v2 yolo_v1 fast_yolo] [--runs 30]

Weights are random (speed does not depend on them; a score threshold of 0.25, Darknet's demo default, keeps NMS to
real-looking detection counts); int8 is calibrated on BCCD images. The formats of one model run round-robin on the
same image, one call each per round, so the ratios stay meaningful on a shared machine; the median is reported.
"""
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kdet.export import export_saved_model, export_tflite, load_runner
from kdet.models import MODELS
from speed_common import round_robin

SIZES = {"yolo_v1": 448, "fast_yolo": 448, "yolo_v2": 416, "tiny_yolo_v2": 416}
BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd" / "BCCD"


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": round(float(value), 3), "unit": unit, **extra}), flush=True)


def bccd_images(size, count):
    """uint8 [count, size, size, 3] BCCD JPEGs stretched to the network size (calibration and timing input)."""
    paths = sorted((BCCD / "JPEGImages").glob("*.jpg"))[:count]
    images = [tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(str(p)), channels=3), [size, size]) for p in paths]
    return np.clip(np.round(np.stack(images)), 0, 255).astype(np.uint8)


def bench_model(name, runs, calibration_count, work):
    size = SIZES[name]
    keras.utils.set_random_seed(0)
    model = MODELS[name](num_classes=20, image_size=(size, size), score_threshold=0.25)
    images = bccd_images(size, calibration_count)
    model(images[:1])
    directory = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    try:
        detect = tf.function(model.detect)
        callables = {"keras": lambda x: {k: v.numpy() for k, v in detect(tf.constant(x)).items()}}
        saved = export_saved_model(model, directory / "saved_model")
        callables["saved_model"] = load_runner(saved)
        sizes_mb = {"saved_model": sum(f.stat().st_size for f in Path(saved).rglob("*") if f.is_file()) / 2 ** 20}
        for quantize in (None, "fp16", "int8"):
            label = f"tflite_{quantize or 'fp32'}"
            start = time.perf_counter()
            path = export_tflite(model, directory / f"{label}.tflite", quantize=quantize, representative_images=images)
            emit(f"{name}_{size}_{label}_convert_seconds", time.perf_counter() - start, "s")
            callables[label] = load_runner(path)
            sizes_mb[label] = Path(path).stat().st_size / 2 ** 20
        results = round_robin({label: (lambda fn=fn: fn(images[:1])) for label, fn in callables.items()},
                              rounds=runs, warmup=3)["contenders"]
        medians = {label: result["median_ms"] for label, result in results.items()}
        for label, median in medians.items():
            emit(f"{name}_{size}_{label}_fps", 1000.0 / median, "fps", median_ms=round(median, 2),
                 size_mb=round(sizes_mb.get(label, 0.0), 1), params_millions=round(model.count_params() / 1e6, 2),
                 batch=1, runs=runs)
        emit(f"{name}_{size}_int8_over_fp32_latency", medians["tflite_int8"] / medians["tflite_fp32"], "ratio")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny_yolo_v2", "yolo_v2", "fast_yolo", "yolo_v1"],
                        choices=list(SIZES))
    parser.add_argument("--runs", type=int, default=30, help="timed rounds (each format once per round)")
    parser.add_argument("--calibration-images", type=int, default=8)
    parser.add_argument("--work-dir", default=None, help="where the temporary artifacts go (default: system tmp)")
    args = parser.parse_args(argv)
    for name in args.models:
        bench_model(name, args.runs, args.calibration_images, args.work_dir)


if __name__ == "__main__":
    main()
