"""Is the input pipeline ever what limits a training step?

BCCD (real JPEGs, 640x480) through kdet's tf.data pipeline at 512x512 with augmentation (flip, scale jitter + crop,
colour jitter), images/s, next to the classification + localization model's training-step throughput at the same
size and batch, measured on in-memory batches (so the step alone). Prints JSON lines; run from the repo root:

    python benchmarks/bench_pipeline.py [--data ../shared/data/bccd/BCCD]
"""
import argparse
import json
import time

import keras
import tensorflow as tf

from kdet.config import AugmentConfig
from kdet.data.pipeline import make_tf_dataset
from kdet.data.voc import read_voc
from kdet.models.classloc import ClassLocModel


def pipeline_rate(dataset, size, batch, epochs):
    ds = make_tf_dataset(dataset, size, batch, training=True, seed=0,
                         augment=AugmentConfig(flip=True, scale_jitter=[0.8, 1.25], color_jitter=0.2))
    for _ in ds.take(2):  # warm-up: tracing and the first files
        pass
    start, images = time.perf_counter(), 0
    for _ in range(epochs):
        for b in ds:
            images += int(b["images"].shape[0])
    return images / (time.perf_counter() - start)


def train_step_rate(size, batch, steps):
    model = ClassLocModel(3, image_size=size)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = tf.random.uniform([batch, *size, 3], 0, 255)
    # fit targets as any pipeline gives them (one box per image); encoding is part of the timed step
    box = tf.constant([[0.25 * size[0], 0.25 * size[1], 0.75 * size[0], 0.75 * size[1]]])
    y = {"boxes": tf.tile(box[None], [batch, 1, 1]), "labels": tf.zeros([batch, 1], tf.int32)}
    ds = tf.data.Dataset.from_tensors((x, y)).repeat(steps + 2).cache()
    model.fit(ds.take(2), verbose=0)  # warm-up: tracing
    start = time.perf_counter()
    model.fit(ds.take(steps), verbose=0)
    return steps * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/bccd/BCCD")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    size = (args.size, args.size)
    dataset = read_voc(args.data, split="trainval", verbose=False)
    pipeline = pipeline_rate(dataset, size, args.batch, args.epochs)
    step = train_step_rate(size, args.batch, args.steps)
    rows = [
        {"name": f"bccd_pipeline_{args.size}_augmented", "value": round(pipeline, 1), "unit": "images/s",
         "images": len(dataset) * args.epochs},
        {"name": f"classloc_train_step_{args.size}", "value": round(step, 1), "unit": "images/s",
         "batch": args.batch},
        {"name": "pipeline_over_train_step", "value": round(pipeline / step, 2), "unit": "ratio",
         "note": "> 1 means the input pipeline keeps ahead of training"},
    ]
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
