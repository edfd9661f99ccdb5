"""torchvision's side of benchmarks/bench_learning_efficiency.py: the Faster R-CNN of a kdet config (ResNet + FPN
trunk) built from torchvision's parts, trained for a fixed number of steps on the batches of kdet's own pipeline, and
scored with kdet's evaluator. Runs in the scratch venv (torch + TensorFlow + kdet's deps):

    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/learneff_torchvision.py --seed 0 --steps 400 \
        --set train.learning_rate=0.01 ...   (the same --set list the kdet side gets)

Same as kdet's run by construction (everything is read from the one kdet config): trunk (resnet<depth>,
weights=None, all 5 layers trainable, `--norm` BatchNorm2d = fasterrcnn_resnet50_fpn's choice without weights, or
FrozenBatchNorm2d = resnet_fpn_backbone's default), FPN width, anchors, RPN / RoI numbers, fc6 / fc7 width, image
size (GeneralizedRCNNTransform min/max size = the network size: no resize), the training batches (kdet's
`make_tf_dataset` with the config's augmentation and seed), SGD with momentum 0.9 and Keras' weight decay
(p <- p - lr * wd * p every step, not torch's coupled L2 that momentum amplifies), no warm-up (kdet's recipe has none).
Evaluation: kdet.eval.detection.detect_dataset on a runner that turns torchvision's outputs into kdet's detection
dict, then evaluate_detections (pycocotools COCO AP + VOC mAP) on the test split. Prints one JSON line.
"""
import argparse
import json
import time

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from kdet.build import load_split
from kdet.config import load_config
from kdet.data.pipeline import make_tf_dataset
from kdet.eval.detection import detect_dataset, evaluate_detections

NORMS = {"batchnorm": nn.BatchNorm2d, "frozen": misc_nn_ops.FrozenBatchNorm2d}


def build_twin(config, norm="batchnorm"):
    """The torchvision Faster R-CNN with the config's numbers (module docstring); labels 1..K, 0 background."""
    args, (height, width) = config.model.args, config.model.image_size
    if args.get("backbone", "resnet_fpn") != "resnet_fpn" or args.get("base_width", 64) != 64:
        raise ValueError("the torchvision twin needs backbone resnet_fpn with base_width 64 (torchvision's widths)")
    trunk = torchvision.models.resnet.__dict__[f"resnet{args['depth']}"](weights=None, norm_layer=NORMS[norm])
    stage2 = trunk.inplanes // 8  # what resnet_fpn_backbone does, with the config's FPN width instead of 256
    fpn_channels = args.get("fpn_channels", 256)
    backbone = BackboneWithFPN(trunk, {f"layer{k}": str(k - 1) for k in (1, 2, 3, 4)},
                               [stage2 * 2 ** (k - 1) for k in (1, 2, 3, 4)], fpn_channels,
                               extra_blocks=LastLevelMaxPool())
    sizes = tuple(tuple(level) for level in args["anchor_sizes"])
    ratios = (tuple(args.get("aspect_ratios", (0.5, 1.0, 2.0))),) * len(sizes)
    representation = args.get("representation_size", 1024)
    num_classes = config.model.num_classes + 1
    return FasterRCNN(
        backbone, num_classes=None, min_size=min(height, width), max_size=max(height, width),
        rpn_anchor_generator=AnchorGenerator(sizes, ratios),
        rpn_pre_nms_top_n_train=args.get("rpn_pre_nms_top_n_train", 2000),
        rpn_pre_nms_top_n_test=args.get("rpn_pre_nms_top_n_test", 1000),
        rpn_post_nms_top_n_train=args.get("rpn_post_nms_top_n_train", 2000),
        rpn_post_nms_top_n_test=args.get("rpn_post_nms_top_n_test", 1000),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        box_batch_size_per_image=args.get("box_batch_size_per_image", 512),
        box_score_thresh=args.get("box_score_threshold", 0.05), box_detections_per_img=config.model.max_detections)


def kdet_box_head_init(model):
    """A controlled change: kdet's box head initialisation on torchvision's model (fc6 / fc7 Glorot uniform, the
    predictor normal(0.01) / normal(0.001), biases 0) instead of nn.Linear's default."""
    heads = model.roi_heads
    with torch.no_grad():
        for layer in (heads.box_head.fc6, heads.box_head.fc7):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        for layer, std in ((heads.box_predictor.cls_score, 0.01), (heads.box_predictor.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)


def torch_batch(batch):
    """A kdet training batch -> (images [B, 3, H, W] 0..1, torchvision targets: xyxy boxes, labels 1..K).
    Padding rows and degenerate boxes (BCCD has zero-area clicks; kdet ignores them too) are dropped."""
    images = torch.from_numpy(batch["images"].numpy()).permute(0, 3, 1, 2) / 255.0
    targets = []
    for boxes, labels in zip(batch["bounding_boxes"]["boxes"].numpy(), batch["bounding_boxes"]["labels"].numpy()):
        keep = (labels >= 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        xyxy = boxes[keep][:, [1, 0, 3, 2]]
        targets.append({"boxes": torch.from_numpy(np.ascontiguousarray(xyxy, np.float32)),
                        "labels": torch.from_numpy(labels[keep].astype(np.int64) + 1)})
    return images, targets


def train(model, config, steps, seed):
    """`steps` SGD steps on kdet's training batches (the config's batch size, augmentation and seed)."""
    t = config.train
    data = load_split(config, "train")
    batches = make_tf_dataset(data, tuple(config.model.image_size), t.batch_size, training=True,
                              augment=config.data.augment, resize=config.data.resize, seed=seed,
                              drop_remainder=True).repeat()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=t.learning_rate, momentum=0.9)
    model.train()
    losses, start = [], time.perf_counter()
    for batch in batches.take(steps):
        images, targets = torch_batch(batch)
        loss = sum(model(list(images), targets).values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"torchvision loss is {float(loss)} at step {len(losses)}")
        optimizer.zero_grad()
        loss.backward()
        with torch.no_grad():  # Keras' weight decay: decoupled from the momentum, scaled by the learning rate
            for p in params:
                p.mul_(1.0 - t.learning_rate * t.weight_decay)
        optimizer.step()
        losses.append(float(loss.detach()))
    return {"steps": len(losses), "wall_seconds": round(time.perf_counter() - start),
            "final_loss": round(float(np.mean(losses[-20:])), 4)}


def runner(model):
    """uint8 images [B, H, W, 3] -> kdet's detection dict (yxyx boxes in input pixels, classes 0-based, padded)."""
    model.eval()

    def run(images):
        with torch.no_grad():
            outputs = model(list(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0))
        rows = max(1, max(len(o["scores"]) for o in outputs))
        result = {"boxes": np.zeros((len(outputs), rows, 4), np.float32),
                  "scores": np.zeros((len(outputs), rows), np.float32),
                  "classes": np.zeros((len(outputs), rows), np.int32),
                  "num_detections": np.zeros(len(outputs), np.int32)}
        for i, o in enumerate(outputs):
            n = len(o["scores"])
            result["boxes"][i, :n] = o["boxes"].numpy()[:, [1, 0, 3, 2]]
            result["scores"][i, :n] = o["scores"].numpy()
            result["classes"][i, :n] = o["labels"].numpy() - 1
            result["num_detections"][i] = n
        return result
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/faster_rcnn_r18_fpn_bccd.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--norm", choices=sorted(NORMS), default="batchnorm")
    parser.add_argument("--init", choices=["torchvision", "kdet"], default="torchvision",
                        help="box head initialisation: nn.Linear's default, or kdet's (kdet_box_head_init)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = load_config(args.config, args.overrides)
    model = build_twin(config, args.norm)
    if args.init == "kdet":
        kdet_box_head_init(model)
    stats = train(model, config, args.steps, args.seed)
    test = load_split(config, "test")
    results = evaluate_detections(test, detect_dataset(runner(model), test, batch_size=8, resize=config.data.resize,
                                                       progress=False, image_size=config.model.image_size))
    print(json.dumps({"side": "torchvision", "seed": args.seed, "norm": args.norm, "init": args.init, "AP": round(results["AP"], 4),
                      "AP50": round(results["AP50"], 4), "mAP50": round(results["mAP50"], 4), **stats,
                      "batch_size": config.train.batch_size, "image_size": list(config.model.image_size)}),
          flush=True)


if __name__ == "__main__":
    main()
