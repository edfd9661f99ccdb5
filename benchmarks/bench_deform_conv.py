"""kdet.ops.deform_conv2d vs torchvision.ops.deform_conv2d latency, one process, the same threads for both.

    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/bench_deform_conv.py             # venv with torch + TF
    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/bench_deform_conv.py --rounds 9 --threads 2

Implementations, on the same numbers (NHWC for kdet, NCHW for torchvision), DCNv2 (with a mask):
  kdet         deform_conv2d traced by tf.function, as a model calls it;
  kdet_xla     the same function with jit_compile=True (what `model.compile(jit_compile=True)` gives the op);
  litert       the TFLite builtins-only conversion of the same graph (deform_conv2d's only formulation, the one
               kdet.export writes under builtins_only()), run by the LiteRT interpreter;
  torchvision  torchvision.ops.deform_conv2d (its CPU kernel: deformable im2col + one matmul per group);
and with --backward also forward + backward (gradients w.r.t. input, offset, mask and weight) for kdet, kdet_xla and
torchvision. Results are checked equal (1e-3 absolute on outputs of magnitude ~10) before timing. Each round calls
every implementation once (round-robin, so machine noise hits all alike) after warm-up. One JSON line per case:
median, min and max ms per implementation and each median's ratio to torchvision's (< 1: faster than torchvision).
"""
import argparse
import json
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# torch and torchvision first: importing torchvision after TensorFlow segfaults (torch 2.14.1, TF 2.21).
import torch  # noqa: E402
import torchvision  # noqa: E402
import tensorflow as tf  # noqa: E402

from kdet.ops import builtins_only, deform_conv2d  # noqa: E402

CASES = {  # name: (batch, channels in, height, width, channels out, kernel, stride)
    "b1_c64_128x128_k3": (1, 64, 128, 128, 64, 3, 1),
    "b1_c256_32x32_k3": (1, 256, 32, 32, 256, 3, 1),
    "b2_c64_64x64_k3_s2": (2, 64, 64, 64, 128, 3, 2),
}


def round_robin(functions, rounds, warmup):
    """functions: name -> zero-arg callable that blocks until done. -> name -> {median_ms, min_ms, max_ms}
    (benchmarks/speed_common.py's timer: every round calls each function once, in turns)."""
    from speed_common import round_robin as timer
    timed = timer(functions, rounds=rounds, warmup=warmup)["contenders"]
    return {name: {k: round(float(c[k]), 2) for k in ("median_ms", "min_ms", "max_ms")} for name, c in timed.items()}


def litert_runner(function, specs, threads):
    from ai_edge_litert.interpreter import Interpreter

    module = tf.Module()
    module.run = tf.function(function, input_signature=specs)
    with builtins_only():
        concrete = module.run.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return Interpreter(model_content=converter.convert(), num_threads=threads).get_signature_runner()


def bench_case(name, rng, rounds, warmup, threads, backward):
    batch, cin, height, width, cout, kernel, stride = CASES[name]
    pad = kernel // 2
    out_h, out_w = (height + 2 * pad - kernel) // stride + 1, (width + 2 * pad - kernel) // stride + 1
    taps = kernel * kernel
    x = rng.normal(0, 1, (batch, cin, height, width)).astype(np.float32)
    offset = rng.normal(0, 2, (batch, 2 * taps, out_h, out_w)).astype(np.float32)
    mask = rng.uniform(0, 1, (batch, taps, out_h, out_w)).astype(np.float32)
    weight = rng.normal(0, 0.05, (cout, cin, kernel, kernel)).astype(np.float32)
    bias = rng.normal(0, 1, cout).astype(np.float32)
    nhwc = lambda a: np.ascontiguousarray(np.transpose(a, [0, 2, 3, 1]))  # noqa: E731
    feeds = {"x": nhwc(x), "offset": nhwc(offset), "mask": nhwc(mask)}
    tf_feeds = {key: tf.constant(value) for key, value in feeds.items()}
    kernel_tf = tf.Variable(np.transpose(weight, [2, 3, 1, 0]))
    bias_tf = tf.Variable(bias)

    def conv_with(kernel, bias):
        return lambda x, offset, mask: deform_conv2d(x, offset, kernel, bias, stride, pad, 1, mask)

    forward = conv_with(kernel_tf, bias_tf)

    specs = [tf.TensorSpec(value.shape, tf.float32, name=key) for key, value in feeds.items()]
    kdet_fn = tf.function(forward, input_signature=specs)
    xla_fn = tf.function(forward, input_signature=specs, jit_compile=True)
    folded = conv_with(tf.constant(kernel_tf.numpy()), tf.constant(bias))  # constants in the flatbuffer, no variables
    litert = litert_runner(lambda x, offset, mask: {"y": folded(x, offset, mask)}, specs, threads)
    tensors = [torch.from_numpy(a) for a in (x, offset, weight, bias, mask)]

    def torch_forward(x_t, offset_t, weight_t, bias_t, mask_t):
        return torchvision.ops.deform_conv2d(x_t, offset_t, weight_t, bias_t, stride=stride, padding=pad,
                                             mask=mask_t)

    reference = nhwc(torch_forward(*tensors).numpy())
    for label, result in (("kdet", kdet_fn(**tf_feeds).numpy()), ("kdet_xla", xla_fn(**tf_feeds).numpy()),
                          ("litert", litert(**feeds)["y"])):
        error = float(np.abs(result - reference).max())
        assert error <= 1e-3, f"{name}: {label} differs from torchvision by {error}"
    functions = {
        "kdet": lambda: kdet_fn(**tf_feeds).numpy(),
        "kdet_xla": lambda: xla_fn(**tf_feeds).numpy(),
        "litert": lambda: litert(**feeds),
        "torchvision": lambda: torch_forward(*tensors),
    }
    if backward:
        def gradients(x, offset, mask):
            with tf.GradientTape() as tape:
                tape.watch([x, offset, mask])
                loss = tf.reduce_sum(tf.square(forward(x, offset, mask)))
            return tape.gradient(loss, [x, offset, mask, kernel_tf])

        grad_fn = tf.function(gradients, input_signature=specs)
        grad_xla = tf.function(gradients, input_signature=specs, jit_compile=True)
        leaves = [t.clone().requires_grad_(True) for t in tensors]

        def torch_gradients():
            loss = torch_forward(*leaves).square().sum()
            return torch.autograd.grad(loss, [leaves[0], leaves[1], leaves[4], leaves[2]])

        functions.update({
            "kdet_backward": lambda: [g.numpy() for g in grad_fn(**tf_feeds)],
            "kdet_xla_backward": lambda: [g.numpy() for g in grad_xla(**tf_feeds)],
            "torchvision_backward": torch_gradients,
        })
    results = round_robin(functions, rounds, warmup)
    ratios = {f"{label}_vs_torchvision": round(results[label]["median_ms"] / results["torchvision"]["median_ms"], 3)
              for label in ("kdet", "kdet_xla", "litert")}
    if backward:
        ratios.update({f"{label}_vs_torchvision": round(
            results[label]["median_ms"] / results["torchvision_backward"]["median_ms"], 3)
            for label in ("kdet_backward", "kdet_xla_backward")})
    print(json.dumps({"name": f"deform_conv2d/{name}", "unit": "ms", "threads": threads, "rounds": rounds,
                      "shape_nchw": [batch, cin, height, width], "out_channels": cout, "kernel": kernel,
                      "stride": stride, "mask": True, "offset_groups": 1, **results, **ratios}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--backward", action="store_true", help="also time forward + backward")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    for name in args.cases:
        bench_case(name, rng, args.rounds, args.warmup, args.threads, args.backward)


if __name__ == "__main__":
    main()
