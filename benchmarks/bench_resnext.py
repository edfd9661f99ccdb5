"""ResNeXt speed: kdet's ResNeXt-50 32x4d trunk against torchvision's resnext50_32x4d, same weights, same threads,
same process, 640x480 batch 1; and the grouped 3x3 conv alone (GroupedConv2D, Keras' Conv2D(groups=), torch).

Needs torch + torchvision next to TensorFlow (the scratch venv sees both); kdet importable from the repo root:

    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/bench_resnext.py [--rounds 9] [--threads 2]

Both trunks get seeded weights (kdet.convert.torchvision.seeded_state_dict, no download) and their C5 outputs are
compared. The trunk is the stem + layer1-4 (what a detector's backbone runs: no pooling, no classifier); kdet's in a
tf.function, torch's under no_grad. "kdet_keras_groups" is the same trunk with Keras' Conv2D(groups=32) for the
grouped convs, to show what GroupedConv2D buys. Every round calls each candidate once (round-robin, so a change of
load on the shared machine hits all alike); prints one JSON line per figure: median, min and max ms over the rounds
after warm-up, and the ratio kdet / torchvision.
"""
import argparse
import json
import os

import numpy as np

HEIGHT, WIDTH = 480, 640
SEED = 11


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": value, "unit": unit, **extra}), flush=True)


def round_robin(functions, rounds, warmup):
    """{name: fn} -> {name: [ms per round]} (benchmarks/speed_common.py's timer: every round calls each fn once)."""
    from speed_common import round_robin as timer
    return {name: c["times_ms"] for name, c in timer(functions, rounds=rounds, warmup=warmup)["contenders"].items()}


def emit_times(prefix, times, reference):
    base = float(np.median(times[reference]))
    for name, values in times.items():
        median = float(np.median(values))
        emit(f"{prefix}/{name}", round(median, 2), "ms", min_ms=round(min(values), 2), max_ms=round(max(values), 2),
             ratio_to_torchvision=round(median / base, 3), rounds=len(values))


def keras_grouped_conv(filters, kernel_size, strides=1, groups=1, use_bias=False, kernel_initializer=None,
                       name=None):
    """Keras' own grouped conv with GroupedConv2D's signature (for the comparison trunk)."""
    import keras
    return keras.layers.Conv2D(filters, kernel_size, strides, "valid", groups=groups, use_bias=use_bias,
                               kernel_initializer=kernel_initializer, name=name)


def build_trunk(state, keras_groups=False):
    """kdet ResNeXt-50 32x4d with `state` loaded; keras_groups builds its grouped convs as Keras Conv2D(groups=)."""
    import kdet.backbones.resnet as resnet_module
    from kdet.convert.torchvision import load_state_dict, resnet_entries

    original = resnet_module.GroupedConv2D
    if keras_groups:
        resnet_module.GroupedConv2D = keras_grouped_conv
    try:
        trunk = resnet_module.ResNet(**resnet_module.RESNEXT["resnext50_32x4d"])
    finally:
        resnet_module.GroupedConv2D = original
    trunk(np.zeros((1, 64, 64, 3), np.float32))
    entries = resnet_entries(trunk, prefix="")
    load_state_dict(trunk, {e.torch_name: state[e.torch_name] for e in entries}, table=entries)
    return trunk


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--conv-rounds", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's spinning OpenMP threads crawl on a shared CPU
    import torch  # before TensorFlow initialises: importing torchvision after it segfaults
    from torchvision.models import resnext50_32x4d
    from torchvision.models._utils import IntermediateLayerGetter
    import keras
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(args.threads)

    from kdet.convert.torchvision import seeded_state_dict
    from kdet.layers.grouped_conv import GroupedConv2D
    emit("setup", args.threads, "threads", torch=torch.__version__, tensorflow=tf.__version__,
         keras=keras.__version__)

    # -- the grouped conv alone: 3x3, 128 -> 128, 32 groups, on 1x58x58 (layer1's conv2 at 224 px, padded) -------
    x = np.random.default_rng(0).normal(size=(1, 58, 58, 128)).astype(np.float32)
    grouped = GroupedConv2D(128, 3, groups=32)
    grouped.build(x.shape)
    reference = keras.layers.Conv2D(128, 3, groups=32, use_bias=False)
    reference.build(x.shape)
    reference.kernel.assign(grouped.kernel)
    conv = torch.nn.Conv2d(128, 128, 3, groups=32, bias=False)
    conv.weight.data = torch.from_numpy(grouped.kernel.numpy().transpose(3, 2, 0, 1).copy())
    x_tf, x_torch = tf.constant(x), torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    run_grouped, run_keras = tf.function(grouped), tf.function(reference)
    with torch.no_grad():
        difference = max(float(np.max(np.abs(run_keras(x_tf).numpy() - run_grouped(x_tf).numpy()))),
                         float(np.max(np.abs(conv(x_torch).numpy().transpose(0, 2, 3, 1) - run_grouped(x_tf).numpy()))))
    emit("grouped_conv/max_abs_difference", difference, "")

    def torch_conv():
        with torch.no_grad():
            return conv(x_torch)

    times = round_robin({"GroupedConv2D": lambda: run_grouped(x_tf).numpy(),
                         "keras_Conv2D_groups": lambda: run_keras(x_tf).numpy(), "torchvision": torch_conv},
                        args.conv_rounds, args.warmup)
    emit_times("grouped_conv_3x3_128_g32", times, "torchvision")

    # -- the ResNeXt-50 32x4d trunk at 640x480 ---------------------------------------------------------------------
    model = resnext50_32x4d(weights=None).eval()
    state = seeded_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}, SEED)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    body = IntermediateLayerGetter(model, {"layer4": "C5"}).eval()
    trunk, keras_trunk = build_trunk(state), build_trunk(state, keras_groups=True)
    image = np.random.default_rng(1).normal(size=(1, HEIGHT, WIDTH, 3)).astype(np.float32)
    image_tf, image_torch = tf.constant(image), torch.from_numpy(image.transpose(0, 3, 1, 2).copy())
    run_trunk = tf.function(lambda t: trunk(t)["C5"])
    run_keras_trunk = tf.function(lambda t: keras_trunk(t)["C5"])

    def torch_trunk():
        with torch.no_grad():
            return body(image_torch)["C5"]

    ours, theirs = run_trunk(image_tf).numpy(), torch_trunk().numpy().transpose(0, 2, 3, 1)
    emit("resnext50_trunk/c5_relative_error", float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))), "",
         shape=list(ours.shape))
    times = round_robin({"kdet": lambda: run_trunk(image_tf).numpy(), "torchvision": torch_trunk,
                         "kdet_keras_groups": lambda: run_keras_trunk(image_tf).numpy()}, args.rounds, args.warmup)
    emit_times("resnext50_32x4d_trunk_640x480", times, "torchvision")


if __name__ == "__main__":
    main()
