"""Why kdet's TFLite export gives Dense / Conv2D layers other forms (kdet.export.layer_forms: deep contractions split
into input-channel slices, wide 3x3 stride-1 convolutions as Winograd F(2x2, 3x3)): one layer of a kdet model in
Keras' own form and in kdet's, run by LiteRT (XNNPACK, 2 threads) next to TensorFlow, round-robin.

    python3 benchmarks/bench_tflite_contractions.py [--rounds 7] [--output runs/bench/tflite_contractions.json]

Layers (shapes of the benchmark inputs of benchmarks/run_all.py): Faster R-CNN R50-FPN's fc6 on 1000 RoIs (depth
7*7*256 = 12544, split), FCN ResNet-50's classifier conv 3x3 2048 -> 512 at 64x64, SSD300's 3x3 1024-channel head
conv at 19x19, ResNet-50's 3x3 convs of layer2 (128, zero-padded 60x80 map as kdet's ResNet runs it) and layer4
(512 at 16x16), the FPN's P2 output conv (256 at 120x160) and Mask R-CNN's mask-head conv (100 RoIs of 14x14x256),
all Winograd in kdet's form; ResNet-50's layer1 conv (64 channels, kept direct). Writes JSON with the machine
record; prints TFLite / TF per layer with min-max.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
sys.path.insert(0, str(BENCHMARKS.parent))


def layers():
    """{name: (keras layer, input shape)}, seeded weights."""
    import keras
    keras.utils.set_random_seed(0)
    return {
        "faster_rcnn_fc6": (keras.layers.Dense(1024, activation="relu"), (1, 1000, 12544)),
        "fcn_classifier_conv": (keras.layers.Conv2D(512, 3, padding="same", activation="relu"), (1, 64, 64, 2048)),
        "ssd300_head_conv_19x19": (keras.layers.Conv2D(6 * 91, 3, padding="same"), (1, 19, 19, 1024)),
        "resnet50_layer4_conv": (keras.layers.Conv2D(512, 3, padding="same"), (1, 16, 16, 512)),
        "resnet50_layer2_conv": (keras.layers.Conv2D(128, 3, padding="valid"), (1, 62, 82, 128)),
        "resnet50_layer1_conv": (keras.layers.Conv2D(64, 3, padding="valid"), (1, 122, 162, 64)),
        "fpn_p2_output_conv": (keras.layers.Conv2D(256, 3, padding="same"), (1, 120, 160, 256)),
        "mask_head_conv": (keras.layers.Conv2D(256, 3, padding="same", activation="relu"), (100, 14, 14, 256)),
    }


def flatbuffer(layer, shape, forms):
    """The layer converted as kdet exports (builtins only, ExportArchive), in kdet's layer form or Keras' own."""
    import tensorflow as tf
    from kdet.export.tflite import function_flatbuffer
    return function_flatbuffer(lambda x: {"y0": layer(x)}, [tf.TensorSpec(shape, tf.float32, name="x0")], layer,
                               layer_forms=forms)


def run(rounds, warmup, output):
    import tensorflow as tf
    from profile_tflite import delegation, interpreter_stage
    from speed_common import load_average, machine, round_robin
    tf.config.threading.set_intra_op_parallelism_threads(2)
    record = {"command": "benchmarks/bench_tflite_contractions.py", "machine": machine(2), "layers": {}}
    for name, (layer, shape) in layers().items():
        x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        layer.build(shape)
        function = tf.function(layer)
        tensor = tf.constant(x)
        reference = function(tensor).numpy()
        contenders, details = {"tf": lambda: function(tensor).numpy()}, {}
        for forms in (False, True):
            key = "tflite_forms" if forms else "tflite"
            buffer = flatbuffer(layer, shape, forms)
            contenders[key], (y,) = interpreter_stage(buffer, (x,))
            details[key] = {"max_abs_difference_to_tf": float(np.abs(y - reference).max()),
                            "xnnpack": delegation(buffer)}
        load = load_average()
        timing = round_robin(contenders, rounds=rounds, warmup=warmup, reference="tf")
        record["layers"][name] = {"input": list(shape), "load_average": load, **details, **timing}
        ratios = timing["ratios"]
        print(f"[layer forms] {name:24s} tf {timing['contenders']['tf']['median_ms']:8.1f} ms  "
              + "  ".join(f"{k}/tf {ratios[k]['median']:.2f} ({ratios[k]['min']:.2f}-{ratios[k]['max']:.2f})"
                          for k in ("tflite", "tflite_forms"))
              + f"  max |diff| forms {details['tflite_forms']['max_abs_difference_to_tf']:.1e}  load {load}",
              flush=True)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(record, indent=1) + "\n")
    print(f"[layer forms] wrote {output}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", default="runs/bench/tflite_contractions.json")
    args = parser.parse_args(argv)
    run(args.rounds, args.warmup, args.output)


if __name__ == "__main__":
    main()
