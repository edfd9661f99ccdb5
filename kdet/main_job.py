"""`kdet run`: the README's main job in one command: train on the configured data, evaluate with COCO AP and VOC mAP,
export SavedModel + TFLite (checked against Keras), predict on held-out images and write an annotated picture."""
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from kdet import api
from kdet.build import load_split, load_trained_model
from kdet.config import load_config
from kdet.jsonio import write_json


def _save_inputs(dataset, out, count):
    """Held-out images as files (synthetic data lives in memory): what a user would hand to `kdet predict`."""
    from kdet.data.images import read_image
    from kdet.inference.visualize import save_png
    paths = []
    for record in dataset.records[:count]:
        if record.path is not None:
            paths.append(record.path)
            continue
        path = out / "inputs" / f"{record.image_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(record.image, path)
        paths.append(str(path))
    return paths, [read_image(p) for p in paths]


def _grid(pictures):
    """Tile equally sized pictures 2 per row into one image."""
    height = max(p.shape[0] for p in pictures)
    width = max(p.shape[1] for p in pictures)
    cols = 2
    rows = (len(pictures) + cols - 1) // cols
    canvas = np.full((rows * height, cols * width, 3), 255, np.uint8)
    for i, p in enumerate(pictures):
        r, c = divmod(i, cols)
        canvas[r * height:r * height + p.shape[0], c * width:c * width + p.shape[1]] = p
    return canvas


def _enlarged_picture(image, result, class_names, min_side=256):
    """Detections drawn on the image enlarged (nearest) to at least `min_side` px, so labels stay legible."""
    from kdet.inference.visualize import draw_detections
    factor = max(1, -(-min_side // max(image.shape[:2])))
    big = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    return draw_detections(big, np.asarray(result["boxes"], np.float32).reshape(-1, 4) * factor,
                           result["classes"], result["scores"], class_names)


def run_main_job(config_path, overrides=(), out_dir="out", num_pictures=4):
    from kdet.inference.runners import load_runner
    from kdet.inference.visualize import save_png
    config = load_config(config_path, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    start = time.perf_counter()
    print(f"== train {config.model.name} on {config.data.format} ({config.train.epochs} epochs)")
    api.train(config)
    timings["train_s"] = time.perf_counter() - start

    start = time.perf_counter()
    print("== evaluate on the test split")
    figures = api.evaluate(config)
    timings["evaluate_s"] = time.perf_counter() - start
    for key in ("AP", "AP50", "AP75", "mAP50"):
        print(f"  {key:<6} {figures[key]:.4f}")

    start = time.perf_counter()
    print("== export SavedModel + TFLite")
    paths = api.export(config, formats=["saved_model", "tflite"])
    timings["export_s"] = time.perf_counter() - start
    test = load_split(config, "test")
    inputs, images = _save_inputs(test, out, num_pictures)
    batch = np.stack([tf.cast(tf.image.resize(im, config.model.image_size), tf.uint8).numpy() for im in images])
    model = load_trained_model(config)
    reference = {k: v.numpy() for k, v in model.detect(batch).items()}
    for fmt, path in paths.items():
        result = load_runner(path)(batch)
        same = bool(np.array_equal(result["classes"], reference["classes"]))
        diff = float(np.abs(result["boxes"] - reference["boxes"]).max())
        print(f"  {fmt:<12} {path}  (vs Keras: max box difference {diff:.2e} px, same classes: {same})")

    print("== predict")
    results = api.predict(config, inputs, out_dir=out / "predictions")
    pictures = [_enlarged_picture(image, result, model.class_names or test.class_names) for image, result in zip(images, results)]
    save_png(_grid(pictures), out / "predictions.png")
    summary = {"figures": {k: v for k, v in figures.items() if isinstance(v, (int, float))}, "exports": paths,
               "timings_s": timings, "predictions": results}
    write_json(summary, out / "summary.json")
    print(f"== done: picture {out / 'predictions.png'}, summary {out / 'summary.json'}")
    return summary
