"""Hourglass-104 CenterNet at 512x512: compiled detect of the inference copy (BN folded, as `kdet benchmark` runs a
.keras file), batch 1, speed_common.round_robin: 1 warm-up, 3 rounds on the wall clock, then 3 on the process CPU clock. No artifact is
written (bench_centernet_speed.py saves and reloads a 760 MB .keras file and exports every format first).

    PYTHONPATH=. python3 benchmarks/bench_hourglass_keras.py
"""
import json
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks.speed_common import round_robin
from kdet.models import CenterNet
from kdet.models.inference_copy import inference_model


def main():
    t0, c0 = time.perf_counter(), time.process_time()
    keras.utils.set_random_seed(0)
    model = CenterNet(80, (512, 512), backbone="hourglass104", head_conv=256)
    image = np.random.default_rng(0).integers(0, 256, (1, 512, 512, 3), dtype=np.uint8)
    model(image)
    params = int(sum(np.prod(w.shape) for w in model.weights))
    fast = inference_model(model)
    fn = tf.function(lambda x: fast.detect(tf.cast(x, tf.float32)),
                     input_signature=[tf.TensorSpec((1, 512, 512, 3), tf.uint8)])
    print(json.dumps({"built_wall_s": round(time.perf_counter() - t0), "built_cpu_s": round(time.process_time() - c0),
                      "parameters": params}), flush=True)
    for clock, name in ((time.perf_counter, "wall"), (time.process_time, "cpu")):
        r = round_robin({"keras": lambda: {k: v.numpy() for k, v in fn(image).items()}}, rounds=3,
                        warmup=1 if name == "wall" else 0, clock=clock)
        print(json.dumps({"clock": name, **r["contenders"]["keras"]}), flush=True)


if __name__ == "__main__":
    main()
