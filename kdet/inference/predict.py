"""`kdet predict`: detections on image files, drawn and written as PNG + JSON.

    results = predict_files(model, ["a.jpg", "b.png"], "out", class_names)

Each image is resized to the size the model was trained at (`model.image_size`, as kdet's pipeline does), run
through the compiled `model.predict` (one trace for every image), and its boxes are mapped back to the image's own
pixels. Semantic models write colour overlays (kdet.eval.semantic.predict_files).
"""
import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from kdet.data.augment import resize_image
from kdet.data.images import read_image
from kdet.inference.visualize import draw_detections, save_png


def _resized(image, size, resize):
    element = resize_image({"images": tf.cast(image, tf.float32), "bounding_boxes": {
        "boxes": tf.zeros([0, 4]), "labels": tf.zeros([0], tf.int32)}}, size, resize)
    return element["images"].numpy(), np.tile(element["scale"].numpy(), 2)


def predict_files(model, paths, out_dir, class_names, score_threshold=0.3, resize="stretch"):
    """Detect objects in image files; writes <stem>.png (boxes drawn) and <stem>.json per image into `out_dir`.

    Returns one dict per image: {"image", "boxes" (yxyx in the image's own pixels), "scores", "classes", "names",
    "bounding_box_format": "yxyx"}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in paths:
        image = read_image(path)
        resized, scale = _resized(image, tuple(model.image_size), resize)
        det = {k: np.asarray(v)[0] for k, v in model.predict_on_batch(resized[None]).items()}
        boxes = det["boxes"]
        if model.bounding_box_format != "yxyx":  # predict answers in the model's format; files say yxyx
            from kdet.ops import convert_format
            boxes = np.asarray(convert_format(boxes, model.bounding_box_format, "yxyx", *model.image_size))
        n = int(det["num_detections"])
        keep = det["scores"][:n] >= score_threshold
        boxes = boxes[:n][keep] / scale  # back to the image's own pixels
        classes = det["classes"][:n][keep]
        result = {"image": str(path), "boxes": boxes.round(2).tolist(), "scores": det["scores"][:n][keep].tolist(),
                  "classes": classes.tolist(), "names": [class_names[c] for c in classes],
                  "bounding_box_format": "yxyx"}
        stem = Path(path).stem
        save_png(draw_detections(image, boxes, classes, result["scores"], class_names), out / f"{stem}.png")
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
        results.append(result)
    return results
