"""mIoU on held-out shapes: FCN-32s vs FCN-16s vs FCN-8s, and the encoder-decoder with each unpooling, same budget.

    python benchmarks/bench_seg_accuracy.py                     # all 8 models, 400 steps of batch 8 each
    python benchmarks/bench_seg_accuracy.py --models fcn8s max --steps 200

Every model trains from scratch on the same shapes (train split, 96 x 96, 0 = background + 3 classes) for the same
number of steps with the same optimizer and seed, then is scored on 200 held-out images (shapes test split) with
kdet.eval.semantic.evaluate_semantic. The FCNs share one narrow VGG-16 (BN); the encoder-decoders share one
encoder and differ only in how the decoder upsamples. Prints one JSON line per figure (mIoU, pixel accuracy, train
seconds). The paper's finding to look for: FCN-8s > 16s > 32s, because the skips bring back the detail that a
stride-32 score map cannot hold.
"""
import argparse
import json
import time

import keras

from kdet.data.io import load_dataset
from kdet.data.pipeline import make_tf_dataset
from kdet.eval.semantic import evaluate_semantic
from kdet.models.fcn import FCN
from kdet.models.segnet import UNPOOLING, EncoderDecoder

SIZE = (96, 96)
SHAPES = {"image_size": list(SIZE), "max_objects": 4, "min_size": 0.2, "max_size": 0.5}
FCN_ARGS = dict(widths=(16, 32, 64, 128, 128), batch_norm=True, fc_width=256, fc_kernel=3, dropout=0.0)
ENCODER_ARGS = dict(widths=(16, 32, 64, 128, 128), convs_per_stage=(2, 2, 3, 3, 3))
MODELS = {
    "fcn32s": lambda: FCN(3, SIZE, variant="32s", **FCN_ARGS),
    "fcn16s": lambda: FCN(3, SIZE, variant="16s", **FCN_ARGS),
    "fcn8s": lambda: FCN(3, SIZE, variant="8s", **FCN_ARGS),
    **{name: (lambda name=name: EncoderDecoder(3, SIZE, unpooling=name, **ENCODER_ARGS)) for name in UNPOOLING},
}


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": float(f"{float(value):.5g}"), "unit": unit, **extra}), flush=True)


def run(name, train, test, steps, batch_size, learning_rate, seed):
    keras.utils.set_random_seed(seed)
    model = MODELS[name]()
    ds = make_tf_dataset(train, SIZE, batch_size, training=True, with_segmentation=True, seed=seed,
                         augment=None).map(lambda b: (b["images"], model.encode_targets(b))).repeat()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    start = time.perf_counter()
    history = model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0).history
    seconds = time.perf_counter() - start
    scores = evaluate_semantic(model, test, batch_size=16, progress=False)
    budget = {"steps": steps, "batch": batch_size, "image_size": list(SIZE)}
    emit(f"seg_accuracy/{name}/mIoU", scores["mIoU"], "IoU", **budget)
    emit(f"seg_accuracy/{name}/pixel_accuracy", scores["pixel_accuracy"], "fraction", **budget)
    emit(f"seg_accuracy/{name}/final_train_loss", history["loss"][-1], "nats")
    emit(f"seg_accuracy/{name}/train_time", seconds, "s", params=model.count_params())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=1500)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train = load_dataset("shapes", split="train", num_images=args.train_images, **SHAPES)
    test = load_dataset("shapes", split="test", num_images=args.test_images, **SHAPES)
    for name in args.models:
        run(name, train, test, args.steps, args.batch, args.learning_rate, args.seed)


if __name__ == "__main__":
    main()
