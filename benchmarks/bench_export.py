"""Latency of one model as Keras, SavedModel, TFLite fp32 / fp16 / int8 and ONNX, in one process, on the same images.

    python benchmarks/bench_export.py                       # ClassLocModel (random init), BCCD test images
    python benchmarks/bench_export.py --checkpoint run/model.keras --batch 4 --runs 100

Every artifact is exported from the same model, loaded with `kdet.export.load_runner` (TFLite and ONNX on 2
threads), warmed up, then timed round-robin (one call of each runtime per round) so that machine noise hits all of
them alike. Prints one JSON line per figure: median latency in ms, the ratio to Keras, the file size, and how far
each artifact's detections are from Keras (box error; matched fraction for the quantised ones).
Images: BCCD test JPEGs resized to the model size; int8 calibration: BCCD train JPEGs (real data, never copied).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.testing (the parity report) when run as a script

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from kdet.export import export_model, load_runner  # noqa: E402
from kdet.metrics import round_robin_latency  # noqa: E402
from tests.testing import quantised_report  # noqa: E402

BCCD = REPO.parent / "shared" / "data" / "bccd" / "BCCD"


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": round(float(value), 4), "unit": unit, **extra}), flush=True)


def bccd_images(split, count, size):
    """uint8 [count, H, W, 3]: the first `count` images of a BCCD split, resized (bilinear) to the model size."""
    ids = (BCCD / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:count]
    images = [tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(str(BCCD / "JPEGImages" / f"{i}.jpg"))), size)
              for i in ids]
    return np.clip(np.round(np.stack(images)), 0, 255).astype(np.uint8)


def build_model(args):
    if args.checkpoint:
        import kdet.models  # noqa: F401  (registers the classes)
        return keras.saving.load_model(args.checkpoint)
    from kdet.models.classloc import ClassLocModel
    keras.utils.set_random_seed(0)
    return ClassLocModel(num_classes=3, image_size=(args.size, args.size))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help=".keras model (default: ClassLocModel, random init)")
    parser.add_argument("--size", type=int, default=128, help="image size of the default model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=64, help="train images for int8 calibration")
    args = parser.parse_args()

    model = build_model(args)
    size = tuple(model.image_size)
    images = bccd_images("test", args.batch, size)
    calibration = bccd_images("train", args.calibration, size)
    out = Path(tempfile.mkdtemp(prefix="kdet-bench-"))
    keras_path = out / "model.keras"
    model(images)  # build the weights before saving, or the .keras file holds none
    model.save(keras_path)
    artifacts = {"keras": keras_path}
    start = time.perf_counter()
    paths = export_model(model, out, "m")
    emit("export_seconds_saved_model_tflite_onnx", time.perf_counter() - start, "s")
    artifacts.update(saved_model=paths["saved_model"], tflite_fp32=paths["tflite"], onnx=paths["onnx"])
    for quantize in ("fp16", "int8"):
        start = time.perf_counter()
        artifacts[f"tflite_{quantize}"] = export_model(model, out, "m", formats=("tflite",), quantize=quantize,
                                                       representative_images=calibration)["tflite"]
        emit(f"export_seconds_tflite_{quantize}", time.perf_counter() - start, "s")

    runners = {name: load_runner(path) for name, path in artifacts.items()}
    outputs = {name: runner(images) for name, runner in runners.items()}
    results = round_robin_latency({name: (lambda r=runner: r(images)) for name, runner in runners.items()},
                                  warmup=args.warmup, runs=args.runs)
    keras_ms = results["keras"]["median_ms"]
    common = {"model": type(model).__name__, "image_size": list(size), "batch": args.batch, "runs": args.runs}
    for name, artifact in artifacts.items():
        median = results[name]["median_ms"]
        emit(f"latency_{name}", median, "ms", p90=round(results[name]["p90_ms"], 4), **common)
        emit(f"speedup_vs_keras_{name}", keras_ms / median, "x")
        if name != "keras":
            nbytes = sum(p.stat().st_size for p in Path(artifact).rglob("*") if p.is_file()) \
                if Path(artifact).is_dir() else Path(artifact).stat().st_size
            emit(f"size_{name}", nbytes / 1e6, "MB")
            report = quantised_report(outputs["keras"], outputs[name])
            emit(f"max_box_error_vs_keras_{name}", report["max_box_error"], "px")
            emit(f"matched_fraction_vs_keras_{name}", report["matched_fraction"], "fraction")


if __name__ == "__main__":
    main()
