"""`kdet predict`: detections on image files, folders, globs or arrays, drawn and written as pictures + JSON.

    results = predict_images(model, ["photos/", "scans/*.png"], "out", class_names)
    results = predict_images(model, np_images)          # from Python: no files written without out_dir

Each image is resized to the size the model was trained at (`model.image_size`, as kdet's pipeline does), run
through the compiled `model.predict_on_batch` (one trace for every image), and its boxes (and instance masks) are
mapped back to the image's own pixels. Semantic models write colour overlays (kdet.eval.semantic.predict_files).
"""
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from kdet.data.augment import resize_image
from kdet.data.images import read_image
from kdet.inference.inputs import image_items
from kdet.errors import KdetError
from kdet.inference.visualize import draw_detections, draw_heatmap, rgb_uint8, save_picture
from kdet.jsonio import write_json

SAVE_FORMATS = ("auto", "png", "jpg")


def _resized(image, size, resize):
    element = resize_image({"images": tf.cast(image, tf.float32), "bounding_boxes": {
        "boxes": tf.zeros([0, 4]), "labels": tf.zeros([0], tf.int32)}}, size, resize)
    return element["images"].numpy(), np.tile(element["scale"].numpy(), 2)


def _grid_in_image(maps, scale, height, width, stride=1):
    """Maps [K, h, w] on the resized input's grid of `stride` pixels -> [K, H, W] on the image (nearest neighbour,
    through the same scale as the boxes: pixel (y, x) of the image is input pixel (y * sy, x * sx), in cell
    (y * sy // stride, x * sx // stride))."""
    rows = np.minimum((np.arange(height) + 0.5) * scale[0] / stride, maps.shape[1] - 1).astype(np.int64)
    cols = np.minimum((np.arange(width) + 0.5) * scale[1] / stride, maps.shape[2] - 1).astype(np.int64)
    return maps[:, rows][:, :, cols]


def check_heatmap_model(model):
    """Refuse models without heatmaps: `--heatmap` needs a `heatmaps(images) -> [B, h, w, C]` method (CenterNet)."""
    if not callable(getattr(model, "heatmaps", None)):
        raise KdetError(f"--heatmap: {type(model).__name__} has no heatmaps to draw (models with a "
                        f"`heatmaps(images)` method have them: CenterNet)")


def heatmap_in_image(model, image, resize="stretch"):
    """image uint8 [H, W, 3] -> the class-max heatmap [H, W] (0..1) on the image's own pixels: the max over classes
    of `model.heatmaps` on the resized input, each cell spread over the image pixels it covers."""
    check_heatmap_model(model)
    resized, scale = _resized(image, tuple(model.image_size), resize)
    heat = np.asarray(model.heatmaps(resized[None]))[0].max(axis=-1)      # [h, w]
    stride = getattr(model, "stride", resized.shape[0] / heat.shape[0])
    return _grid_in_image(heat[None], scale[:2], *image.shape[:2], stride=stride)[0]


def detect_image(model, image, score_threshold=0.3, resize="stretch"):
    """image uint8 [H, W, 3] -> {"boxes": [N, 4] yxyx in the image's pixels, "scores": [N], "classes": [N]
    (+ "masks": [N, H, W] uint8 for instance models)}, the detections scoring at least `score_threshold`."""
    resized, scale = _resized(image, tuple(model.image_size), resize)
    det = {k: np.asarray(v)[0] for k, v in model.predict_on_batch(resized[None]).items()}
    boxes = det["boxes"]
    if model.bounding_box_format != "yxyx":  # predict answers in the model's format; files say yxyx
        from kdet.ops import convert_format
        boxes = np.asarray(convert_format(boxes, model.bounding_box_format, "yxyx", *model.image_size))
    n = int(det["num_detections"])
    keep = det["scores"][:n] >= score_threshold
    found = {"boxes": boxes[:n][keep] / scale, "scores": det["scores"][:n][keep],
             "classes": det["classes"][:n][keep].astype(np.int64)}
    if "masks" in det:
        found["masks"] = _grid_in_image(det["masks"][:n][keep], scale[:2], *image.shape[:2]).astype(np.uint8)
    return found


def mask_rle(mask):
    """uint8 [H, W] -> COCO compressed RLE {"size": [H, W], "counts": str} (pycocotools' encoding)."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def predict_images(model, images, out_dir=None, class_names=None, score_threshold=0.3, resize="stretch",
                   save_images=True, save_json=True, save_format="auto", heatmap=False):
    """Detect objects in images: paths, folders, globs (`kdet.inference.inputs.image_items`) or arrays.

    With `out_dir`, writes per image <name>.png or .jpg (boxes, labels and masks drawn; save_format "auto" keeps
    JPEG for JPEG input) and <name>.json; names never collide. Returns one dict per image: {"image", "boxes" (yxyx
    in the image's own pixels), "scores", "classes", "names", "bounding_box_format": "yxyx", "milliseconds"}
    (+ "masks": COCO RLE per instance for instance models, + "picture" / "json" paths written).
    heatmap: also write <name>_heatmap.png, the class-max heatmap over the image (`heatmap_in_image`), beside the
    box picture ("heatmap_picture" in the result); only for models with heatmaps (CenterNet), others refuse.
    """
    if save_format not in SAVE_FORMATS:
        raise ValueError(f"save_format must be one of {SAVE_FORMATS}, got {save_format!r}")
    class_names = list(class_names or [str(i) for i in range(model.num_classes)])
    out = None if out_dir is None else Path(out_dir)
    if heatmap:
        check_heatmap_model(model)
    results = []
    for name, source in image_items(images):
        image = read_image(source) if isinstance(source, Path) else rgb_uint8(source)
        start = time.perf_counter()
        found = detect_image(model, image, score_threshold, resize)
        milliseconds = (time.perf_counter() - start) * 1000.0
        classes = found["classes"]
        result = {"image": str(source) if isinstance(source, Path) else name,
                  "boxes": found["boxes"].astype(float).round(2).tolist(),
                  "scores": found["scores"].astype(float).round(4).tolist(),
                  "classes": classes.tolist(), "names": [class_names[c] for c in classes],
                  "bounding_box_format": "yxyx", "milliseconds": round(milliseconds, 1)}
        if "masks" in found:
            result["masks"] = [mask_rle(mask) for mask in found["masks"]]
        if out is not None and save_images:
            image_format = save_format
            if image_format == "auto":
                jpeg = isinstance(source, Path) and source.suffix.lower() in (".jpg", ".jpeg")
                image_format = "jpg" if jpeg else "png"
            picture = draw_detections(image, found["boxes"], classes, found["scores"], class_names,
                                      masks=found.get("masks"))
            result["picture"] = str(save_picture(picture, out / f"{name}.{image_format}", image_format))
        if out is not None and heatmap:
            picture = draw_heatmap(image, heatmap_in_image(model, image, resize))
            result["heatmap_picture"] = str(save_picture(picture, out / f"{name}_heatmap.png", "png"))
        if out is not None and save_json:
            result["json"] = str(out / f"{name}.json")
            write_json(result, result["json"])
        results.append(result)
    return results


def summary_line(result):
    """One line per image: `a.jpg: 3 objects (2 RBC, 1 WBC) in 41.2 ms`."""
    counts = {}
    for name in result["names"]:
        counts[name] = counts.get(name, 0) + 1
    what = ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    noun = "object" if len(result["names"]) == 1 else "objects"
    return f"{result['image']}: {len(result['names'])} {noun}" + (f" ({what})" if what else "") + \
        f" in {result['milliseconds']:.1f} ms"
