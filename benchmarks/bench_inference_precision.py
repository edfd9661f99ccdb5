"""BatchNorm folding and bfloat16 inference: compiled `detect` latency, batch 1, round-robin in one process.

    python benchmarks/bench_inference_precision.py [--models retinanet faster_rcnn] [--rounds 7]
    python benchmarks/bench_inference_precision.py --formulation     # how the folded bias is added (ResNet-50 trunk)

Variants per model (seeded random weights, BN statistics randomised so folding is not the identity):
fp32 (Keras BN), folded (BN in the convs), folded_bf16 (folded, built under mixed_bfloat16, fp32 weights copied in).
Each round calls every variant once (round-robin after warm-up); prints one JSON line per variant with the median and
min-max of wall and process-CPU milliseconds, and the agreement of the top detections with fp32.
`--formulation` times the ResNet-50 trunk at 512x512 with Keras' BN, with the folded bias as a BiasAdd (the kdet
choice), and as an AddV2 of a [1, 1, 1, C] tensor (what a Keras conv with use_bias does).
"""
import argparse
import json
import time

import keras
import numpy as np
import tensorflow as tf

from kdet.models.inference_copy import inference_model
from kdet.layers import fold_bn
from kdet.models import FasterRCNN, RetinaNet

MODELS = {"retinanet": lambda: RetinaNet(3, image_size=(512, 512)),
          "faster_rcnn": lambda: FasterRCNN(3, image_size=(480, 640))}


def randomize_batch_norm(model, seed=0):
    """Give every BN non-trivial statistics and affine terms (random init has mean 0, var 1, gamma 1, beta 0)."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.2, c))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c))
            layer.gamma.assign(rng.uniform(0.5, 1.5, c))
            layer.beta.assign(rng.normal(0, 0.2, c))


def round_robin(functions, rounds, warmup=2):
    """{name: (wall ms list, process CPU ms list)}: CPU time (all threads of this process) is the steadier figure on
    a machine shared with other jobs, where wall time also counts the time other processes held the cores."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times = {name: ([], []) for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name][0].append((time.perf_counter() - wall) * 1000)
            times[name][1].append((time.process_time() - cpu) * 1000)
    return times


def summary(values):
    wall, cpu = values
    return {"wall_median_ms": round(float(np.median(wall)), 1), "wall_min_ms": round(min(wall), 1),
            "wall_max_ms": round(max(wall), 1), "cpu_median_ms": round(float(np.median(cpu)), 1),
            "cpu_min_ms": round(min(cpu), 1), "cpu_max_ms": round(max(cpu), 1)}


def compiled_detect(model):
    height, width = model.image_size
    fn = tf.function(lambda x: model.detect(x), input_signature=[tf.TensorSpec((1, height, width, 3), tf.float32)])
    return lambda x: {k: v.numpy() for k, v in fn(x).items()}


def top_agreement(reference, candidate, top=100, iou=0.5):
    """Of the reference's first `top` detections, the fraction with a same-class candidate at IoU >= iou."""
    n = min(int(reference["num_detections"][0]), top)
    boxes, classes = candidate["boxes"][0][:int(candidate["num_detections"][0])], candidate["classes"][0]
    hits = 0
    for box, cls in zip(reference["boxes"][0][:n], reference["classes"][0][:n]):
        y0 = np.maximum(box[0], boxes[:, 0]); x0 = np.maximum(box[1], boxes[:, 1])
        y1 = np.minimum(box[2], boxes[:, 2]); x1 = np.minimum(box[3], boxes[:, 3])
        inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
        union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        same = np.abs(boxes - box).max(axis=1) < 0.5  # degenerate (clipped) boxes of random weights have no area
        ok = ((inter / np.maximum(union - inter, 1e-9) >= iou) | same) & (classes[:len(boxes)] == cls)
        hits += bool(ok.any())
    return hits / max(n, 1), n


def bench_model(name, rounds):
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    height, width = model.image_size
    model(np.zeros((1, height, width, 3), np.float32))
    randomize_batch_norm(model)
    variants = {"fp32": model, "folded": inference_model(model),
                "folded_bf16": inference_model(model, precision="bfloat16")}
    image = tf.constant(np.random.default_rng(1).uniform(0, 255, (1, height, width, 3)).astype(np.float32))
    detect = {k: compiled_detect(m) for k, m in variants.items()}
    outputs = {k: fn(image) for k, fn in detect.items()}
    times = round_robin({k: (lambda fn=fn: fn(image)) for k, fn in detect.items()}, rounds)
    for variant, values in times.items():
        agreement, n = top_agreement(outputs["fp32"], outputs[variant])
        score_diff = float(np.abs(outputs["fp32"]["scores"] - outputs[variant]["scores"]).max())
        top_score = float(outputs[variant]["scores"].max())
        print(json.dumps({"model": name, "variant": variant, **summary(values), "rounds": rounds,
                          "folded_pairs": getattr(variants[variant], "folded_pairs", 0),
                          "top_detections_agree": round(agreement, 3), "of": n,
                          "max_score_diff_rowwise": round(score_diff, 5), "top_score": round(top_score, 4)}),
              flush=True)


def bench_formulation(rounds):
    """ResNet-50 trunk, 512x512: Keras BN vs folded bias as BiasAdd vs as AddV2."""
    from kdet.backbones.resnet import ResNet

    keras.utils.set_random_seed(0)
    inputs = tf.constant(np.random.default_rng(1).normal(size=(1, 512, 512, 3)).astype(np.float32))
    nets = {}
    for variant in ("keras_bn", "biasadd", "addv2"):
        net = ResNet(50)
        net(inputs)
        if variant != "keras_bn":
            net.image_size = (512, 512)
            fold_bn.fold_batch_norm(net)
        nets[variant] = net

    def add_v2_call(self, x, training=None, mask=None):
        return x if self._bias_in_conv else x + tf.reshape(tf.cast(self.beta, x.dtype), (1, 1, 1, -1))

    functions = {}
    for variant, net in nets.items():
        if variant == "addv2":
            for layer in net._flatten_layers(include_self=False, recursive=True):
                if isinstance(layer, fold_bn.FoldedBatchNormalization):
                    layer.call = add_v2_call.__get__(layer)
        fn = tf.function(lambda x, net=net: net(x, training=False)["C5"])
        functions[variant] = lambda fn=fn: fn(inputs).numpy()
    times = round_robin(functions, rounds)
    for variant, values in times.items():
        print(json.dumps({"model": "resnet50_trunk_512", "variant": variant, **summary(values), "rounds": rounds}),
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--formulation", action="store_true")
    args = parser.parse_args()
    if args.formulation:
        bench_formulation(args.rounds)
        return
    for name in args.models:
        bench_model(name, args.rounds)


if __name__ == "__main__":
    main()
