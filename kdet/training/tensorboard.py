"""TensorBoard logs of a run, in `train.output_dir/logs` (open with `tensorboard --logdir runs/NAME/logs`).

    TensorBoardLog(out / "logs", every_steps=10, images=val_images)

What is written (tags), with the optimizer's step count as the step of per-step values, so a resumed run continues
the curves instead of starting them again:
- `train/loss` and `train/learning_rate` every `every_steps` training steps (0 = off);
- `epoch/<name>` for every value of the epoch logs at each epoch's end (loss and its parts, val_loss, and the
  COCO / VOC figures `EvaluationCallback` adds, e.g. `epoch/val_AP`), step = the epoch number (1, 2, ...);
- `predictions` each epoch: the first few validation images (training images without a validation split) with the
  model's detections (score >= `score_threshold`) drawn as boxes coloured by class, or its predicted class mask
  blended over the image for semantic segmentation models.
The boxes are drawn here with `tf.image.draw_bounding_boxes` (kdet.inference.visualize sits above training in the
layering and is not imported): one box at a time, so each gets its class's colour; no text labels.
"""
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

# Distinct colours (RGB 0..1) for classes 0, 1, ...; class c uses COLORS[c % len(COLORS)].
COLORS = np.array([[0.90, 0.10, 0.10], [0.10, 0.70, 0.10], [0.15, 0.35, 0.95], [0.95, 0.75, 0.05],
                   [0.75, 0.15, 0.85], [0.05, 0.80, 0.80], [1.00, 0.50, 0.00], [0.55, 0.35, 0.15]], np.float32)


def draw_boxes(image, boxes, classes):
    """image float [H, W, 3] in 0..1; boxes [N, 4] yxyx pixels; classes [N] -> the image with the box outlines."""
    height, width = image.shape[:2]
    drawn = tf.convert_to_tensor(image, tf.float32)[None]
    # draw_bounding_boxes puts normalised y at row round(y * (H - 1)): the outline runs along the first and the last
    # pixel row / column inside the box (y0 and y1 - 1 of the half-open pixel box)
    scale = np.maximum(np.array([height, width, height, width], np.float32) - 1, 1)
    for box, label in zip(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes)):
        color = COLORS[int(label) % len(COLORS)]
        corners = (box - np.array([0, 0, 1, 1], np.float32)) / scale
        drawn = tf.image.draw_bounding_boxes(drawn, corners[None, None], color[None])
    return drawn[0].numpy()


def overlay_mask(image, mask, alpha=0.5):
    """image float [H, W, 3] in 0..1; mask int [H, W] (0 = background, c + 1 = class c) -> blended image."""
    colors = np.concatenate([np.zeros((1, 3), np.float32), COLORS])
    index = np.where(mask > 0, (np.asarray(mask) - 1) % len(COLORS) + 1, 0)
    return np.where((mask > 0)[..., None], (1 - alpha) * image + alpha * colors[index], image)


def prediction_pictures(model, images, score_threshold=0.3):
    """float [K, H, W, 3] in 0..1: `images` (x of a fit batch, 0..255) with the model's predictions drawn."""
    outputs = model.detect(images)
    pixels = np.clip(np.asarray(model.images_of(images), np.float32) / 255.0, 0, 1)
    pictures = []
    for index, image in enumerate(pixels):
        if getattr(model, "task", "detection") == "semantic":
            pictures.append(overlay_mask(image, np.asarray(outputs["masks"][index])))
            continue
        keep = np.asarray(outputs["scores"][index]) >= score_threshold
        pictures.append(draw_boxes(image, np.asarray(outputs["boxes"][index])[keep],
                                   np.asarray(outputs["classes"][index])[keep]))
    return np.stack(pictures)


class TensorBoardLog(keras.callbacks.Callback):
    """Writes the run's TensorBoard events (module docstring). Put it after `EvaluationCallback`, so the epoch logs
    it writes hold the evaluation figures.

    Args:
        log_dir: the event files' folder (`train.output_dir/logs`).
        every_steps: log loss and learning rate every this many training steps (0 = never).
        images: x of a fit batch (images [K, H, W, 3] 0..255, or the model's input dict) to draw predictions on
            each epoch, or None.
    """

    def __init__(self, log_dir, every_steps=10, images=None, score_threshold=0.3):
        super().__init__()
        self.log_dir = Path(log_dir)
        self.every_steps = int(every_steps)
        self.images = images
        self.score_threshold = score_threshold
        self.writer = None

    def on_train_begin(self, logs=None):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = tf.summary.create_file_writer(str(self.log_dir))

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if not self.every_steps or step % self.every_steps or "loss" not in (logs or {}):
            return
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        with self.writer.as_default(step=step):
            tf.summary.scalar("train/loss", float(logs["loss"]))
            tf.summary.scalar("train/learning_rate", rate)

    def on_epoch_end(self, epoch, logs=None):
        with self.writer.as_default(step=epoch + 1):
            for name, value in (logs or {}).items():
                if np.ndim(value) == 0:
                    tf.summary.scalar(f"epoch/{name}", float(value))
            if self.images is not None:
                tf.summary.image("predictions", prediction_pictures(self.model, self.images, self.score_threshold),
                                 max_outputs=16)
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()
