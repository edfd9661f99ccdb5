"""kdet.ops vs torchvision.ops latency: batched_nms and roi_align; TF, TFLite and torch in one process, 2 threads each.

    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/bench_ops.py            # venv with torch + torchvision + TF
    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/bench_ops.py --runs 10 --channels 64 --only roi_align

Inputs are the same numbers for both libraries (yxyx/NHWC for kdet, xyxy/NCHW for torchvision). kdet runs as a
traced tf.function (how models call it). RoIAlign is timed as kdet's default (TF), its builtins-only twin run by TF
and converted to TFLite (LiteRT interpreter, TFLITE_BUILTINS only), the twin before issue 18 (read from git at
OLD_TWIN_COMMIT, also TF and TFLite) and torchvision.ops.MultiScaleRoIAlign / roi_align. Each round calls every
implementation once (round-robin, so machine noise hits all alike) after warm-up. One JSON line per case: value =
kdet median ms, each implementation's median / min / max ms, and ratios to torchvision (< 1: kdet faster) from the
same run. Results are checked equal before timing (same kept indices; RoIAlign to 1e-4, float rounding).
"""
import argparse
import importlib.util
import json
import os
import subprocess
import tempfile
import time
import types

import numpy as np

THREADS = 2
OLD_TWIN_COMMIT = "e0fcb0a"  # main before issue 18 item 3: gather twin with four [K, ny, nx, C] gathers
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# torch and torchvision first: importing torchvision after TensorFlow segfaults (torch 2.14.1, TF 2.21).
import torch  # noqa: E402
import torchvision  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(THREADS)
torch.set_num_threads(THREADS)

from kdet.ops import batched_nms, builtins_only, multiscale_roi_align  # noqa: E402


def emit(name, kdet_ms, torchvision_ms, **extra):
    print(json.dumps({"name": name, "value": round(kdet_ms, 3), "unit": "ms", "kdet_ms": round(kdet_ms, 3),
                      "torchvision_ms": round(torchvision_ms, 3), "ratio": round(kdet_ms / torchvision_ms, 3),
                      "threads": THREADS, **extra}), flush=True)


def round_robin(functions, runs, warmup):
    """functions: name -> zero-arg callable that blocks until done. -> name -> {median_ms, min_ms, max_ms}."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in functions}
    for _ in range(runs):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: {"median_ms": round(float(np.median(t)), 3), "min_ms": round(float(np.min(t)), 3),
                   "max_ms": round(float(np.max(t)), 3)} for name, t in times.items()}


def time_round_robin(functions, runs, warmup):
    return {name: r["median_ms"] for name, r in round_robin(functions, runs, warmup).items()}


def nms_inputs(rng, count, num_classes=10, image=800.0):
    centres = rng.uniform(0, image, (count, 2))
    sizes = rng.uniform(16, 160, (count, 2))
    xyxy = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    return xyxy, rng.uniform(0, 1, count).astype(np.float32), rng.integers(0, num_classes, count)


def bench_batched_nms(rng, count, runs, warmup):
    xyxy, scores, classes = nms_inputs(rng, count)
    yxyx = tf.constant(xyxy[:, [1, 0, 3, 2]])
    scores_tf, classes_tf = tf.constant(scores), tf.constant(classes, tf.int32)
    kdet_fn = tf.function(lambda b, s, c: batched_nms(b, s, c, 0.5))
    boxes_t, scores_t, classes_t = torch.from_numpy(xyxy), torch.from_numpy(scores), torch.from_numpy(classes)
    kept = kdet_fn(yxyx, scores_tf, classes_tf).numpy()
    reference = torchvision.ops.batched_nms(boxes_t, scores_t, classes_t, 0.5).numpy()
    # Same boxes in the same score order; equal scores may swap (torchvision's per-class path sorts unstably).
    assert np.array_equal(np.sort(kept), np.sort(reference)), "kdet and torchvision keep different boxes"
    assert np.array_equal(scores[kept], scores[reference]), "kdet and torchvision order the boxes differently"
    medians = time_round_robin({
        "kdet": lambda: kdet_fn(yxyx, scores_tf, classes_tf).numpy(),
        "torchvision": lambda: torchvision.ops.batched_nms(boxes_t, scores_t, classes_t, 0.5),
    }, runs, warmup)
    emit(f"batched_nms/{count}_boxes", medians["kdet"], medians["torchvision"], kept=int(len(kept)), classes=10,
         iou_threshold=0.5)


def load_old_roi_align():
    """The kdet.ops.roi_align module as of OLD_TWIN_COMMIT (git show), for the before / after comparison."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(["git", "show", f"{OLD_TWIN_COMMIT}:kdet/ops/roi_align.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), f"roi_align_{OLD_TWIN_COMMIT}.py")  # a file: autograph reads source
    with open(path, "w") as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location(f"roi_align_{OLD_TWIN_COMMIT}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def proposal_boxes(rng, count, height, width):
    """RPN-like proposals, xyxy pixels: sqrt(area) log-uniform in [16, 512], aspect 1:2..2:1, clipped to the image."""
    side = np.exp(rng.uniform(np.log(16), np.log(512), count))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), count))
    half = np.stack([side * np.sqrt(aspect), side / np.sqrt(aspect)], 1) / 2  # (w/2, h/2)
    centre = rng.uniform([0, 0], [width, height], (count, 2))
    xyxy = np.concatenate([centre - half, centre + half], 1)
    return np.clip(xyxy, 0, [width, height, width, height]).astype(np.float32)


def tflite_runner(fn, specs):
    """Convert `fn(*inputs)` (traced with the builtins twins) with TFLITE_BUILTINS only -> callable(feed dict)."""
    from ai_edge_litert.interpreter import Interpreter

    module = tf.Module()
    module.run = tf.function(lambda *args: {"pooled": fn(*args)}, input_signature=specs)
    with builtins_only():
        concrete = module.run.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    runner = Interpreter(model_content=converter.convert(), num_threads=THREADS).get_signature_runner()
    return lambda feed: runner(**feed)["pooled"]


def bench_multiscale_roi_align(rng, name, num_rois, output, channels, runs, warmup, image=(480, 640),
                               strides=(4, 8, 16, 32), sampling_ratio=2, tflite=True):
    """torchvision.ops.MultiScaleRoIAlign (aligned=False) over P2-P5 of one image, vs kdet's paths."""
    height, width = image
    maps = [rng.normal(0, 1, (1, channels, height // s, width // s)).astype(np.float32) for s in strides]
    xyxy = proposal_boxes(rng, num_rois, height, width)
    nhwc = [tf.constant(np.transpose(m, [0, 2, 3, 1])) for m in maps]
    boxes, indices = tf.constant(xyxy[:, [1, 0, 3, 2]]), tf.zeros([num_rois], tf.int32)
    old = load_old_roi_align()

    def pool(module, features, b, i):
        return module.multiscale_roi_align(list(features), b, i, output, strides, sampling_ratio=sampling_ratio)

    kdet_module = types.SimpleNamespace(multiscale_roi_align=multiscale_roi_align)
    specs = ([tf.TensorSpec(f.shape, tf.float32, name=f"p{k + 2}") for k, f in enumerate(nhwc)]
             + [tf.TensorSpec([num_rois, 4], tf.float32, name="boxes"), tf.TensorSpec([num_rois], tf.int32,
                                                                                        name="box_indices")])

    def traced(module, builtins):
        @tf.function(input_signature=specs)
        def run(*args):
            with builtins_only(builtins):
                return pool(module, args[:-2], *args[-2:])
        return lambda: run(*nhwc, boxes, indices).numpy()

    functions = {"default": traced(kdet_module, False), "twin": traced(kdet_module, True),
                 "old_twin": traced(old, True)}
    feed = {**{f"p{k + 2}": f.numpy() for k, f in enumerate(nhwc)}, "boxes": boxes.numpy(),
            "box_indices": indices.numpy()}
    if tflite:
        for key, module in (("tflite_twin", kdet_module), ("tflite_old_twin", old)):
            run_tflite = tflite_runner(lambda *args, m=module: pool(m, args[:-2], *args[-2:]), specs)
            functions[key] = lambda run_tflite=run_tflite: run_tflite(feed)
    roi_pool = torchvision.ops.MultiScaleRoIAlign([str(k) for k in range(len(maps))], output, sampling_ratio)
    torch_maps = {str(k): torch.from_numpy(m) for k, m in enumerate(maps)}
    torch_boxes = [torch.from_numpy(xyxy)]
    functions["torchvision"] = lambda: roi_pool(torch_maps, torch_boxes, [image])

    reference = functions["torchvision"]().numpy().transpose(0, 2, 3, 1)
    for key, fn in functions.items():
        if key == "torchvision":
            continue
        error = float(np.abs(np.asarray(fn()) - reference).max())
        assert error <= 1e-4, f"{key} differs from torchvision by {error}"
    results = round_robin(functions, runs, warmup)
    tv = results["torchvision"]["median_ms"]
    levels = np.floor(4 + np.log2(np.sqrt((xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])) / 224 + 1e-8) + 1e-6)
    per_level = np.bincount(np.clip(levels, 2, 5).astype(int) - 2, minlength=len(strides))
    emit(name, results["default"]["median_ms"], tv, rounds=runs, warmup=warmup, channels=channels,
         image_hw=list(image), rois_per_level=per_level.tolist(), output=output, sampling_ratio=sampling_ratio,
         aligned=False, **{f"{key}_latency_ms": r for key, r in results.items()},
         **{f"{key}_ratio": round(r["median_ms"] / tv, 3) for key, r in results.items() if key != "torchvision"},
         twin_speedup_tf=round(results["old_twin"]["median_ms"] / results["twin"]["median_ms"], 2),
         **({"twin_speedup_tflite": round(results["tflite_old_twin"]["median_ms"]
                                          / results["tflite_twin"]["median_ms"], 2)} if tflite else {}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--channels", type=int, default=256, help="feature channels for roi_align (FPN: 256)")
    parser.add_argument("--only", choices=["nms", "roi_align"], help="run one op's cases")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.only != "roi_align":
        for count in (1000, 10000):
            bench_batched_nms(rng, count, args.runs, args.warmup)
    if args.only != "nms":
        bench_multiscale_roi_align(rng, "multiscale_roi_align/fpn_2000_rois_7x7", 2000, 7, args.channels,
                                   args.runs, args.warmup)
        bench_multiscale_roi_align(rng, "multiscale_roi_align/mask_rcnn_100_rois_14x14", 100, 14, args.channels,
                                   args.runs, args.warmup)


if __name__ == "__main__":
    main()
