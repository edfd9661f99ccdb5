"""Where the builtins-only RoIAlign twin spends its time in LiteRT: Faster R-CNN's box RoIAlign stage (the real FPN
levels and 1000 proposals of benchmarks/profile_stages.py's Faster R-CNN pair, 640x480) four ways, round-robin:

    tflite               the twin as kdet's TFLite export runs it (kdet.ops.roi_align under builtins_only)
    tflite_without_gather  the same graph with its GATHERs replaced by the first cells of the feature map,
                         broadcast by the multiply (positions, indices, weights, MUL and SUM are all still computed)
    tflite_one_piece     the twin with GATHER + MUL + SUM in one piece per group (GATHER_PIECES = 1) instead of 16
    tf                   TensorFlow's default path (CropAndResize + average pooling) on the same inputs

    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/profile_roi_align_tflite.py [--rounds 7] [--output FILE]

1 - tflite_without_gather / tflite is the share of the GATHER (which copies each bin's cells, 1 KB each at 256
channels, in TFLite's GATHER kernel); TF's CropAndResize reads the cells in place.
"""
import argparse
import contextlib
import importlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCHMARKS = Path(__file__).resolve().parent


@contextlib.contextmanager
def patched(name, value):
    """kdet.ops.roi_align's module attribute `name` set to `value` while a graph is traced."""
    module = importlib.import_module("kdet.ops.roi_align")
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def first_cells(table, index):
    """The twin's GATHER replaced by the table's first cells, broadcast by the multiply (timing only): [1, cells, C]
    instead of [n, cells, C]; the indices are still computed (their minimum is added as 0 * it)."""
    import tensorflow as tf
    return table[:index.shape[-1]][None] + tf.cast(tf.reduce_min(index), tf.float32) * 0.0


def run(rounds, warmup, output):
    import torch  # noqa: F401  (before TensorFlow: importing torchvision after it segfaults)
    import torchvision  # noqa: F401
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(2)
    sys.path.insert(0, str(BENCHMARKS))
    import profile_stages
    from profile_tflite import interpreter_stage, stage_flatbuffer
    from speed_common import load_average, machine, round_robin

    pair, stages, _ = profile_stages.faster_rcnn_stages(fold=True)
    call, model = stages["roi_align"], pair["kdet"]["model"]
    contenders = {"tflite": interpreter_stage(stage_flatbuffer(call.fn, call.inputs, model), call.inputs)[0]}
    with patched("_gather_cells", first_cells):
        contenders["tflite_without_gather"] = interpreter_stage(stage_flatbuffer(call.fn, call.inputs, model),
                                                              call.inputs)[0]
    with patched("GATHER_PIECES", 1):
        contenders["tflite_one_piece"] = interpreter_stage(stage_flatbuffer(call.fn, call.inputs, model),
                                                         call.inputs)[0]
    contenders["tf"] = call
    load = load_average()
    timing = round_robin(contenders, rounds=rounds, warmup=warmup, reference="tflite")
    record = {"command": "benchmarks/profile_roi_align_tflite.py", "machine": machine(2),
              "rois": int(call.inputs[0].shape[1]), "load_average_start": load, "load_average_end": load_average(),
              **timing}
    medians = {k: v["median_ms"] for k, v in timing["contenders"].items()}
    print(f"[roi_align] tflite {medians['tflite']:.1f} ms, without its GATHER {medians['tflite_without_gather']:.1f} "
          f"ms ({timing['ratios']['tflite_without_gather']['median']:.2f} of it), in one piece "
          f"{medians['tflite_one_piece']:.1f} ms, TF {medians['tf']:.1f} ms; "
          f"load {load}")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(record, indent=1) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", default="runs/bench/profile_roi_align_tflite.json")
    args = parser.parse_args(argv)
    run(args.rounds, args.warmup, args.output)


if __name__ == "__main__":
    main()
