"""kdet's fcn_resnet50 vs torchvision's, same seeded weights, one process: latency at 512 x 512 and the ratio.

    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/bench_seg_twin_speed.py   # needs torch + torchvision
    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/bench_seg_twin_speed.py --size 256 --runs 10 --export

torch and torchvision are not kdet dependencies: run it in the venv of tests/reference/ (system site packages +
torch 2.14.1 / torchvision 0.29.1). Both models get kdet.convert.torchvision.seeded_state_dict weights, run in
inference mode on the same uint8 image (batch 1; torch on 2 intra-op threads like TensorFlow's default here), are
warmed up once, then timed round-robin (benchmarks/speed_common.py). Prints both medians (min-max), the per-round
ratio kdet / torchvision, and the largest logit difference. kdet runs `detect` (logits + softmax + argmax) under
tf.function; torchvision runs model(x)["out"] + softmax + argmax, the normalisation included on both sides.
"""
import argparse
import json

# torch before TensorFlow: importing torch's triton after TensorFlow segfaults (measured with torch 2.14.1).
import torch  # noqa: I001
from torchvision.models.segmentation import fcn_resnet50

import numpy as np
import tensorflow as tf

from kdet.convert.torchvision import load_state_dict, seeded_state_dict, torch_shapes
from kdet.convert.torchvision import fcn_resnet_table
from kdet.models.fcn_resnet import FCNResNet
from speed_common import kdet_variants, round_robin

SEED = 5


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": float(f"{float(value):.5g}"), "unit": unit, **extra}), flush=True)


def speed_pair(size=512, export=True, threads=2):
    """kdet's FCNResNet (`detect` under tf.function; SavedModel and TFLite if export) and torchvision's fcn_resnet50,
    same seeded weights, for benchmarks/run_all.py: {"input", "contenders", "calls", "notes"}."""
    torch.set_num_threads(threads)
    shape = (size, size)
    reference = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False).eval()
    state = seeded_state_dict({k: tuple(v.shape) for k, v in reference.state_dict().items()}, SEED)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    model = FCNResNet(20, shape, aux_loss=False)
    load_state_dict(model, seeded_state_dict(torch_shapes(model, fcn_resnet_table), SEED), table=fcn_resnet_table)

    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]

    def run_torch(image):
        with torch.inference_mode():
            x = (torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
            logits = reference(x)["out"]
            probabilities = torch.softmax(logits, dim=1)
            return logits, probabilities.argmax(1)

    detect = tf.function(lambda images: model.detect(tf.cast(images, tf.float32)),
                         input_signature=[tf.TensorSpec((None, *shape, 3), tf.uint8)])
    logits_fn = tf.function(lambda images: model(tf.cast(images, tf.float32))["logits"])

    def run_kdet(image):
        return {k: v.numpy() for k, v in detect(tf.constant(image)).items()}

    image = np.random.default_rng(0).integers(0, 256, (1, *shape, 3), dtype=np.uint8)
    torch_logits, torch_masks = run_torch(image)
    ours = run_kdet(image)
    notes = {"max_logit_difference": float(np.abs(logits_fn(tf.constant(image)).numpy() -
                                                 torch_logits.numpy().transpose(0, 2, 3, 1)).max()),
             "mask_agreement": float((ours["masks"] == torch_masks.numpy()).mean())}
    contenders = {"kdet_keras": lambda: run_kdet(image), "torchvision": lambda: run_torch(image)}
    calls = {"kdet_keras": f"tf.function(model.detect) on uint8 [1, {size}, {size}, 3] (logits, softmax, argmax)",
             "torchvision": "normalise + model(x)['out'] + softmax + argmax under inference_mode"}
    variants, variant_calls = kdet_variants(model, image, notes, export=export)
    contenders.update(variants)
    calls.update(variant_calls)
    return {"input": f"{size}x{size}", "contenders": contenders, "calls": calls, "notes": notes,
            "model": model, "reference": reference, "image": image}  # the last three for profile_stages.py


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--export", action="store_true", help="also time kdet's SavedModel and TFLite")
    args = parser.parse_args()
    pair = speed_pair(args.size, export=args.export)
    result = round_robin(pair["contenders"], rounds=args.runs, warmup=args.warmup, reference="torchvision")
    extra = {"size": args.size, "runs": args.runs, "batch": 1}
    for name, timing in result["contenders"].items():
        emit(f"seg_twin/fcn_resnet50/{name}/median_latency", timing["median_ms"], "ms", min_ms=timing["min_ms"],
             max_ms=timing["max_ms"], **extra)
    for name, ratio in result["ratios"].items():
        emit(f"seg_twin/fcn_resnet50/{name}_over_torchvision", ratio["median"], "x", min=ratio["min"],
             max=ratio["max"], **extra)
    emit("seg_twin/fcn_resnet50/max_logit_difference", pair["notes"]["max_logit_difference"], "abs")
    emit("seg_twin/fcn_resnet50/mask_agreement", pair["notes"]["mask_agreement"], "fraction")


if __name__ == "__main__":
    main()
