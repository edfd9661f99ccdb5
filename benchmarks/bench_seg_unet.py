"""U-Net on the stardist nuclei, with and without the border weights: instance AP@0.5 and merged touching nuclei.

    python benchmarks/bench_seg_unet.py                    # 500 steps of batch 4 per setting, seed 0
    python benchmarks/bench_seg_unet.py --steps 300 --seeds 0 1

Data (../shared/data/stardist_nuclei, one 512 x 512 16-bit image, 125 nuclei): training = the 128 x 128 tiles on a
64 px grid that stay clear of the held-out region, the bottom-left 192 x 192 (27 nuclei, where most touching
pairs are). Targets: nucleus / background, with the pixels where two nuclei touch set to background (the gap the
network must learn, kdet.data.label_image.semantic_from_instances).

Both runs: the paper's valid U-Net (3 pools here, 16..128 channels, BN), median-frequency class weights w_c, flips
+ elastic deformation (3 x 3 grid, sigma 10 px), Adam 1e-3, the same steps and seed. The only difference is the
border term w0 exp(-(d1 + d2)^2 / 2 sigma^2) (w0 = 10, sigma = 5) of the loss weights. Prediction: overlap-tile
over the held-out image (mirrored at its border), argmax, 4-connected components (components under `--min-size`
pixels dropped), then kdet.eval.semantic.instance_metrics against the true nuclei of the region.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from common import train_run
from kdet.data.label_image import load_instance_tiles, read_label_image
from kdet.eval.semantic import connected_components, instance_metrics
from kdet.models.segmentation_base import predict_tiled

NUCLEI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stardist_nuclei"
HOLDOUT = (320, 0, 512, 192)
TILE = (128, 128)


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": float(f"{float(value):.5g}"), "unit": unit, **extra}), flush=True)


def instances_from_prediction(mask, min_size):
    components = connected_components(mask == 1)
    sizes = np.bincount(components.ravel())
    small = np.nonzero(sizes < min_size)[0]
    components[np.isin(components, small[small > 0])] = 0
    return components


def run(border_weights, test_image, test_instances, steps, batch, seed, min_size):
    """U-Net trained by kdet.train on the nuclei tiles (median-frequency weights via model.adapt, flips + elastic
    deformation from the config), then overlap-tile prediction of the held-out region."""
    config = {"model": {"name": "unet", "num_classes": 1, "image_size": list(TILE),
                        "args": {"widths": [16, 32, 64, 128], "padding": "valid", "batch_norm": True, "dropout": 0.3,
                                 "border_weights": border_weights, "class_weights": "median"}},
              "data": {"format": "label_image", "path": str(NUCLEI), "train_split": "train", "val_split": "",
                       "test_split": "test", "options": {"tile_size": TILE[0], "stride": 64, "holdout": list(HOLDOUT)},
                       "augment": {"flip": True, "scale_jitter": [1.0, 1.0], "color_jitter": 0.0, "elastic": 10.0}},
              "train": {"epochs": 1, "steps_per_epoch": steps, "batch_size": batch, "learning_rate": 1e-3,
                        "optimizer": "adam", "seed": seed}}
    model, config, stats = train_run(config, (), f"unet_{'border' if border_weights else 'plain'}_seed{seed}")
    prediction = predict_tiled(model, test_image, overlap=8)["masks"]
    scores = instance_metrics(instances_from_prediction(prediction, min_size), test_instances)
    truth = test_instances > 0
    foreground_iou = np.sum((prediction == 1) & truth) / np.sum((prediction == 1) | truth)
    tag = f"seg_unet/{'border_weights' if border_weights else 'no_border_weights'}/seed{seed}"
    budget = {"steps": steps, "batch": batch, "tile": list(TILE)}
    emit(f"{tag}/instance_AP50", scores["AP50"], "TP/(TP+FP+FN)", **budget)
    emit(f"{tag}/merged_components", scores["merged"], "count", num_gt=scores["num_gt"], num_pred=scores["num_pred"])
    emit(f"{tag}/matched_nuclei", scores["tp"], "count", num_gt=scores["num_gt"])
    emit(f"{tag}/foreground_IoU", foreground_iou, "IoU")
    emit(f"{tag}/final_train_loss", stats["final_loss"], "weighted nats")
    emit(f"{tag}/train_time", stats["wall_seconds"], "s")
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--min-size", type=int, default=10, help="drop predicted components smaller than this (px)")
    args = parser.parse_args()
    if not NUCLEI.is_dir():
        sys.exit(f"nuclei data not found at {NUCLEI}")
    image, labels = NUCLEI / "img2d.tif", NUCLEI / "mask2d.tif"
    train = load_instance_tiles(image, labels, "train", tile_size=TILE[0], stride=64, holdout=HOLDOUT)
    test = load_instance_tiles(image, labels, "test", holdout=HOLDOUT).records[0]
    y0, x0, y1, x1 = HOLDOUT
    test_instances = read_label_image(labels)[y0:y1, x0:x1]
    truth = instance_metrics(test_instances, test_instances)
    ground = instance_metrics(connected_components(test.segmentation == 1), test_instances)
    emit("seg_unet/holdout_nuclei", truth["num_gt"], "count", train_tiles=len(train))
    emit("seg_unet/perfect_semantic_mask/instance_AP50", ground["AP50"], "TP/(TP+FP+FN)")  # the ceiling
    emit("seg_unet/no_gaps_mask/merged_components", instance_metrics(
        connected_components(test_instances > 0), test_instances)["merged"], "count")  # what gaps are for
    for seed in args.seeds:
        for border_weights in (False, True):
            run(border_weights, test.image, test_instances, args.steps, args.batch, seed, args.min_size)


if __name__ == "__main__":
    main()
