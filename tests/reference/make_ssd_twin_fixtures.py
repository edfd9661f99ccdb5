"""Generate tests/fixtures/ssd_twin.npz: torchvision's ssd300_vgg16 on seeded weights.

Needs torch + torchvision (never a kdet dependency):

    /tmp/tvenv/bin/python tests/reference/make_ssd_twin_fixtures.py

As for RetinaNet (make_retinanet_twin_fixtures.py), no weights are stored: both sides build them with
kdet.convert.torchvision.seeded_state_dict(shapes, WEIGHT_SEED); then the class predictors are rescaled
(CLS_WEIGHT_SCALE) and the background column's bias raised (BACKGROUND_BIAS), both stored in the fixture, so a
few hundred (box, class) scores clear the 0.01 threshold instead of every class of every box. The fixture holds
the input images, a channel slice of the six feature maps, a subsample of head outputs and default boxes, and the
final detections, in kdet's conventions (NHWC, yxyx, deltas ty, tx, th, tw, classes without background).
"""
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models.detection import ssd300_vgg16

from kdet.convert.torchvision import seeded_state_dict

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "ssd_twin.npz"
NUM_CLASSES = 91  # torchvision's count, background included
WEIGHT_SEED = 300
CLS_WEIGHT_SCALE = 1.0
BACKGROUND_BIAS = 8.5
FEATURE_CHANNELS = 8
ANCHOR_STRIDE = 29


def smooth_images(rng, count, size):
    coarse = rng.uniform(0, 255, (count, 3, size // 16 + 1, size // 16 + 1)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bilinear",
                                         align_corners=False).numpy()
    return np.clip(up + rng.normal(0, 6, up.shape), 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def twin_state(model):
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = seeded_state_dict(shapes, WEIGHT_SEED)
    for k in range(6):
        state[f"head.classification_head.module_list.{k}.weight"] *= CLS_WEIGHT_SCALE
        state[f"head.classification_head.module_list.{k}.bias"][::NUM_CLASSES] = BACKGROUND_BIAS
    return shapes, state


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def yxyx(boxes):
    return boxes[..., [1, 0, 3, 2]]


def main():
    torch.manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).eval()
    shapes, state = twin_state(model)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    missing = [k for k in shapes if k not in state and not k.endswith("num_batches_tracked")]
    assert not missing, missing

    images = smooth_images(np.random.default_rng(WEIGHT_SEED), 2, 300)
    inputs = [torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255.0) for image in images]
    data = {"versions": np.array([torch.__version__, torchvision.__version__]), "images": images,
            "weight_seed": np.int64(WEIGHT_SEED), "cls_weight_scale": np.float32(CLS_WEIGHT_SCALE),
            "background_bias": np.float32(BACKGROUND_BIAS), "num_classes": np.int64(NUM_CLASSES - 1),
            "torch_names": np.array(list(shapes)), "torch_shapes": np.array([str(list(s)) for s in shapes.values()])}
    with torch.no_grad():
        image_list, _ = model.transform(inputs)
        mean = torch.tensor([0.48235, 0.45882, 0.40784])[:, None, None]
        manual = torch.stack([(x - mean) * 255.0 for x in inputs])
        assert torch.allclose(image_list.tensors, manual, atol=1e-3), "the transform must be the identity resize"
        features = list(model.backbone(image_list.tensors).values())
        for k, feature in enumerate(features):
            data[f"F{k}"] = nhwc(feature[:, :FEATURE_CHANNELS])
        head = model.head(features)
        anchors = model.anchor_generator(image_list, features)[0]
        keep = np.arange(0, anchors.shape[0], ANCHOR_STRIDE)
        data["anchor_index"] = keep
        data["anchors"] = yxyx(anchors.numpy()[keep])
        data["num_anchors"] = np.int64(anchors.shape[0])
        data["cls_logits"] = head["cls_logits"].numpy()[:, keep]
        data["box_regression"] = head["bbox_regression"].numpy()[:, keep][..., [1, 0, 3, 2]]
        detections = model(inputs)
    scores = torch.softmax(head["cls_logits"], -1)[..., 1:].numpy()
    print("candidates above 0.01 per image:", (scores > 0.01).sum(axis=(1, 2)))
    for i, det in enumerate(detections):
        data[f"det{i}_boxes"] = yxyx(det["boxes"].numpy())
        data[f"det{i}_scores"] = det["scores"].numpy()
        data[f"det{i}_labels"] = det["labels"].numpy().astype(np.int32) - 1  # kdet classes have no background
        print(f"image {i}: {len(det['boxes'])} detections, scores {det['scores'][:3].numpy()} ... "
              f"{det['scores'][-3:].numpy()}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
