"""One training step, stage by stage, per model, next to torchvision's train step for the twins; and the input
pipeline's image rate against the step's (issue 18, item 5).

    PYTHONPATH=. /work/torchvenv/bin/python benchmarks/profile_train_step.py [--only retinanet ssd300] [--rounds 5]

Per model, on one real BCCD batch from the training recipe's own tf.data (kdet.training.recipe.training_dataset:
augmentation, the model's data needs, the Keras fit layout), each stage is its own tf.function, warmed up, and all
are timed round-robin (benchmarks/speed_common.round_robin) with torchvision's step in the same rounds:
  kdet_forward               model(images, training=True)
  kdet_targets               encode_targets(standardize_targets(y)): anchor matching / grid targets
  kdet_forward_targets_loss  forward + targets + loss_from_targets (Detector.compute_loss)
  kdet_train_step            Keras' compiled train step (`train_on_batch`): the above + gradient + optimizer apply
  torchvision_forward_loss   model(images, targets) in train mode (its target assignment is inside)
  torchvision_train_step     the same + backward + optimizer step
Derived per model, each the median over rounds of its per-round value (stages of one round run within seconds of
each other, under the same load): loss = forward_targets_loss - forward - targets; gradient_and_apply = train_step -
forward_targets_loss; torchvision's gradient_and_apply = its train_step - forward_loss; and per round, the
kdet / torchvision ratio of forward + targets + loss, of gradient + apply and of the train step (median, min-max).
Both sides: random initialisation, SGD(1e-3, momentum 0.9), the same batch (boxes with label -1 dropped for
torchvision, labels + 1 where its twin has a background class), the same threads. Faster R-CNN and RetinaNet:
torchvision's transform set to min_size = max_size = the image size (no resize); SSD300 resizes to 300.

Input pipeline: the recipe's training dataset for the model alone, `--pipeline-batches` batches after 2 warm-up,
images/s, against the step's images/s (batch / kdet_train_step median); goal >= 2x. Written as JSON (default
runs/bench/profile_train_step.json) with the machine and the load average at the start and end of every model.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
try:  # torch before TensorFlow initialises (importing torchvision after it segfaults)
    import torch
    import torchvision.models.detection as tv_detection
except ImportError:
    torch = None

THREADS = int(os.environ.get("KDET_BENCH_THREADS", "2"))
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
from speed_common import load_average, machine, round_robin, spread  # noqa: E402

from kdet.build import load_split  # noqa: E402
from kdet.config import load_config  # noqa: E402
from kdet.ops.images import image_hw  # noqa: E402
from kdet.training import recipe  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NUM_CLASSES = 3  # BCCD: RBC, WBC, platelets
SGD = {"lr": 1e-3, "momentum": 0.9}  # both sides' optimizer
DATA = (REPO / "../shared/data/bccd/BCCD").resolve()


def kdet_models():
    """{name: (config for the data, image size, batch, model builder(config), torchvision twin or None)}: the twins
    at torchvision's widths, YOLOv2 and CenterNet R18 as their BCCD configs build them (multi-scale off)."""
    from kdet.build import build_model
    from kdet.models import FasterRCNN, RetinaNet, SSD
    return {
        "faster_rcnn": ("faster_rcnn_r50_fpn_bccd.yaml", 512, 2,
                        lambda config: FasterRCNN(NUM_CLASSES, image_size=(512, 512)), "fasterrcnn_resnet50_fpn"),
        "retinanet": ("retinanet_r50_fpn_bccd.yaml", 512, 2,
                      lambda config: RetinaNet(NUM_CLASSES, image_size=(512, 512)), "retinanet_resnet50_fpn"),
        "ssd300": ("ssd300_bccd.yaml", 300, 2, lambda config: SSD(NUM_CLASSES, image_size=(300, 300)), "ssd300_vgg16"),
        "yolov2": ("yolov2_bccd.yaml", 416, 2, build_model, None),
        "centernet_r18": ("centernet_r18_bccd.yaml", 512, 2, build_model, None),
    }


def background_class(name):
    """1 when torchvision's twin has a background class 0 (softmax heads: Faster R-CNN, SSD), else 0 (RetinaNet's
    sigmoid focal loss has none, like kdet's: the same head widths on both sides)."""
    return 0 if name.startswith("retinanet") else 1


def torchvision_model(name, size):
    """torchvision's twin in train mode, random init, NUM_CLASSES (+ background) outputs."""
    kwargs = {"weights": None, "weights_backbone": None, "num_classes": NUM_CLASSES + background_class(name)}
    if name != "ssd300_vgg16":
        kwargs.update(min_size=size, max_size=size)
    return getattr(tv_detection, name)(**kwargs).train()


def torchvision_step(name, size, x, y):
    """-> (forward + loss, full train step, the torchvision model) on the batch (x, y) of the recipe; the steps are
    zero-argument callables, the train step returns the loss as a float."""
    model = torchvision_model(name, size)
    optimizer = torch.optim.SGD(model.parameters(), **SGD)
    images = [torch.from_numpy(image.transpose(2, 0, 1) / 255.0).float() for image in np.asarray(x)]
    targets = []
    for boxes, labels in zip(np.asarray(y["boxes"]), np.asarray(y["labels"])):
        keep = labels >= 0
        targets.append({"boxes": torch.from_numpy(boxes[keep][:, [1, 0, 3, 2]]).float(),  # yxyx -> xyxy
                        "labels": torch.from_numpy(labels[keep] + background_class(name)).long()})

    def forward_loss():
        return sum(model(images, targets).values())

    def train_step():
        loss = forward_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss)
    return forward_loss, train_step, model


def kdet_train_step(model, x, y):
    """Compile the kdet model with the benchmark's SGD; -> Keras' compiled train step on (x, y) as a zero-argument
    callable returning the loss as a float (`train_on_batch`: forward, targets, loss, gradient, optimizer apply)."""
    model.compile(optimizer=keras.optimizers.SGD(SGD["lr"], momentum=SGD["momentum"]))
    x = tf.constant(x)
    y = {"boxes": tf.constant(y["boxes"]), "labels": tf.constant(y["labels"])}
    return lambda: float(model.train_on_batch(x, y, return_dict=True)["loss"])


def kdet_stages(model, x, y):
    """{stage: zero-argument callable} of the kdet model on the batch (x, y); the model is compiled here."""
    train_step = kdet_train_step(model, x, y)

    @tf.function
    def forward(images):
        return model(images, training=True)

    @tf.function
    def targets(images, boxes, labels):
        size = image_hw(images)
        return model.encode_targets(model.standardize_targets({"boxes": boxes, "labels": labels}, size), size)

    @tf.function
    def forward_targets_loss(images, boxes, labels):
        return model.compute_loss(images, {"boxes": boxes, "labels": labels}, model(images, training=True))

    x = tf.constant(x)
    boxes, labels = tf.constant(y["boxes"]), tf.constant(y["labels"])
    return {"kdet_forward": lambda: forward(x),
            "kdet_targets": lambda: targets(x, boxes, labels),
            "kdet_forward_targets_loss": lambda: forward_targets_loss(x, boxes, labels).numpy(),
            "kdet_train_step": train_step}


def pipeline_rate(dataset, batches):
    """images/s of the recipe's training dataset alone, after 2 warm-up batches."""
    iterator = iter(dataset)
    for _ in range(2):
        next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        x, _ = next(iterator)
        images += int((x["images"] if isinstance(x, dict) else x).shape[0])
    return images / (time.perf_counter() - start)


def prepare(name, data=DATA):
    """-> (the built kdet model, (x, y): its first training batch as numpy, the recipe's training dataset) for a
    model of kdet_models(), on the BCCD training split at `data`."""
    config_name, size, batch, make_model, _ = kdet_models()[name]
    overrides = [f"data.path={data}", f"model.image_size=[{size}, {size}]", f"train.batch_size={batch}"]
    if name == "yolov2":
        overrides.append("model.args.multiscale_sizes=[]")  # one input signature: the step at 416
    config = load_config(str(REPO / "configs" / config_name), overrides)
    model = make_model(config)
    model(tf.zeros([1, size, size, 3]))
    dataset, _ = recipe.training_dataset(model, config, load_split(config, "train"))
    x, y = next(iter(dataset))
    return model, (x.numpy(), {"boxes": y["boxes"].numpy(), "labels": y["labels"].numpy()}), dataset


def profile(name, spec, args):
    _, size, batch, _, twin = spec
    model, (x, y), dataset = prepare(name, args.data)
    load_start = load_average()
    rate = pipeline_rate(dataset, args.pipeline_batches)
    contenders = kdet_stages(model, x, y)
    if twin and torch is not None:
        forward_loss, train_step, _ = torchvision_step(twin, size, x, y)
        contenders.update(torchvision_forward_loss=forward_loss, torchvision_train_step=train_step)
    start = time.perf_counter()
    timing = round_robin(contenders, rounds=args.rounds, warmup=args.warmup,
                         reference="torchvision_train_step" if "torchvision_train_step" in contenders else None)
    t = {key: np.asarray(value["times_ms"]) for key, value in timing["contenders"].items()}

    def median(values):
        return round(float(np.median(values)), 1)
    derived = {"forward_ms": median(t["kdet_forward"]), "targets_ms": median(t["kdet_targets"]),
               "loss_ms": median(t["kdet_forward_targets_loss"] - t["kdet_forward"] - t["kdet_targets"]),
               "gradient_and_apply_ms": median(t["kdet_train_step"] - t["kdet_forward_targets_loss"]),
               "train_step_ms": median(t["kdet_train_step"])}
    step_rate = batch * 1000.0 / derived["train_step_ms"]
    versus = {}
    if timing["reference"]:
        derived["torchvision_gradient_and_apply_ms"] = median(t["torchvision_train_step"] -
                                                              t["torchvision_forward_loss"])
        versus = {"forward_targets_loss": spread(t["kdet_forward_targets_loss"] / t["torchvision_forward_loss"]),
                  "gradient_and_apply": spread((t["kdet_train_step"] - t["kdet_forward_targets_loss"]) /
                                               (t["torchvision_train_step"] - t["torchvision_forward_loss"])),
                  "train_step": spread(t["kdet_train_step"] / t["torchvision_train_step"])}
        versus = {stage: {key: round(value, 3) for key, value in ratio.items()} for stage, ratio in versus.items()}
    return {"input": f"BCCD batch {batch} at {size}x{size} (recipe pipeline, augmented)", "twin": twin,
            "model": f"{type(model).__name__}, {model.count_params()} parameters",
            "stages_ms": derived, "kdet_over_torchvision_per_round": versus,
            "pipeline_images_per_s": round(rate, 2), "step_images_per_s": round(step_rate, 2),
            "pipeline_over_step": round(rate / step_rate, 2), "timing_seconds": round(time.perf_counter() - start, 1),
            "load_average_start": load_start, "load_average_end": load_average(), **timing}


def main(argv=None):
    models = kdet_models()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(models))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pipeline-batches", type=int, default=20)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--output", default="runs/bench/profile_train_step.json",
                        help="JSON path (the committed run: benchmarks/results/profile_train_step.json)")
    args = parser.parse_args(argv)
    if torch is not None:
        torch.set_num_threads(THREADS)
    record = {"command": " ".join(["benchmarks/profile_train_step.py"] + (argv if argv is not None else sys.argv[1:])),
              "machine": machine(THREADS), "settings": {"rounds": args.rounds, "warmup": args.warmup}, "models": {}}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(models):
        print(f"[profile_train_step] {name}", flush=True)
        record["models"][name] = result = profile(name, models[name], args)
        print(json.dumps({"model": name, "stages_ms": result["stages_ms"],
                          "kdet_over_torchvision": result["kdet_over_torchvision_per_round"],
                          "pipeline_over_step": result["pipeline_over_step"]}), flush=True)
        record["machine"]["load_average_end"] = load_average()
        output.write_text(json.dumps(record, indent=1) + "\n")  # after every model: a crash keeps the rest
    print(f"[profile_train_step] wrote {output}", flush=True)


if __name__ == "__main__":
    main()
