"""Max-unpooling (and the argmax pooling it pairs with): TensorFlow's ops vs the TFLite builtins-only twin, at the
decoder shapes of SegNet, round-robin in one process (benchmarks/speed_common.py), 2 threads each.

    python benchmarks/bench_unpool.py                          # SegNet VGG-16 widths at 360 x 480 (padded to 384)
    python benchmarks/bench_unpool.py --rounds 15 --ops unpool --size 128 128 --widths 32 64 128 128

Contenders per shape, all on the same inputs: "keras" (kdet's default op, scatter_nd / MaxPoolWithArgmax, traced
tf.function: what the Keras model runs), "tflite" (the builtins twin converted with TFLITE_BUILTINS only, LiteRT
interpreter), "tflite_old" (the twin as of OLD_TWIN_COMMIT, read from git: one_hot of a slot found by integer
division). Outputs are checked equal to the default op before timing. One JSON line per (op, shape): each
contender's median / min / max ms and its per-round ratio to keras (< 1: faster than Keras), rounds, load average.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import tempfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

from kdet.ops import builtins_only, max_pool_with_argmax, max_unpool  # noqa: E402
from speed_common import load_average, round_robin  # noqa: E402

THREADS = 2
OLD_TWIN_COMMIT = "1392356"  # main before the equality-mask unpool twin
tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(THREADS)


def load_old_unpool():
    """kdet/ops/unpool.py as of OLD_TWIN_COMMIT (git show), written to a file (autograph reads source)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(["git", "show", f"{OLD_TWIN_COMMIT}:kdet/ops/unpool.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), f"unpool_{OLD_TWIN_COMMIT}.py")
    with open(path, "w") as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location(f"unpool_{OLD_TWIN_COMMIT}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def segnet_shapes(height, width, widths):
    """The [1, H, W, C] tensors SegNet pools (padded to a multiple of 2 ** stages), one per encoder stage."""
    multiple = 2 ** len(widths)
    height, width = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    return [(1, height >> i, width >> i, c) for i, c in enumerate(widths)]


def tflite_runner(fn, specs):
    """`fn(*inputs)` traced with the builtins twins, converted with TFLITE_BUILTINS only -> callable(*arrays)."""
    from ai_edge_litert.interpreter import Interpreter

    module = tf.Module()
    module.run = tf.function(lambda *args: {"out": fn(*args)}, input_signature=specs)
    with builtins_only():
        concrete = module.run.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    runner = Interpreter(model_content=converter.convert(), num_threads=THREADS).get_signature_runner()
    names = [f"args_{i}" for i in range(len(specs))]
    return lambda *arrays: runner(**dict(zip(names, arrays)))["out"]


def keras_runner(fn, specs):
    traced = tf.function(fn, input_signature=specs)
    return lambda *arrays: traced(*arrays).numpy()


def cases(op, shape, rng, old):
    """(inputs, specs, {name: fn(*inputs) -> array}) of one op at one pooled-tensor shape."""
    x = rng.normal(0, 1, shape).astype(np.float32)
    if op == "pool":
        def pool(module):
            return lambda images: module.max_pool_with_argmax(images, 2)[1]
        return [x], [tf.TensorSpec(shape, tf.float32)], {"new": pool(_this()), "old": pool(old)}
    values, argmax = (t.numpy() for t in max_pool_with_argmax(x, 2))
    decoder = rng.normal(0, 1, values.shape).astype(np.float32)  # decoder features unpooled through the indices
    specs = [tf.TensorSpec(values.shape, tf.float32), tf.TensorSpec(values.shape, tf.int32)]

    def unpool(module):
        return lambda v, a: module.max_unpool(v, a, shape, 2)
    return [decoder, argmax], specs, {"new": unpool(_this()), "old": unpool(old)}


def _this():
    import kdet.ops.unpool as module
    return module


def bench(op, shape, rounds, warmup, rng, old):
    inputs, specs, fns = cases(op, shape, rng, old)
    runners = {"keras": keras_runner(fns["new"], specs), "tflite": tflite_runner(fns["new"], specs),
               "tflite_old": tflite_runner(fns["old"], specs)}
    expected = runners["keras"](*inputs)
    for name, run in runners.items():
        np.testing.assert_array_equal(run(*inputs), expected, err_msg=f"{op} {shape}: {name} differs from keras")
    load = load_average()
    result = round_robin({k: (lambda run=run: run(*inputs)) for k, run in runners.items()}, rounds, warmup,
                         reference="keras")
    line = {"name": f"{'max_unpool' if op == 'unpool' else 'max_pool_with_argmax'}/{'x'.join(map(str, shape))}",
            "unit": "ms", "rounds": rounds, "warmup": warmup, "threads": THREADS, "load_average_before": load,
            "load_average_after": load_average()}
    for name, row in result["contenders"].items():
        line[name] = {k: row[k] for k in ("median_ms", "min_ms", "max_ms")}
    for name, row in result["ratios"].items():
        line[f"{name}_over_keras"] = {k: row[k] for k in ("median", "min", "max")}
    print(json.dumps(line), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs=2, type=int, default=[360, 480], help="image H W")
    parser.add_argument("--widths", nargs="+", type=int, default=[64, 128, 256, 512, 512])
    parser.add_argument("--ops", nargs="+", default=["unpool", "pool"], choices=["unpool", "pool"])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    rng, old = np.random.default_rng(0), load_old_unpool()
    for op in args.ops:
        for shape in segnet_shapes(*args.size, args.widths):
            bench(op, shape, args.rounds, args.warmup, rng, old)


if __name__ == "__main__":
    main()
