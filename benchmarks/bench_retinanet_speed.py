"""RetinaNet ResNet-50-FPN latency: kdet (`predict_on_batch`, `predict`, SavedModel, TFLite) vs torchvision's
retinanet_resnet50_fpn (same seeded weights, same image, same threads, timed round-robin in one process), as
per-round ratios, and vs KerasHub's RetinaNetObjectDetector (ResNet-50, random init) when keras_hub imports (not
installed here: skipped, said in the output). One JSON line per figure.

    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/bench_retinanet_speed.py [--runs 7] [--skip-export]

Each call is one full detection of one image (normalisation, backbone, FPN, heads, decoding, NMS): kdet through
`predict_on_batch` (compiled predict function) and `model.predict` (the call Keras users make; its per-call spread
is the point), torchvision through `model([image])` under `no_grad` with its resize disabled (min_size = max_size =
the image size). The CPU is shared: compare the ratios, not the absolutes. benchmarks/run_all.py runs speed_pair.
"""
import argparse
import json
import os

import numpy as np

# OpenMP threads that spin while waiting (torch's default) crawl when the 2 cores are shared with other jobs:
# measured 10 s instead of 1 s for one torchvision RetinaNet call at load 10. Passive waiting, as TF's pool does.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
try:  # torch must be imported before TensorFlow initialises, or importing torchvision later segfaults
    import torch
    import torchvision.models.detection  # noqa: F401
except ImportError:
    torch = None

THREADS = int(os.environ.get("KDET_BENCH_THREADS", "2"))
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(THREADS))
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(1)

from kdet.convert.torchvision import load_state_dict, seeded_state_dict, torch_shapes  # noqa: E402
from kdet.models.retinanet import RetinaNet  # noqa: E402
from speed_common import kdet_variants  # noqa: E402

WEIGHT_SEED, CLS_WEIGHT_SCALE, CLS_BIAS = 8, 3.0, -4.0  # as tests/reference/make_retinanet_twin_fixtures.py


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": round(float(value), 4), "unit": unit, **extra}), flush=True)


def seeded_state(shapes):
    state = seeded_state_dict(shapes, WEIGHT_SEED)
    state["head.classification_head.cls_logits.weight"] *= CLS_WEIGHT_SCALE
    state["head.classification_head.cls_logits.bias"][:] = CLS_BIAS
    return state


def smooth_image(size, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (1, size // 16 + 1, size // 16 + 1, 3)).astype(np.float32)
    image = tf.image.resize(coarse, (size, size)).numpy() + rng.normal(0, 20, (1, size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def torchvision_runner(size, state):
    import torch
    from torchvision.models.detection import retinanet_resnet50_fpn
    torch.set_num_threads(THREADS)
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=size, max_size=size,
                                   detections_per_img=100).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)

    def run(images):
        with torch.no_grad():
            return model([torch.from_numpy(images[0].transpose(2, 0, 1).astype(np.float32) / 255.0)])
    return run


def keras_hub_runner(size):
    import keras_hub
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
        image_shape=(size, size, 3))
    backbone = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=3, max_level=7, use_p5=True,
                                                  image_shape=(size, size, 3))
    model = keras_hub.models.RetinaNetObjectDetector(backbone=backbone, num_classes=91)
    # predict_on_batch fails in keras-hub 0.32 (decode_predictions unpacks the 1-tuple (x,) as (x, y)): the same
    # forward + decode, compiled with tf.function as kdet's predict function is.
    detect = tf.function(lambda x: model.decode_predictions(model(x, training=False), x))
    return lambda images: {k: v.numpy() for k, v in detect(tf.constant(images, tf.float32)).items()}


def round_robin(runners, images, runs, warmup, reference=None):
    """Runners called on the same images in turns (benchmarks/speed_common.py) -> its result dict."""
    from speed_common import round_robin as timer
    return timer({name: (lambda run=run: run(images)) for name, run in runners.items()}, rounds=runs, warmup=warmup,
                 reference=reference)


def speed_pair(size=512, export=True):
    """kdet's RetinaNet (`predict_on_batch`, `predict`, bfloat16, SavedModel and TFLite if export) and torchvision's, same
    seeded weights, for benchmarks/run_all.py: {"input", "contenders", "calls", "notes"}. `predict` is there for its
    per-call spread (issue 18: bimodal while `predict_on_batch` stays steady)."""
    images = smooth_image(size)
    model = RetinaNet(91, image_size=(size, size), max_detections=100)
    state = seeded_state(torch_shapes(model))
    load_state_dict(model, state)
    runners = {"kdet_keras": lambda x: model.predict_on_batch(x),
               "kdet_keras_predict": lambda x: model.predict(x, verbose=0),
               "torchvision": torchvision_runner(size, state)}
    calls = {"kdet_keras": f"model.predict_on_batch(uint8 [1, {size}, {size}, 3])",
             "kdet_keras_predict": f"model.predict(uint8 [1, {size}, {size}, 3], verbose=0)",
             "torchvision": "model([image]) under no_grad, resize disabled (min_size = max_size = size)"}
    kdet_out, torch_out = model.predict_on_batch(images), runners["torchvision"](images)[0]
    count = int(kdet_out["num_detections"][0])
    notes = {"detections_agree": count == len(torch_out["boxes"]), "kdet_detections": count,
             "torchvision_detections": len(torch_out["boxes"])}
    if notes["detections_agree"] and count:
        notes["max_box_error_px"] = round(float(np.max(np.abs(
            kdet_out["boxes"][0, :count] - torch_out["boxes"].numpy()[:, [1, 0, 3, 2]]))), 5)
    variants, variant_calls = kdet_variants(model, images, notes, export=export)
    try:
        runners["keras_hub"] = keras_hub_runner(size)
        calls["keras_hub"] = "tf.function(model call + decode_predictions), random init"
    except ImportError as error:
        notes["keras_hub_skipped"] = f"not installed ({error})"
    contenders = {name: (lambda run=run: run(images)) for name, run in runners.items()}
    return {"input": f"{size}x{size}", "contenders": {**contenders, **variants}, "calls": {**calls, **variant_calls},
            "notes": notes}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip-export", action="store_true", help="no SavedModel / TFLite latency")
    args = parser.parse_args(argv)
    if torch is None:
        raise SystemExit("torch + torchvision are needed: run it with /work/torchvenv/bin/python")
    from speed_common import round_robin as timer
    pair = speed_pair(args.size, export=not args.skip_export)
    for key, value in pair["notes"].items():
        emit(f"retinanet_r50_{args.size}_{key}", float(value) if isinstance(value, (bool, int, float)) else 0,
             "note", detail=value)
    result = timer(pair["contenders"], rounds=args.runs, warmup=args.warmup, reference="torchvision")
    common = dict(image_size=args.size, threads=THREADS, runs=args.runs, batch=1)
    for name, timing in result["contenders"].items():
        emit(f"retinanet_r50_{args.size}_{name}_median_latency", timing["median_ms"], "ms", min_ms=timing["min_ms"],
             max_ms=timing["max_ms"], **common)
    for name, ratio in result["ratios"].items():
        emit(f"retinanet_r50_{args.size}_{name}_over_torchvision", ratio["median"], "ratio", min=ratio["min"],
             max=ratio["max"], **common)


if __name__ == "__main__":
    main()
