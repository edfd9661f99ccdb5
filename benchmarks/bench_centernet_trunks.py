"""Forward latency of CenterNet's full-size trunks at batch 1, 512x512: DLA-34 (+ DLA-up / IDA-up, with DCNv2 and
with plain 3x3 convs) and Hourglass-104 (both stacks). Random weights; each forward is the trunk's call in one
tf.function (training=False), timed round-robin in one process (warm-up 2, then `--rounds` rounds); one JSON line per
trunk with the median and min-max. The CPU is shared: read the figures beside the load average.

    PYTHONPATH=. python3 benchmarks/bench_centernet_trunks.py --rounds 7
"""
import argparse
import json
import os
import time

THREADS = int(os.environ.get("KDET_BENCH_THREADS", "2"))
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(THREADS))
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(1)

from kdet.backbones.dla import DLA34Trunk  # noqa: E402
from kdet.backbones.hourglass import Hourglass104Trunk  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    image = tf.random.normal([1, args.size, args.size, 3], seed=0)
    trunks = {"dla34_dcn": DLA34Trunk(), "dla34_plain": DLA34Trunk(deformable=False),
              "hourglass104": Hourglass104Trunk()}
    forwards = {}
    for name, trunk in trunks.items():
        trunk(image[:, :64, :64])  # build eagerly at a small size
        forwards[name] = tf.function(lambda x, trunk=trunk: trunk(x, training=False))
    for name, forward in forwards.items():
        for _ in range(2):
            [f.numpy() for f in forward(image)]
    times = {name: [] for name in forwards}
    for _ in range(args.rounds):
        for name, forward in forwards.items():
            start = time.perf_counter()
            [f.numpy() for f in forward(image)]
            times[name].append(1000.0 * (time.perf_counter() - start))
    for name, values in times.items():
        print(json.dumps({"name": name, "size": args.size, "batch": 1, "rounds": args.rounds, "threads": THREADS,
                          "median_ms": round(float(np.median(values)), 1), "min_ms": round(min(values), 1),
                          "max_ms": round(max(values), 1), "load_avg": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    main()
