"""SSD latency: kdet's SSD300 (Keras, SavedModel, TFLite) vs torchvision's ssd300_vgg16 (same seeded weights, same
image, same threads, timed round-robin in one process) as per-round ratios, and SSDLite (MobileNetV2, 320 x 320) as
TFLite float32 vs int8 (builtins only, LiteRT interpreter), with the artifacts' sizes. One JSON line per figure.

    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/bench_ssd_speed.py   # with torch: the torchvision ratio
    python benchmarks/bench_ssd_speed.py --skip-torch        # kdet's figures only

int8 calibration uses 32 BCCD training images (real pixels; random-init weights, so only speed and size are
meaningful here; bench_ssd_accuracy.py measures the mAP of a trained int8 model).
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

# OpenMP threads that spin while waiting (torch's default) crawl when the 2 cores are shared with other jobs:
# measured 10 s instead of 1 s for one torchvision RetinaNet call at load 10. Passive waiting, as TF's pool does.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
try:  # torch must be imported before TensorFlow initialises, or importing torchvision later segfaults
    import torch
    import torchvision.models.detection  # noqa: F401
except ImportError:
    torch = None

THREADS = int(os.environ.get("KDET_BENCH_THREADS", "2"))
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_retinanet_speed import emit, round_robin, smooth_image  # noqa: E402
from speed_common import kdet_variants  # noqa: E402
from speed_common import round_robin as round_robin_timer  # noqa: E402

from kdet.convert.torchvision import load_state_dict, seeded_state_dict, torch_shapes  # noqa: E402
from kdet.data.io import load_dataset  # noqa: E402
from kdet.data.pipeline import make_tf_dataset  # noqa: E402
from kdet.export import export_tflite  # noqa: E402
from kdet.models.ssd import SSD, SSDLite  # noqa: E402

WEIGHT_SEED, CLS_WEIGHT_SCALE, BACKGROUND_BIAS = 300, 1.0, 8.5  # as tests/reference/make_ssd_twin_fixtures.py
BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd" / "BCCD"


def seeded_state(shapes):
    state = seeded_state_dict(shapes, WEIGHT_SEED)
    for k in range(6):
        state[f"head.classification_head.module_list.{k}.weight"] *= CLS_WEIGHT_SCALE
        state[f"head.classification_head.module_list.{k}.bias"][::91] = BACKGROUND_BIAS
    return state


def torchvision_ssd(state):
    import torch
    from torchvision.models.detection import ssd300_vgg16
    torch.set_num_threads(THREADS)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)

    def run(images):
        with torch.no_grad():
            return model([torch.from_numpy(images[0].transpose(2, 0, 1).astype(np.float32) / 255.0)])
    return run


def speed_pair(export=True):
    """kdet's SSD300 (`predict_on_batch`, bfloat16, SavedModel and TFLite if export) and torchvision's ssd300_vgg16, same
    seeded weights, for benchmarks/run_all.py: {"input", "contenders", "calls", "notes"}."""
    model = SSD(90)
    state = seeded_state(torch_shapes(model))
    load_state_dict(model, state)
    images = smooth_image(300)
    runners = {"kdet_keras": lambda x: model.predict_on_batch(x), "torchvision": torchvision_ssd(state)}
    calls = {"kdet_keras": "model.predict_on_batch(uint8 [1, 300, 300, 3])",
             "torchvision": "model([image]) under no_grad (its own 300x300 resize of the 300x300 image)"}
    notes = {"kdet_detections": int(model.predict_on_batch(images)["num_detections"][0]),
             "torchvision_detections": len(runners["torchvision"](images)[0]["boxes"])}
    variants, variant_calls = kdet_variants(model, images, notes, export=export)
    contenders = {name: (lambda run=run: run(images)) for name, run in runners.items()}
    return {"input": "300x300", "contenders": {**contenders, **variants}, "calls": {**calls, **variant_calls},
            "notes": notes}


def ssd300_vs_torchvision(runs, warmup, export=True):
    pair = speed_pair(export)
    result = round_robin_timer(pair["contenders"], rounds=runs, warmup=warmup, reference="torchvision")
    common = dict(image_size=300, threads=THREADS, runs=runs, batch=1)
    for name, timing in result["contenders"].items():
        emit(f"ssd300_vgg16_{name}_median_latency", timing["median_ms"], "ms", min_ms=timing["min_ms"],
             max_ms=timing["max_ms"], **common)
    for name, ratio in result["ratios"].items():
        emit(f"ssd300_vgg16_{name}_over_torchvision", ratio["median"], "ratio", min=ratio["min"], max=ratio["max"],
             **common)


def interpreter_runner(path):
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(path), num_threads=THREADS)
    interpreter.allocate_tensors()
    runner = interpreter.get_signature_runner("serving_default")
    name = next(iter(runner.get_input_details()))
    return lambda images: runner(**{name: images})


def ssdlite_tflite(runs, warmup, size=320):
    keras.utils.set_random_seed(0)
    model = SSDLite(3, image_size=(size, size))
    dataset = load_dataset("voc", str(BCCD), split="train")
    batch = next(iter(make_tf_dataset(dataset, (size, size), 32)))
    calibration = np.clip(np.round(batch["images"].numpy()), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"fp32": export_tflite(model, Path(tmp) / "ssdlite.tflite"),
                 "int8": export_tflite(model, Path(tmp) / "ssdlite_int8.tflite", quantize="int8",
                                       representative_images=calibration)}
        runners = {name: interpreter_runner(path) for name, path in paths.items()}
        sizes = {name: Path(path).stat().st_size / 1e6 for name, path in paths.items()}
        timings = round_robin(runners, calibration[:1], runs, warmup)["contenders"]
        medians = {name: timing["median_ms"] for name, timing in timings.items()}
    common = dict(image_size=size, threads=THREADS, runs=runs, batch=1, runtime="ai-edge-litert")
    for name in ("fp32", "int8"):
        emit(f"ssdlite_mobilenet_v2_{size}_tflite_{name}_median_latency", medians[name], "ms", **common)
        emit(f"ssdlite_mobilenet_v2_{size}_tflite_{name}_size", sizes[name], "MB")
    emit(f"ssdlite_mobilenet_v2_{size}_tflite_int8_speedup", medians["fp32"] / medians["int8"], "x", **common)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-export", action="store_true", help="no SSD300 SavedModel / TFLite latency")
    args = parser.parse_args(argv)
    if args.skip_torch or torch is None:
        emit("ssd300_vgg16_torchvision_skipped", 0, "flag", reason="--skip-torch" if args.skip_torch else
             "torch not installed")
    else:
        ssd300_vs_torchvision(args.runs, args.warmup, export=not args.skip_export)
    ssdlite_tflite(args.runs * 2, args.warmup)


if __name__ == "__main__":
    main()
