"""Generate tests/fixtures/retinanet_twin.npz: torchvision's retinanet_resnet50_fpn on seeded weights.

Needs torch + torchvision (never a kdet dependency). Run it in the scratch venv that sees the system packages:

    python3 -m venv --system-site-packages /tmp/tvenv
    /tmp/tvenv/bin/pip install "torch==2.14.1" "torchvision==0.29.1"
    /tmp/tvenv/bin/python tests/reference/make_retinanet_twin_fixtures.py

No weights are stored: both sides build them with kdet.convert.torchvision.seeded_state_dict(shapes, WEIGHT_SEED)
(numpy only), then the class output conv is rescaled (CLS_WEIGHT_SCALE, CLS_BIAS, stored in the fixture) so the
random-weight scores spread around the 0.05 threshold and NMS has real work. The fixture holds the input images,
a channel slice of every backbone / FPN level (and of a bare resnet18's C2-C5), a subsample of the head outputs and anchors, and the final
detections, all converted to kdet's conventions (NHWC, yxyx, delta order ty, tx, th, tw).
"""
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models.detection import retinanet_resnet50_fpn

from kdet.convert.torchvision import seeded_state_dict

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "retinanet_twin.npz"
IMAGE_SIZE = (160, 224)  # a multiple of 32 (torchvision pads to 32) but not of 128: P7 cells are 80 x 112 px
NUM_CLASSES = 91
WEIGHT_SEED = 8
CLS_WEIGHT_SCALE = 3.0
CLS_BIAS = -4.0
FEATURE_CHANNELS = 8  # channels kept per feature level
ANCHOR_STRIDE = 23    # every 23rd anchor's head outputs are kept


def smooth_images(rng, count, height, width):
    """uint8 images with structure at several scales (random-init nets turn pure noise into flat features)."""
    coarse = rng.uniform(0, 255, (count, 3, height // 16 + 1, width // 16 + 1)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(height, width), mode="bilinear",
                                         align_corners=False).numpy()
    images = up + rng.normal(0, 20, up.shape)
    return np.clip(images, 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def twin_state(model):
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = seeded_state_dict(shapes, WEIGHT_SEED)
    state["head.classification_head.cls_logits.weight"] *= CLS_WEIGHT_SCALE
    state["head.classification_head.cls_logits.bias"][:] = CLS_BIAS
    return shapes, state


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def yxyx(boxes):
    return boxes[..., [1, 0, 3, 2]]


def resnet18_twin(data, inputs):
    """A bare torchvision resnet18 (BasicBlock path) on the same images, normalised by (x - 0.5) / 0.25."""
    resnet = torchvision.models.resnet18(weights=None).eval()
    shapes = {k: tuple(v.shape) for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    resnet.load_state_dict({k: torch.from_numpy(v) for k, v in seeded_state_dict(shapes, WEIGHT_SEED).items()},
                           strict=False)
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1((inputs - 0.5) / 0.25))))
    for level, layer in zip((2, 3, 4, 5), (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)):
        x = layer(x)
        data[f"resnet18_C{level}"] = nhwc(x[:, :FEATURE_CHANNELS])


def main():
    torch.manual_seed(0)
    height, width = IMAGE_SIZE
    # min_size / max_size equal to the image size: the transform's resize is the identity, so kdet (which takes the
    # image at its network size) and torchvision see the same pixels.
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                   min_size=height, max_size=width, detections_per_img=100).eval()
    shapes, state = twin_state(model)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    missing = [k for k in shapes if k not in state and not k.endswith("num_batches_tracked")]
    assert not missing, missing

    images = smooth_images(np.random.default_rng(WEIGHT_SEED), 2, height, width)
    inputs = [torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255.0) for image in images]
    data = {"versions": np.array([torch.__version__, torchvision.__version__]), "images": images,
            "weight_seed": np.int64(WEIGHT_SEED), "cls_weight_scale": np.float32(CLS_WEIGHT_SCALE),
            "cls_bias": np.float32(CLS_BIAS), "num_classes": np.int64(NUM_CLASSES),
            "torch_names": np.array(list(shapes)), "torch_shapes": np.array([str(list(s)) for s in shapes.values()])}
    with torch.no_grad():
        image_list, _ = model.transform(inputs)
        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        manual = torch.stack([(x - mean) / std for x in inputs])
        assert image_list.tensors.shape == manual.shape and torch.allclose(image_list.tensors, manual, atol=1e-6)
        body = model.backbone.body(image_list.tensors)
        for name, level in zip(body, (3, 4, 5)):
            data[f"C{level}"] = nhwc(body[name][:, :FEATURE_CHANNELS])
        pyramid = model.backbone.fpn(body)
        for name, level in zip(pyramid, (3, 4, 5, 6, 7)):
            data[f"P{level}"] = nhwc(pyramid[name][:, :FEATURE_CHANNELS])
        features = list(pyramid.values())
        head = model.head(features)
        anchors = model.anchor_generator(image_list, features)[0]
        keep = np.arange(0, anchors.shape[0], ANCHOR_STRIDE)
        data["anchor_index"] = keep
        data["anchors"] = yxyx(anchors.numpy()[keep])
        data["num_anchors"] = np.int64(anchors.shape[0])
        data["cls_logits"] = head["cls_logits"].numpy()[:, keep]
        data["box_regression"] = head["bbox_regression"].numpy()[:, keep][..., [1, 0, 3, 2]]
        detections = model(inputs)
        resnet18_twin(data, torch.stack(inputs))
    scores = torch.sigmoid(head["cls_logits"]).numpy()
    print("candidates above 0.05 per image:", (scores > 0.05).sum(axis=(1, 2)))
    for i, det in enumerate(detections):
        data[f"det{i}_boxes"] = yxyx(det["boxes"].numpy())
        data[f"det{i}_scores"] = det["scores"].numpy()
        data[f"det{i}_labels"] = det["labels"].numpy().astype(np.int32)
        print(f"image {i}: {len(det['boxes'])} detections, scores {det['scores'][:3].numpy()} ... "
              f"{det['scores'][-3:].numpy()}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
