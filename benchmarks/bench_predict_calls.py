"""`model.predict` against `predict_on_batch`, call by call (issue 18: `predict` was bimodal per call on RetinaNet
R50-FPN 512, about 700 or 1300 ms, while `predict_on_batch` stayed at 640-660 ms).

    PYTHONPATH=. python3 benchmarks/bench_predict_calls.py [--model retinanet] [--size 512] [--rounds 12]

Contenders, timed round-robin (benchmarks/speed_common.round_robin) on one uint8 image, batch 1, same model:
  predict_on_batch   the compiled predict function on the array (no tf.data)
  predict            kdet's `Detector.predict` (the call Keras users make)
  keras_predict      Keras' own `keras.Model.predict` on the same model: what `predict` was before kdet's override
Prints one JSON object (machine, load average before / after, per-contender median and min-max in ms, ratios to
predict_on_batch): wall time, and with --cpu also the process CPU time of each call (time.process_time; on a
shared machine the load changes wall times many-fold, CPU time much less).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

THREADS = int(os.environ.get("KDET_BENCH_THREADS", "2"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from speed_common import load_average, machine, round_robin  # noqa: E402


def build(name, size):
    """A seeded model at its torchvision twin's widths (detections as in benchmarks/run_all.py)."""
    from kdet.convert.torchvision import load_state_dict, torch_shapes
    if name == "retinanet":
        from bench_retinanet_speed import seeded_state
        from kdet.models.retinanet import RetinaNet
        model = RetinaNet(91, image_size=(size, size), max_detections=100)
        load_state_dict(model, seeded_state(torch_shapes(model)))
        return model
    if name == "ssd300":
        from kdet.models.ssd import SSD
        return SSD(90, image_size=(300, 300))
    raise ValueError(f"--model {name!r}: retinanet or ssd300")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="retinanet")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cpu", action="store_true", help="also time process CPU per call (a second set of rounds)")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    model = build(args.model, args.size)
    size = model.image_size
    images = np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)
    expected = model.predict_on_batch(images)
    got = model.predict(images, verbose=0)
    same = all(np.array_equal(expected[key], got[key]) for key in expected)
    record = {"command": " ".join(["benchmarks/bench_predict_calls.py"] + (argv or sys.argv[1:])),
              "machine": machine(THREADS), "model": args.model, "input": f"uint8 [1, {size[0]}, {size[1]}, 3]",
              "predict_equals_predict_on_batch": bool(same)}
    contenders = {"predict_on_batch": lambda: model.predict_on_batch(images),
                  "predict": lambda: model.predict(images, verbose=0),
                  "keras_predict": lambda: keras.Model.predict(model, images, verbose=0)}
    record["wall"] = round_robin(contenders, rounds=args.rounds, warmup=args.warmup, reference="predict_on_batch")
    if args.cpu:
        record["cpu"] = round_robin(contenders, rounds=args.rounds, warmup=0, reference="predict_on_batch",
                                    clock=time.process_time)
    record["load_average_end"] = load_average()
    text = json.dumps(record, indent=1)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
