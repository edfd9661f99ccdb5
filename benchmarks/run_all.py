"""Every kdet-vs-torchvision speed pair in one command, round-robin, written to one JSON file for README's tables.

    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/run_all.py                  # all pairs, 7 rounds
    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/run_all.py --only retinanet --rounds 9
    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/run_all.py --quick          # 3 rounds, no exports: a smoke run
    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/run_all.py --profile        # + per-stage profiles
    python3 benchmarks/make_tables.py                                               # README's block from the JSON

Pairs (same seeded weights on both sides, batch 1, one image): Faster R-CNN R50-FPN 640x480, RetinaNet R50-FPN 512
(also `model.predict` next to `predict_on_batch`, for its per-call spread), SSD300 VGG-16, FCN ResNet-50 512, each
with kdet's SavedModel and TFLite fp32 (builtins only); batched NMS of 1k / 10k boxes and RoIAlign of 2000 RoIs
(kdet's default op and its builtins-only twin); and one training step, batch 2 at 512x512, of Faster R-CNN and
RetinaNet R50-FPN (kdet's compiled Keras `train_on_batch`, fp32 and mixed_bfloat16, vs torchvision's forward + loss +
backward + SGD step, on one real BCCD batch of the training recipe, random initialisation on each side; a step takes
seconds, so these two pairs add about as much time as all the others). Each pair is built, checked (detection counts
/ agreement in its notes), warmed up (tracing and allocation, never timed), then timed by
benchmarks/speed_common.round_robin: every round calls each contender once, in turn, and the ratio to torchvision is
taken per round. TensorFlow and torch get
the same threads (intra-op --threads, TF inter-op 1; torch's OpenMP waits passively, as TF's pool does, because a
spinning pool crawls on a shared CPU). The JSON states the machine (CPU model and flags, cores, library versions,
date, load average at the start and end of the run). A full run writes benchmarks/results/speed.json; --only or
--quick write runs/bench/ instead, so a partial run never replaces the README's source.
"""
import argparse
import datetime
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCHMARKS = Path(__file__).resolve().parent
FULL_OUTPUT = BENCHMARKS / "results" / "speed.json"
TITLES = {
    "faster_rcnn": "Faster R-CNN ResNet-50-FPN (`fasterrcnn_resnet50_fpn`)",
    "retinanet": "RetinaNet ResNet-50-FPN (`retinanet_resnet50_fpn`)",
    "ssd300": "SSD300 VGG-16 (`ssd300_vgg16`)",
    "fcn_resnet50": "FCN ResNet-50 (`fcn_resnet50`)",
    "nms_1k": "batched NMS, 1000 boxes, 10 classes (`torchvision.ops.batched_nms`)",
    "nms_10k": "batched NMS, 10000 boxes, 10 classes (`torchvision.ops.batched_nms`)",
    "roi_align_2000": "RoIAlign, 2000 RoIs, 7x7, 256 channels (`torchvision.ops.roi_align`)",
    "train_faster_rcnn": "training step, Faster R-CNN ResNet-50-FPN (`fasterrcnn_resnet50_fpn`)",
    "train_retinanet": "training step, RetinaNet ResNet-50-FPN (`retinanet_resnet50_fpn`)",
}
TRAIN_BATCH = 2  # the training-step pairs' batch (benchmarks/profile_train_step.py builds them)


def nms_pair(count, iou_threshold=0.5, num_classes=10, image=800.0):
    """kdet.ops.batched_nms (traced) vs torchvision.ops.batched_nms on the same random boxes; kept sets checked."""
    import numpy as np
    import tensorflow as tf
    import torch
    import torchvision
    from kdet.ops import batched_nms

    rng = np.random.default_rng(0)
    centres, sizes = rng.uniform(0, image, (count, 2)), rng.uniform(16, 160, (count, 2))
    xyxy = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    scores, classes = rng.uniform(0, 1, count).astype(np.float32), rng.integers(0, num_classes, count)
    inputs = (tf.constant(xyxy[:, [1, 0, 3, 2]]), tf.constant(scores), tf.constant(classes, tf.int32))
    kdet_fn = tf.function(lambda b, s, c: batched_nms(b, s, c, iou_threshold))
    torch_inputs = (torch.from_numpy(xyxy), torch.from_numpy(scores), torch.from_numpy(classes))
    kept = kdet_fn(*inputs).numpy()
    reference = torchvision.ops.batched_nms(*torch_inputs, iou_threshold).numpy()
    notes = {"kept": int(len(kept)), "same_kept_set": bool(np.array_equal(np.sort(kept), np.sort(reference))),
             "iou_threshold": iou_threshold}
    return {"input": f"{count} boxes", "notes": notes, "repeat": max(1, 20000 // count),  # >= ~50 ms a sample
            "contenders": {"kdet": lambda: kdet_fn(*inputs).numpy(),
                           "torchvision": lambda: torchvision.ops.batched_nms(*torch_inputs, iou_threshold)},
            "calls": {"kdet": "tf.function(kdet.ops.batched_nms), yxyx", "torchvision": "torchvision.ops.batched_nms"}}


def roi_align_pair(num_rois, output=7, channels=256, feature_size=64, stride=16, sampling_ratio=2):
    """kdet.ops.roi_align (default and builtins-only twin, traced) vs torchvision.ops.roi_align, aligned=True."""
    import numpy as np
    import tensorflow as tf
    import torch
    import torchvision
    from kdet.ops import builtins_only, roi_align

    rng = np.random.default_rng(0)
    size = feature_size * stride
    features = rng.normal(0, 1, (1, channels, feature_size, feature_size)).astype(np.float32)
    corner = rng.uniform(0, size * 0.8, (num_rois, 2))
    xyxy = np.concatenate([corner, np.minimum(corner + rng.uniform(32, 400, (num_rois, 2)), size)], 1)
    xyxy = xyxy.astype(np.float32)
    inputs = (tf.constant(features.transpose(0, 2, 3, 1)), tf.constant(xyxy[:, [1, 0, 3, 2]]),
              tf.zeros([num_rois], tf.int32))

    def traced(builtins):
        @tf.function
        def run(f, b, i):
            with builtins_only(builtins):
                return roi_align(f, b, i, output, 1.0 / stride, sampling_ratio, aligned=True)
        return run

    kdet_fn, twin_fn = traced(False), traced(True)
    features_t = torch.from_numpy(features)
    rois_t = torch.from_numpy(np.concatenate([np.zeros((num_rois, 1), np.float32), xyxy], axis=1))

    def torch_fn():
        return torchvision.ops.roi_align(features_t, rois_t, output, 1.0 / stride, sampling_ratio, aligned=True)

    expected = torch_fn().numpy().transpose(0, 2, 3, 1)
    notes = {"kdet_max_error": float(np.abs(kdet_fn(*inputs).numpy() - expected).max()),
             "kdet_builtins_max_error": float(np.abs(twin_fn(*inputs).numpy() - expected).max())}
    return {"input": f"{num_rois} RoIs, {channels}x{feature_size}x{feature_size}", "notes": notes,
            "contenders": {"kdet": lambda: kdet_fn(*inputs).numpy(), "kdet_builtins": lambda: twin_fn(*inputs).numpy(),
                           "torchvision": torch_fn},
            "calls": {"kdet": "tf.function(kdet.ops.roi_align), NHWC", "kdet_builtins": "the same under "
                      "builtins_only(True): the TFLite path, run by TensorFlow", "torchvision": "torchvision.ops."
                      "roi_align, NCHW"}}


def train_pair(name):
    """kdet's compiled Keras train step (`train_on_batch`: forward, target assignment, loss, gradient, SGD apply) vs
    torchvision's (forward + loss in train mode, backward, SGD step) on the same real BCCD batch of the training
    recipe's tf.data, both built by benchmarks/profile_train_step.py. One step each here (kdet traces; the first
    losses go into the notes) and one warm-up step in run_pair: 2 untimed steps, as the other pairs' 2 warm-up calls."""
    import profile_train_step as steps
    _, size, batch, _, twin = steps.kdet_models()[name]
    if batch != TRAIN_BATCH:
        raise ValueError(f"profile_train_step builds {name} at batch {batch}; the JSON states {TRAIN_BATCH}")
    from kdet.models.inference_copy import global_policy
    model, (x, y), _ = steps.prepare(name)
    kdet_step = steps.kdet_train_step(model, x, y)
    with global_policy("mixed_bfloat16"):  # what `train.mixed_precision: mixed_bfloat16` builds
        bf16_model, _, _ = steps.prepare(name)
    bf16_step = steps.kdet_train_step(bf16_model, x, y)
    _, torch_step, torch_model = steps.torchvision_step(twin, size, x, y)
    losses = kdet_step(), torch_step(), bf16_step()
    notes = {"weights": "random initialisation on each side (a step's cost does not depend on the weights)",
             "batch_boxes": int((y["labels"] >= 0).sum()),
             "kdet_trainable_parameters": int(sum(v.numpy().size for v in model.trainable_variables)),
             "torchvision_trainable_parameters": int(sum(p.numel() for p in torch_model.parameters()
                                                         if p.requires_grad)),
             "optimizer": f"SGD(learning rate {steps.SGD['lr']}, momentum {steps.SGD['momentum']})",
             "first_losses": [round(loss, 4) for loss in losses],
             "first_losses_order": "kdet, torchvision, kdet mixed_bfloat16 (random weights each: not comparable)"}
    return {"input": f"batch {batch}, {size}x{size}", "notes": notes, "warmup": 1,  # + the step above: 2 untimed
            "contenders": {"kdet_keras_train_step": kdet_step, "kdet_keras_train_step_bf16": bf16_step,
                           "torchvision": torch_step},
            "calls": {"kdet_keras_train_step": "model.train_on_batch(images, {boxes, labels}) after model.compile("
                      "SGD): Keras' compiled train step", "kdet_keras_train_step_bf16": "the same, the model built "
                      "under keras.mixed_precision policy mixed_bfloat16 (train.mixed_precision: mixed_bfloat16)",
                      "torchvision": "model(images, targets) in train mode, sum of its losses, optimizer.zero_grad(), "
                      "loss.backward(), optimizer.step()"}}


def builders(args):
    """{pair name: zero-argument function building the pair}; modules are imported when a pair is built (torch is
    loaded first by then), so listing the pairs imports nothing."""
    from importlib import import_module
    export = not args.skip_export
    return {
        "faster_rcnn": lambda: import_module("bench_faster_rcnn_speed").speed_pair(export=export),
        "retinanet": lambda: import_module("bench_retinanet_speed").speed_pair(512, export=export),
        "ssd300": lambda: import_module("bench_ssd_speed").speed_pair(export=export),
        "fcn_resnet50": lambda: import_module("bench_seg_twin_speed").speed_pair(512, export=export,
                                                                                 threads=args.threads),
        "nms_1k": lambda: nms_pair(1000),
        "nms_10k": lambda: nms_pair(10000),
        "roi_align_2000": lambda: roi_align_pair(2000),
        "train_faster_rcnn": lambda: train_pair("faster_rcnn"),
        "train_retinanet": lambda: train_pair("retinanet"),
    }


def run_pair(name, build, rounds, warmup):
    """Build one pair, time it round-robin; -> its JSON record (title, input, calls, notes, timings, ratios)."""
    from speed_common import round_robin
    from speed_common import load_average
    start, load_start = time.perf_counter(), load_average()
    try:
        pair = build()
        built = time.perf_counter()
        timing = round_robin(pair["contenders"], rounds=rounds, warmup=min(warmup, pair.get("warmup", warmup)),
                             reference="torchvision", repeat=pair.get("repeat", 1))
    except Exception:  # one broken pair must not lose the others' figures: the error goes into the JSON
        return {"title": TITLES[name], "error": traceback.format_exc(limit=-6)}
    return {"title": TITLES[name], "input": pair["input"], "calls": pair["calls"], "notes": pair["notes"],
            "build_seconds": round(built - start, 1), "timing_seconds": round(time.perf_counter() - built, 1),
            "load_average_start": load_start, "load_average_end": load_average(), **timing}


def source_commit():
    """The measured code: `git describe --always --dirty` of the checkout run_all.py is in (None outside git)."""
    import subprocess
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=BENCHMARKS, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(TITLES), help="these pairs only (output: runs/bench/)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; --quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls of each contender (default 2)")
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1 warm-up, no exports (output: runs/bench/)")
    parser.add_argument("--skip-export", action="store_true", help="no SavedModel / TFLite contenders")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also the per-stage profile of each twin pair "
                        "(benchmarks/profile_stages.py) of the pairs run, written next to the output as "
                        "profile.json (benchmarks/results/profile.json for a full run)")
    parser.add_argument("--merge", action="store_true", help="replace only these pairs in an existing --output "
                        "(e.g. one that failed); the machine record keeps the first run's start")
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/speed.json for a "
                        "full run, runs/bench/speed_partial.json otherwise)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.skip_export = args.skip_export or args.quick
    partial = args.quick or args.only or args.rounds < 7 or args.skip_export
    if args.output is None:
        args.output = Path("runs/bench/speed_partial.json") if partial else FULL_OUTPUT
    return args


def main(argv=None):
    args = parse_args(argv)
    os.environ["KDET_BENCH_THREADS"] = str(args.threads)
    sys.path.insert(0, str(BENCHMARKS))
    import torch  # before TensorFlow initialises: importing torchvision after it segfaults
    import torchvision  # noqa: F401
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(args.threads)
    from speed_common import load_average, machine

    names = args.only or list(TITLES)
    record = {"command": " ".join(["benchmarks/run_all.py"] + (argv if argv is not None else sys.argv[1:])),
              "commit": source_commit(), "machine": machine(args.threads),
              "settings": {"rounds": args.rounds, "warmup": args.warmup, "export": not args.skip_export, "batch": 1,
                           "train_batch": TRAIN_BATCH},
              "pairs": {}}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    earlier_seconds = 0
    if args.merge and output.exists():
        previous = json.loads(output.read_text())
        earlier_seconds = previous.get("wall_seconds", 0)
        record["pairs"] = {**previous["pairs"]}
        for key in ("load_average_start", "date"):
            record["machine"][key] = previous["machine"][key]
        at = f" (at {record['commit']})" if record["commit"] else ""
        record["merged"] = previous.get("merged", []) + [record["command"] + at]
        record["commit"] = previous.get("commit")
        record["command"] = previous["command"]
    table = builders(args)
    start = time.perf_counter()
    for name in names:
        print(f"[run_all] {name}: building and timing ({args.rounds} rounds after {args.warmup} warm-up)", flush=True)
        record["pairs"][name] = result = run_pair(name, table[name], args.rounds, args.warmup)
        if "error" in result:
            print(f"[run_all]   FAILED: {result['error']}", flush=True)
        for contender, ratio in result.get("ratios", {}).items():
            print(f"[run_all]   {contender} / torchvision: median {ratio['median']:.3f} "
                  f"({ratio['min']:.3f}-{ratio['max']:.3f})", flush=True)
        gc.collect()
        record["machine"]["load_average_end"] = load_average()
        record["machine"]["date_end"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record["wall_seconds"] = earlier_seconds + round(time.perf_counter() - start)
        output.write_text(json.dumps(record, indent=1) + "\n")  # after every pair: a crash keeps the rest
    print(f"[run_all] wrote {output}", flush=True)
    if args.profile:
        import profile_stages
        profiled = [name for name in names if name in profile_stages.PAIRS]
        profile_stages.run(profiled, args.rounds, args.warmup, args.threads, output.parent / "profile.json")


if __name__ == "__main__":
    main()
