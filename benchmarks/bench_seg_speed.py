"""Latency of FCN-8s (VGG-16) and U-Net at 512 x 512 as Keras, SavedModel and TFLite, in one process.

    python benchmarks/bench_seg_speed.py                          # paper-sized models, random init, 3 timed rounds
    python benchmarks/bench_seg_speed.py --models unet --runs 5 --size 256
    python benchmarks/bench_seg_speed.py --models segnet --runs 9 --size 256     # max-unpooling's builtins twins

Models at the papers' widths (random init: latency does not depend on the weights): FCN-8s with VGG-16 and
4096-wide fc6 (7 x 7) / fc7, 21 classes (VOC); U-Net with 64..1024 channels and valid convolutions, 2 classes,
whose 512 x 512 output needs a 700 x 700 mirrored input; SegNet (VGG-16 widths, max-unpooling through the
encoder's argmax, 11 classes as on CamVid). Each model is exported with kdet.export (SavedModel;
TFLite float32, builtins only) and all three runtimes are timed round-robin (benchmarks/speed_common.py) on the same
uint8 image (batch 1, one call of each runtime per round) after one warm-up call each, so machine noise hits them
alike. Prints median (min-max) latency per runtime, the median (min-max) of its per-round ratio to Keras, the load
average, and the largest probability difference to Keras (a parity check).
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kdet.export import export_saved_model, export_tflite, load_runner
from kdet.models.fcn import FCN
from kdet.models.segnet import EncoderDecoder
from kdet.models.unet import UNet
from speed_common import load_average, round_robin

MODELS = {
    "fcn8s": lambda size: FCN(20, (size, size), variant="8s"),
    "unet": lambda size: UNet(1, (size, size), padding="valid"),
    "segnet": lambda size: EncoderDecoder(11, (size, size), unpooling="max"),
}


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": float(f"{float(value):.5g}"), "unit": unit, **extra}), flush=True)


def keras_runner(model):
    height, width = model.image_size
    detect = tf.function(lambda images: model.detect(tf.cast(images, tf.float32)),
                         input_signature=[tf.TensorSpec((None, height, width, 3), tf.uint8)])
    return lambda images: {k: v.numpy() for k, v in detect(tf.constant(images)).items()}


def bench(name, size, runs, workdir):
    keras.utils.set_random_seed(0)
    model = MODELS[name](size)
    model(np.zeros((1, size, size, 3), np.float32))
    start = time.perf_counter()
    saved = export_saved_model(model, workdir / name / "saved_model")
    tflite = export_tflite(model, workdir / name / f"{name}.tflite")
    export_seconds = time.perf_counter() - start
    runners = {"keras": keras_runner(model), "saved_model": load_runner(saved), "tflite": load_runner(tflite)}
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    outputs = {k: run(image) for k, run in runners.items()}  # warm-up (tracing, allocation) and parity
    load = load_average()
    timed = round_robin({k: (lambda run=run: run(image)) for k, run in runners.items()}, rounds=runs, warmup=0,
                        reference="keras")
    results = timed["contenders"]
    extra = {"size": size, "runs": runs, "params": model.count_params(), "load_average_before": load,
             "load_average_after": load_average()}
    for key in runners:
        emit(f"seg_speed/{name}/{key}/median_latency", results[key]["median_ms"], "ms",
             min_ms=results[key]["min_ms"], max_ms=results[key]["max_ms"], **extra)
        if key != "keras":
            ratio = timed["ratios"][key]
            emit(f"seg_speed/{name}/{key}/ratio_to_keras", ratio["median"], "x (median of per-round ratios)",
                 min=ratio["min"], max=ratio["max"])
            error = np.abs(outputs[key]["probabilities"] - outputs["keras"]["probabilities"]).max()
            emit(f"seg_speed/{name}/{key}/max_probability_error", error, "abs")
    emit(f"seg_speed/{name}/export_time", export_seconds, "s")
    emit(f"seg_speed/{name}/tflite_size", Path(tflite).stat().st_size / 2 ** 20, "MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdet-seg-speed-") as workdir:
        for name in args.models:
            bench(name, args.size, args.runs, Path(workdir))


if __name__ == "__main__":
    main()
