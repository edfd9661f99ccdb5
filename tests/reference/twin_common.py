"""Helpers shared by the torchvision twin-fixture scripts (make_*_twin_fixtures.py) in this folder.

Needs torch + torchvision, like the scripts themselves (never a kdet dependency). The scripts are run as
`python tests/reference/make_X.py` from the repo root and put this folder on sys.path to import it.
Every helper only moves or converts what torchvision computes into kdet's conventions (NHWC, yxyx,
deltas ty, tx, th, tw); what a fixture holds and how its weights are tweaked stays in each script.
"""
import numpy as np
import torch
import torchvision

from kdet.convert.torchvision import seeded_state_dict


def smooth_images(rng, count, height, width, cell=16, noise=20.0):
    """uint8 images [count, height, width, 3] with structure at several scales.

    Random-init nets turn pure noise into flat features, so the images are a bilinear upsampling of a coarse
    uniform grid (one sample per `cell` px) plus Gaussian noise of std `noise`. The draws (uniform, then normal)
    are in a fixed order: a fixture built from the same rng state gets the same pixels.
    """
    coarse = rng.uniform(0, 255, (count, 3, height // cell + 1, width // cell + 1)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(height, width), mode="bilinear",
                                         align_corners=False).numpy()
    return np.clip(up + rng.normal(0, noise, up.shape), 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def torch_inputs(images):
    """images: uint8 [B, H, W, 3] -> the list of float [3, H, W] 0..1 tensors torchvision detectors take."""
    return [torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255.0) for image in images]


def nhwc(t):
    """A torch tensor [B, C, H, W] -> numpy [B, H, W, C]."""
    return t.detach().numpy().transpose(0, 2, 3, 1)


def yxyx(boxes):
    """Boxes or box deltas [..., 4] in torchvision's xyxy (dx, dy, dw, dh) order -> kdet's yxyx (dy, dx, dh, dw)."""
    return boxes[..., [1, 0, 3, 2]]


def seeded_state(model, weight_seed):
    """The model's state dict shapes {name: shape} and kdet's seeded numpy weights for them {name: array}.

    kdet's tests rebuild the same weights from the fixture's torch_names / torch_shapes and weight_seed, so
    no weights are stored. The caller may rescale entries of the returned state before load_state().
    """
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return shapes, seeded_state_dict(shapes, weight_seed)


def load_state(model, shapes, state):
    """Load numpy `state` into `model`; fails if a tensor other than BatchNorm's step counter was left at its init."""
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    missing = [k for k in shapes if k not in state and not k.endswith("num_batches_tracked")]
    assert not missing, missing


def fixture_header(shapes, weight_seed):
    """The entries every twin fixture holds: library versions, the weight seed, torchvision's state names / shapes."""
    return {"versions": np.array([torch.__version__, torchvision.__version__]),
            "weight_seed": np.int64(weight_seed), "torch_names": np.array(list(shapes)),
            "torch_shapes": np.array([str(list(s)) for s in shapes.values()])}


def feature_slices(prefix, features, levels, channels):
    """{f"{prefix}{level}": NHWC [B, H, W, channels]}: the first `channels` channels of each [B, C, H, W] feature.

    Only a slice is stored to keep the fixture small; a wrong conversion still shows in any channel.
    """
    return {f"{prefix}{level}": nhwc(feature[:, :channels]) for feature, level in zip(features, levels)}


def anchor_subsample(anchors, stride):
    """Every `stride`-th anchor of torchvision's [A, 4] xyxy anchors of one image, as kdet compares them.

    Returns (keep [A / stride] indices, {"anchor_index", "anchors" [A / stride, 4] yxyx, "num_anchors"}).
    """
    keep = np.arange(0, anchors.shape[0], stride)
    return keep, {"anchor_index": keep, "anchors": yxyx(anchors.numpy()[keep]),
                  "num_anchors": np.int64(anchors.shape[0])}


def dense_head_outputs(model, image_list, features, stride):
    """Run a dense detector's (RetinaNet, SSD) head and anchor generator; keep every `stride`-th anchor.

    features: the [B, C, H, W] maps the head reads. Returns (head, data): torchvision's raw head dict
    {"cls_logits": [B, A, K], "bbox_regression": [B, A, 4]} and the fixture entries anchor_subsample() gives plus
    {"cls_logits": [B, A / stride, K], "box_regression": [B, A / stride, 4] (ty, tx, th, tw)}.
    """
    head = model.head(features)
    keep, data = anchor_subsample(model.anchor_generator(image_list, features)[0], stride)
    data["cls_logits"] = head["cls_logits"].numpy()[:, keep]
    data["box_regression"] = yxyx(head["bbox_regression"].numpy()[:, keep])
    return head, data


def detection_arrays(detections, label_offset=0):
    """torchvision's per-image detections -> {"det{i}_boxes" yxyx, "det{i}_scores", "det{i}_labels" int32}.

    label_offset is added to the labels (-1 for SSD, whose torchvision labels count the background class).
    Prints a one-line summary per image so a regenerated fixture can be judged at a glance.
    """
    data = {}
    for i, det in enumerate(detections):
        data[f"det{i}_boxes"] = yxyx(det["boxes"].numpy())
        data[f"det{i}_scores"] = det["scores"].numpy()
        data[f"det{i}_labels"] = det["labels"].numpy().astype(np.int32) + label_offset
        print(f"image {i}: {len(det['boxes'])} detections, scores {det['scores'][:3].numpy()} ... "
              f"{det['scores'][-3:].numpy()}, labels {np.unique(det['labels'].numpy()).size} distinct")
    return data


def write_fixture(path, data):
    """Write `data` to the .npz at `path` (compressed), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **data)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
