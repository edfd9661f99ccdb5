"""Faster R-CNN speed: kdet's fasterrcnn_resnet50_fpn twin against torchvision's, same weights, same threads, same
process, at 640x480; kdet's SavedModel and TFLite latency; one training step of each.

Needs torch + torchvision next to TensorFlow (the scratch venv of tests/reference/ sees both):

    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/bench_faster_rcnn_speed.py [--runs 7] [--skip-export]

Both models get the seeded weights of tests/reference/make_faster_rcnn_twin_fixtures.py (numpy, no download), so
their detections are compared too. torchvision's transform is set to min_size=480, max_size=640: no resize, as kdet
takes the image at its network size. Latencies are medians (min-max) of round-robin rounds after warm-up
(benchmarks/speed_common.py); the per-round ratio is what to read (the machine is shared). Prints one JSON line per
figure. `benchmarks/run_all.py` runs the same pair (speed_pair) with the other models for the README.
"""
import argparse
import json
import os
import time

import numpy as np

HEIGHT, WIDTH = 480, 640
NUM_CLASSES = 91
SEED = 6


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": value, "unit": unit, **extra}), flush=True)


def image(seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (HEIGHT // 16 + 1, WIDTH // 16 + 1, 3))
    ys, xs = np.linspace(0, coarse.shape[0] - 1, HEIGHT), np.linspace(0, coarse.shape[1] - 1, WIDTH)
    smooth = coarse[np.round(ys).astype(int)][:, np.round(xs).astype(int)]
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


def seeded_state(shapes):
    from kdet.convert.torchvision import seeded_state_dict

    state = seeded_state_dict(shapes, SEED)
    state["roi_heads.box_predictor.cls_score.weight"] *= 8.0  # as the twin fixture: some confident detections
    state["roi_heads.box_predictor.cls_score.bias"][:] = -2.0
    state["roi_heads.box_predictor.cls_score.bias"][0] = 6.0
    return state


def match_detections(ours, theirs, box_atol=0.5, score_atol=1e-3):
    """Greedy pairing (same label, score and box within tolerance; near-tied scores may swap rows) ->
    (pairs found, largest box error in px)."""
    boxes = theirs["boxes"].numpy()[:, [1, 0, 3, 2]]
    scores, labels = theirs["scores"].numpy(), theirs["labels"].numpy()
    free = list(range(int(ours["num_detections"])))
    matched, worst = 0, 0.0
    for box, score, label in zip(boxes, scores, labels):
        errors = [(float(np.max(np.abs(ours["boxes"][j] - box))), j) for j in free
                  if ours["classes"][j] + 1 == label and abs(ours["scores"][j] - score) <= score_atol]
        errors = [e for e in errors if e[0] <= box_atol]
        if errors:
            error, j = min(errors)
            free.remove(j)
            matched, worst = matched + 1, max(worst, error)
    return matched, worst


def median_ms(functions, runs, warmup):
    """{name: fn} -> {name: median ms}, the functions called in turns (benchmarks/speed_common.py)."""
    from speed_common import round_robin
    result = round_robin(functions, rounds=runs, warmup=warmup)
    return {name: r["median_ms"] for name, r in result["contenders"].items()}


def speed_pair(export=True):
    """kdet (Keras, and SavedModel / TFLite if export) and torchvision on one image, same seeded weights, for
    benchmarks/run_all.py: {"input", "contenders": {name: zero-arg callable}, "calls": {name: what it runs},
    "notes": {detections agree, export seconds}, "model", "reference", "pixels", "tensor"}.
    Import torch before TensorFlow and set both libraries' threads first."""
    import tensorflow as tf
    import torch
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from kdet.convert.torchvision import load_state_dict
    from kdet.models.faster_rcnn import FasterRCNN
    from speed_common import kdet_variants

    reference = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                        min_size=HEIGHT, max_size=WIDTH).eval()
    state = seeded_state({k: tuple(v.shape) for k, v in reference.state_dict().items()})
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    model = FasterRCNN(NUM_CLASSES - 1, image_size=(HEIGHT, WIDTH))
    model(np.zeros((1, HEIGHT, WIDTH, 3), np.float32))
    load_state_dict(model, state)

    pixels = image()
    tensor = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32) / 255.0)
    detect = tf.function(lambda x: model.detect(tf.cast(x, tf.float32)),
                         input_signature=[tf.TensorSpec((None, HEIGHT, WIDTH, 3), tf.uint8)])
    batch = tf.constant(pixels[None])

    def run_torch():
        with torch.no_grad():
            return reference([tensor])[0]

    ours = {k: v.numpy()[0] for k, v in detect(batch).items()}
    theirs = run_torch()
    matched, box_error = match_detections(ours, theirs)
    notes = {"detections_agree": bool(matched == len(theirs["boxes"]) == int(ours["num_detections"])),
             "kdet_detections": int(ours["num_detections"]), "torchvision_detections": len(theirs["boxes"]),
             "matched": matched,
             "max_box_error_px": round(float(box_error), 4)}
    contenders = {"kdet_keras": lambda: {k: v.numpy() for k, v in detect(batch).items()}, "torchvision": run_torch}
    calls = {"kdet_keras": "tf.function(model.detect) on uint8 [1, 480, 640, 3]",
             "torchvision": "model([image]) under no_grad, resize disabled (min_size 480, max_size 640)"}
    variants, variant_calls = kdet_variants(model, pixels[None], notes, export=export)
    contenders.update(variants)
    calls.update(variant_calls)
    return {"input": f"{WIDTH}x{HEIGHT}", "contenders": contenders, "calls": calls, "notes": notes,
            "model": model, "reference": reference, "pixels": pixels, "tensor": tensor}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # torch's spinning OpenMP threads crawl on a shared CPU; passive waiting, as TF's pool does.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch  # before TensorFlow initialises: importing torchvision after it segfaults
    import torchvision
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(args.threads)
    from speed_common import round_robin

    pair = speed_pair(export=not args.skip_export)
    notes = pair["notes"]
    emit("faster_rcnn_twin/detections_agree", notes["detections_agree"], "bool", kdet=notes["kdet_detections"],
         torchvision=notes["torchvision_detections"], max_box_error_px=notes["max_box_error_px"])
    for key, value in notes.items():
        if key.startswith("export_"):
            emit(f"faster_rcnn_twin/{key}", value, "s")
    result = round_robin(pair["contenders"], rounds=args.runs, warmup=args.warmup, reference="torchvision")
    for name, timing in result["contenders"].items():
        emit(f"faster_rcnn_twin/latency_640x480/{name}", timing["median_ms"], "ms", min_ms=timing["min_ms"],
             max_ms=timing["max_ms"], threads=args.threads, runs=args.runs)
    for name, ratio in result["ratios"].items():
        emit(f"faster_rcnn_twin/latency_ratio/{name}_vs_torchvision", ratio["median"], "ratio",
             min=ratio["min"], max=ratio["max"])

    if not args.skip_train:
        train_step(pair["model"], pair["reference"], pair["pixels"], pair["tensor"], args)
    emit("versions", 0, "-", torch=torch.__version__, torchvision=torchvision.__version__, tensorflow=tf.__version__)


def train_step(model, reference, pixels, tensor, args):
    """One SGD step of each on the same image and two boxes (median of runs after the first, which traces)."""
    import keras
    import tensorflow as tf
    import torch

    boxes = np.array([[100, 120, 220, 260], [300, 400, 420, 560]], np.float32)  # yxyx
    labels = np.array([4, 17], np.int32)
    images = tf.constant(pixels[None], tf.float32)
    targets = {"boxes": tf.constant(boxes[None]), "labels": tf.constant(labels[None])}  # encoded in the step
    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
    reference.train()
    optimizer = torch.optim.SGD(reference.parameters(), lr=1e-3, momentum=0.9)
    torch_targets = [{"boxes": torch.from_numpy(boxes[:, [1, 0, 3, 2]]), "labels": torch.from_numpy(labels + 1).long()}]

    def step_torch():
        losses = reference([tensor], torch_targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    start = time.perf_counter()
    model.train_on_batch(images, targets)
    emit("faster_rcnn_twin/train_first_step_with_tracing", round(time.perf_counter() - start, 1), "s")
    times = median_ms({"kdet": lambda: model.train_on_batch(images, targets), "torchvision": step_torch},
                      max(2, args.runs // 2), 1)
    for name, ms in times.items():
        emit(f"faster_rcnn_twin/train_step_640x480/{name}", round(ms, 1), "ms", batch_size=1)
    emit("faster_rcnn_twin/train_step_ratio/kdet_vs_torchvision", round(times["kdet"] / times["torchvision"], 3),
         "ratio")


if __name__ == "__main__":
    main()
