"""mIoU on held-out shapes: FCN-32s vs FCN-16s vs FCN-8s, and the encoder-decoder with each unpooling, same budget.

    python benchmarks/bench_seg_accuracy.py                     # all 8 models, 400 steps of batch 8 each
    python benchmarks/bench_seg_accuracy.py --models fcn8s max --steps 200

Every model trains from scratch on the same shapes (train split, 96 x 96, 0 = background + 3 classes) for the same
number of steps with the same optimizer and seed through `kdet.train` (benchmarks/common.py), then is scored on 200
held-out images (shapes test split) with kdet.eval.semantic.evaluate_semantic. The FCNs share one narrow VGG-16 (BN); the encoder-decoders share one
encoder and differ only in how the decoder upsamples. Prints one JSON line per figure (mIoU, pixel accuracy, train
seconds). The paper's finding to look for: FCN-8s > 16s > 32s, because the skips bring back the detail that a
stride-32 score map cannot hold.
"""
import argparse

from common import emit, evaluate_run, train_run
from kdet.models.segnet import UNPOOLING

SIZE = [96, 96]
SHAPES = {"image_size": SIZE, "max_objects": 4, "min_size": 0.2, "max_size": 0.5}
FCN_ARGS = dict(widths=[16, 32, 64, 128, 128], batch_norm=True, fc_width=256, fc_kernel=3, dropout=0.0)
ENCODER_ARGS = dict(widths=[16, 32, 64, 128, 128], convs_per_stage=[2, 2, 3, 3, 3])
MODELS = {
    "fcn32s": ("fcn", dict(variant="32s", **FCN_ARGS)),
    "fcn16s": ("fcn", dict(variant="16s", **FCN_ARGS)),
    "fcn8s": ("fcn", dict(variant="8s", **FCN_ARGS)),
    **{name: ("segnet", dict(unpooling=name, **ENCODER_ARGS)) for name in UNPOOLING},
}


def run(name, steps, batch_size, learning_rate, seed, train_images, test_images):
    """One model trained by kdet.train for `steps` steps on the shapes train split, scored on the test split."""
    model_name, args = MODELS[name]
    config = {"model": {"name": model_name, "num_classes": 3, "image_size": SIZE, "args": args},
              "data": {"format": "shapes", "options": dict(SHAPES, num_images=train_images), "val_split": "",
                       "max_eval_images": test_images,
                       "augment": {"flip": False, "scale_jitter": [1.0, 1.0], "color_jitter": 0.0}},
              "train": {"epochs": 1, "steps_per_epoch": steps, "batch_size": batch_size,
                        "learning_rate": learning_rate, "optimizer": "adam", "seed": seed}}
    model, config, stats = train_run(config, (), f"seg_{name}")
    scores = evaluate_run(model, config)
    budget = {"steps": steps, "batch": batch_size, "image_size": SIZE}
    emit(f"seg_accuracy/{name}/mIoU", scores["mIoU"], "IoU", **budget)
    emit(f"seg_accuracy/{name}/pixel_accuracy", scores["pixel_accuracy"], "fraction", **budget)
    emit(f"seg_accuracy/{name}/final_train_loss", stats["final_loss"], "nats")
    emit(f"seg_accuracy/{name}/train_time", stats["wall_seconds"], "s", params=model.count_params())


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
    for name in args.models:
        run(name, args.steps, args.batch, args.learning_rate, args.seed, args.train_images, args.test_images)


if __name__ == "__main__":
    main()
