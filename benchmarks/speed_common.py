"""The one round-robin timer of the speed benchmarks, and the machine they ran on.

    result = round_robin({"kdet": lambda: run_kdet(x), "torchvision": lambda: run_torch(x)}, rounds=7, warmup=2,
                         reference="torchvision")
    result["contenders"]["kdet"]["median_ms"], result["ratios"]["kdet"]["median"]

Every contender is warmed up first (tracing, allocation: never timed), then each round times every contender once,
in turn; the starting contender rotates by one each round so none always runs right after the same neighbour. On a
shared machine the load changes between rounds, not within one, so the ratio is taken per round (contender time /
reference time of the same round) and summarised by its median and min-max next to each contender's own median and
min-max. A contender must return only when its work is done (convert asynchronous outputs inside it).
"""
import datetime
import os
import platform
import time

import numpy as np

# /proc/cpuinfo flags that decide how fast fp32 / bf16 / int8 convolutions can run.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8")


def spread(values):
    """[v...] -> {"median", "min", "max"} as floats."""
    values = np.asarray(values, np.float64)
    return {"median": float(np.median(values)), "min": float(values.min()), "max": float(values.max())}


def round_robin(contenders, rounds=7, warmup=2, reference=None, repeat=1, clock=time.perf_counter):
    """Time zero-argument callables in turns.

    contenders: {name: callable}, in the order of the first round.
    rounds: timed rounds (each calls every contender once); warmup: untimed calls of each contender before them.
    reference: the contender the others are divided by, round by round (None: no ratios).
    repeat: calls per timed sample, the time divided by it (a few-millisecond op timed once per round measures the
        scheduler of a loaded machine, not the op); warm-up calls are `warmup` * `repeat` too.
    clock: seconds as a float (a fake one in tests).
    Returns {"rounds", "warmup", "repeat", "reference", "order": [[names of round 0], ...],
             "contenders": {name: {"times_ms": [per round], "median_ms", "min_ms", "max_ms"}},
             "ratios": {name: {"per_round": [...], "median", "min", "max"}} for every name but the reference}.
    """
    names = list(contenders)
    if rounds < 1 or warmup < 0 or repeat < 1 or not names:
        raise ValueError(f"round_robin needs contenders, rounds >= 1, warmup >= 0, repeat >= 1; got {names}, "
                         f"{rounds}, {warmup}, {repeat}")
    if reference is not None and reference not in contenders:
        raise ValueError(f"reference {reference!r} is not a contender ({names})")
    for _ in range(warmup):
        for name in names:
            for _ in range(repeat):
                contenders[name]()
    times = {name: [] for name in names}
    order = []
    for index in range(rounds):
        turn = names[index % len(names):] + names[:index % len(names)]
        order.append(turn)
        for name in turn:
            start = clock()
            for _ in range(repeat):
                contenders[name]()
            times[name].append((clock() - start) * 1000.0 / repeat)
    result = {"rounds": rounds, "warmup": warmup, "repeat": repeat, "reference": reference, "order": order,
              "contenders": {}, "ratios": {}}
    for name in names:
        summary = spread(times[name])
        result["contenders"][name] = {"times_ms": [round(t, 3) for t in times[name]],
                                      **{f"{k}_ms": round(v, 3) for k, v in summary.items()}}
    if reference is not None:
        for name in names:
            if name != reference:
                per_round = [t / r for t, r in zip(times[name], times[reference])]
                result["ratios"][name] = {"per_round": [round(v, 4) for v in per_round],
                                          **{k: round(v, 4) for k, v in spread(per_round).items()}}
    return result


def load_average():
    """The 1, 5 and 15 minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def cpu_description(cpuinfo="/proc/cpuinfo"):
    """{"model", "logical_cpus", "usable_cpus", "flags": [the CPU_FLAGS present]} from /proc/cpuinfo."""
    model, flags = None, set()
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model or platform.processor() or "unknown", "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "flags": [flag for flag in CPU_FLAGS if flag in flags]}


def versions():
    """Versions of the libraries the figures depend on (None: not installed)."""
    found = {"python": platform.python_version()}
    for name, module in (("tensorflow", "tensorflow"), ("keras", "keras"), ("torch", "torch"),
                         ("torchvision", "torchvision"), ("onnxruntime", "onnxruntime"),
                         ("ai_edge_litert", "ai_edge_litert"), ("keras_hub", "keras_hub")):
        try:
            found[name] = getattr(__import__(module), "__version__", "installed")
        except ImportError:
            found[name] = None
    return found


def machine(threads):
    """What the figures were measured on: CPU, threads given to each library, library versions, date, load."""
    return {"cpu": cpu_description(), "threads": threads, "platform": platform.platform(),
            "versions": versions(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average_start": load_average()}


def agreement(reference, other):
    """How much of one image's fp32 output `other` reproduces: for detection dicts the share of the reference's
    detections with a detection of the same class at IoU >= 0.9 in `other`; for masks the share of equal pixels."""
    from kdet.ops.box_ops import box_iou
    if "num_detections" not in reference:
        return round(float((np.asarray(reference["masks"]) == np.asarray(other["masks"])).mean()), 4)
    count, found = int(reference["num_detections"][0]), int(other["num_detections"][0])
    if count == 0:
        return 1.0 if found == 0 else 0.0
    iou = np.asarray(box_iou(np.asarray(reference["boxes"][0, :count], np.float32),
                             np.asarray(other["boxes"][0, :found], np.float32)))
    same = np.asarray(reference["classes"][0, :count])[:, None] == np.asarray(other["classes"][0, :found])[None]
    return round(float(((iou >= 0.9) & same).any(axis=1).mean()), 4) if found else 0.0


def kdet_variants(model, images, notes, export=True):
    """kdet's other contenders of a twin pair, on the same uint8 `images` [1, H, W, 3] as its Keras one:
      kdet_keras_bf16               tf.function(detect) of the bfloat16 inference copy (BN folded, mixed_bfloat16:
                                    kdet.models.inference_copy), what `--precision bfloat16` runs;
      kdet_saved_model, kdet_tflite if export: the fp32 exports (BN folded) through kdet.export.load_runner.
    -> (contenders {name: zero-argument function}, calls {name: text}). `notes` get the export times, detection
    counts and the bf16 copy's agreement with the fp32 model (`agreement`)."""
    import tempfile
    import tensorflow as tf
    from kdet.export import export_saved_model, export_tflite, load_runner
    from kdet.models.inference_copy import inference_model
    shape = "x".join(str(d) for d in images.shape)
    fast = inference_model(model, precision="bfloat16")
    detect = tf.function(lambda x: fast.detect(tf.cast(x, tf.float32)),
                         input_signature=[tf.TensorSpec((None, *images.shape[1:]), tf.uint8)])
    contenders = {"kdet_keras_bf16": lambda: {k: v.numpy() for k, v in detect(images).items()}}
    calls = {"kdet_keras_bf16": f"tf.function(inference_model(model, precision='bfloat16').detect) on uint8 [{shape}]"}
    reference = {k: np.asarray(v) for k, v in model.detect(tf.cast(images, tf.float32)).items()}
    notes["bf16_agreement"] = agreement(reference, contenders["kdet_keras_bf16"]())
    if not export:
        return contenders, calls
    workdir = tempfile.mkdtemp(prefix="kdet-speed-bench-")
    for fmt, write in (("saved_model", lambda: export_saved_model(model, os.path.join(workdir, "sm"))),
                       ("tflite", lambda: export_tflite(model, os.path.join(workdir, "m.tflite")))):
        start = time.perf_counter()
        runner = load_runner(write())
        notes[f"export_{fmt}_seconds"] = round(time.perf_counter() - start, 1)
        if "num_detections" in reference:
            notes[f"{fmt}_detections"] = int(runner(images)["num_detections"][0])
        contenders[f"kdet_{fmt}"] = (lambda run: lambda: run(images))(runner)
        calls[f"kdet_{fmt}"] = f"kdet.export.load_runner({fmt}) on uint8 [{shape}]"
    return contenders, calls
