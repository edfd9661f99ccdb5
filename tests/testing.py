"""Shared test helpers: `check_export_parity`, which every model test calls, and tiny contract-following models.

`check_export_parity(model, images, tmp_path)` exports a model to each artifact format, runs every artifact on the
same uint8 images through `kdet.export.load_runner`, and compares it with the Keras model's `detect`:
same num_detections, same classes, boxes within `box_atol` pixels, scores within `score_atol` (order-insensitive, so
two detections whose scores tie may swap rows). Quantised formats ("tflite_fp16", "tflite_int8") are not expected
to be equal: for them it returns a report (fraction of Keras detections matched, box error) instead of asserting.
Semantic models (`model.task == "semantic"`) compare masks and probabilities.

The tiny models (`TinyGridDetector`, `TinyRoiDetector`, `TinySegmenter`) exist so that export and serving can be
tested without training anything; each uses the ops that need a TFLite-builtins twin (combined NMS, RoIAlign).
"""
import keras
import numpy as np
import tensorflow as tf

from kdet.models.base import Detector
from kdet.ops.nms import combined_nms
from kdet.ops.roi_align import roi_align

DETECTION_KEYS = ("boxes", "scores", "classes", "num_detections")
QUANTISED_FORMATS = ("tflite_fp16", "tflite_int8")


def random_images(model, batch=2, seed=0):
    """uint8 [batch, H, W, 3] images at the model's size: smooth blobs, so that convolutions see structure."""
    rng = np.random.default_rng(seed)
    height, width = model.image_size
    coarse = rng.uniform(0, 255, size=(batch, height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, (height, width), method="bilinear").numpy()
    noise = rng.normal(0, 12, size=smooth.shape)
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def threshold_with_margin(scores, quantile, window=20):
    """A score threshold near `quantile` of `scores`, in the middle of the widest gap between neighbouring scores
    there: a threshold within float noise (1e-6) of a score would let two runtimes disagree on that detection."""
    values = np.sort(np.asarray(scores, np.float64).ravel())
    index = int(quantile * (len(values) - 1))
    low, high = max(index - window, 0), min(index + window, len(values) - 1)
    gaps = np.diff(values[low:high + 1])
    best = int(np.argmax(gaps))
    return float((values[low + best] + values[low + best + 1]) / 2)


def make_tiny_detector(cls=None, batch=3, seed=0, quantile=0.985, **kwargs):
    """A seeded tiny detector whose score threshold sits at `quantile` of its scores on `batch` images.

    Random-init scores cluster, so a fixed threshold gives 0 or K detections; this one gives counts in between and
    different per image, which is what catches the TFLite NMS count trap. Returns (model, images uint8).
    """
    keras.utils.set_random_seed(seed)
    model = (cls or TinyGridDetector)(**kwargs)
    images = random_images(model, batch, seed=seed)
    scores = tf.sigmoid(model(images)["class_logits"]).numpy()
    model.score_threshold = float(np.quantile(scores, quantile))
    return model, images


def encode_png(image):
    """uint8 [H, W, 3] -> PNG bytes (lossless, so a serving_bytes round trip sees the same pixels)."""
    return tf.io.encode_png(image).numpy()


def encode_jpeg(image, quality=95):
    """uint8 [H, W, 3] -> JPEG bytes."""
    return tf.io.encode_jpeg(image, quality=quality).numpy()


def keras_outputs(model, images):
    """The reference: the Keras model's `detect` on uint8 images, as numpy."""
    return {k: np.asarray(v) for k, v in model.detect(tf.constant(images)).items()}


def match_detections(reference, candidate, box_atol, score_atol, iou_threshold=None):
    """Pair each reference detection with a candidate detection of one image.

    reference / candidate: dicts of one image: boxes [K, 4], scores [K], classes [K], num_detections scalar.
    With iou_threshold None a pair needs the same class, every box coordinate within box_atol and the score within
    score_atol; with an IoU threshold (quantised models) it needs the same class and IoU >= iou_threshold.
    Returns a list of (reference row, candidate row) pairs, greedy in reference score order.
    """
    n_ref, n_cand = int(reference["num_detections"]), int(candidate["num_detections"])
    free = list(range(n_cand))
    pairs = []
    for i in np.argsort(-reference["scores"][:n_ref], kind="stable"):
        best, best_err = None, None
        for j in free:
            if candidate["classes"][j] != reference["classes"][i]:
                continue
            if iou_threshold is None:
                box_err = np.max(np.abs(candidate["boxes"][j] - reference["boxes"][i]))
                if box_err > box_atol or abs(candidate["scores"][j] - reference["scores"][i]) > score_atol:
                    continue
                err = box_err
            else:
                overlap = box_iou(reference["boxes"][i], candidate["boxes"][j])
                if overlap < iou_threshold:
                    continue
                err = -overlap
            if best is None or err < best_err:
                best, best_err = j, err
        if best is not None:
            free.remove(best)
            pairs.append((int(i), best))
    return pairs


def box_iou(a, b):
    """IoU of two yxyx boxes [4]."""
    ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def compare_detections(reference, candidate, box_atol=1e-3, score_atol=1e-4, name="artifact", mask_atol=1e-3,
                        mask_iou=None):
    """Assert that two detection dicts ([B, ...] numpy) agree: counts, classes, boxes and scores, and the instance
    masks [B, K, h, w] of paired detections when the reference has "masks": values within mask_atol, or with
    `mask_iou` set, binary masks whose IoU is at least mask_iou (a pixel whose probability sits at the threshold may
    flip between runtimes).

    Returns {"max_box_error": px, "max_score_error": ..., "detections": total count} (+ "min_mask_iou").
    """
    keys = DETECTION_KEYS + (("masks",) if "masks" in reference else ())
    for key in keys:
        assert key in candidate, f"{name}: output {key!r} missing (has {sorted(candidate)})"
        assert candidate[key].shape == reference[key].shape, \
            f"{name}: {key} shape {candidate[key].shape} != Keras {reference[key].shape}"
    np.testing.assert_array_equal(candidate["num_detections"], reference["num_detections"],
                                  err_msg=f"{name}: num_detections differ from Keras (the NMS count trap?)")
    max_box, max_score, total, ious = 0.0, 0.0, 0, []
    for b in range(reference["boxes"].shape[0]):
        ref = {k: v[b] for k, v in reference.items()}
        cand = {k: v[b] for k, v in candidate.items()}
        n = int(ref["num_detections"])
        pairs = match_detections(ref, cand, box_atol, score_atol)
        assert len(pairs) == n, (
            f"{name}: image {b}: only {len(pairs)} of {n} Keras detections found within box_atol={box_atol} px, "
            f"score_atol={score_atol}\nKeras boxes {ref['boxes'][:n]} classes {ref['classes'][:n]} scores "
            f"{ref['scores'][:n]}\n{name} boxes {cand['boxes'][:n]} classes {cand['classes'][:n]} "
            f"scores {cand['scores'][:n]}")
        for i, j in pairs:
            max_box = max(max_box, float(np.max(np.abs(ref["boxes"][i] - cand["boxes"][j]))))
            max_score = max(max_score, float(abs(ref["scores"][i] - cand["scores"][j])))
            if "masks" in ref and mask_iou is not None:
                ious.append(mask_iou_of(ref["masks"][i], cand["masks"][j]))
                assert ious[-1] >= mask_iou, f"{name}: image {b}: mask of detection {i} has IoU {ious[-1]:.4f} " \
                                             f"< {mask_iou} with Keras"
            elif "masks" in ref:
                mask_error = float(np.max(np.abs(ref["masks"][i].astype(np.float32) - cand["masks"][j])))
                assert mask_error <= mask_atol, f"{name}: image {b}: mask of detection {i} differs by {mask_error}"
        # Rows past num_detections are padding and must be zero, as the contract says.
        for key in ("boxes", "scores", "classes"):
            assert not np.any(cand[key][n:]), f"{name}: image {b}: {key} rows past num_detections are not zero"
        total += n
    report = {"max_box_error": max_box, "max_score_error": max_score, "detections": total}
    return dict(report, min_mask_iou=min(ious, default=1.0)) if mask_iou is not None else report


def mask_iou_of(a, b):
    """IoU of two binary masks [h, w] (1.0 when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = np.sum(a | b)
    return float(np.sum(a & b) / union) if union else 1.0


def quantised_report(reference, candidate, iou_threshold=0.5):
    """How far a quantised artifact drifts from Keras: matched fraction (same class, IoU >= 0.5), box error, counts,
    and for instance masks the mean / min mask IoU of the matched pairs."""
    matched, total, box_errors, mask_ious = 0, 0, [], []
    for b in range(reference["boxes"].shape[0]):
        ref = {k: v[b] for k, v in reference.items()}
        cand = {k: v[b] for k, v in candidate.items()}
        pairs = match_detections(ref, cand, np.inf, np.inf, iou_threshold=iou_threshold)
        matched += len(pairs)
        total += int(ref["num_detections"])
        box_errors += [float(np.max(np.abs(ref["boxes"][i] - cand["boxes"][j]))) for i, j in pairs]
        if "masks" in ref:
            mask_ious += [mask_iou_of(ref["masks"][i], cand["masks"][j]) for i, j in pairs]
    masks = {"mean_mask_iou": float(np.mean(mask_ious)) if mask_ious else 1.0,
             "min_mask_iou": float(np.min(mask_ious)) if mask_ious else 1.0} if "masks" in reference else {}
    return {**masks, "matched_fraction": matched / total if total else 1.0,
            "mean_box_error": float(np.mean(box_errors)) if box_errors else 0.0,
            "max_box_error": float(np.max(box_errors)) if box_errors else 0.0,
            "keras_detections": total, "artifact_detections": int(np.sum(candidate["num_detections"]))}


def compare_semantic(reference, candidate, prob_atol=1e-4, name="artifact"):
    """Assert masks equal (except where the top two probabilities tie within prob_atol) and probabilities close."""
    for key in ("masks", "probabilities"):
        assert key in candidate, f"{name}: output {key!r} missing (has {sorted(candidate)})"
        assert candidate[key].shape == reference[key].shape, \
            f"{name}: {key} shape {candidate[key].shape} != Keras {reference[key].shape}"
    prob_error = float(np.max(np.abs(candidate["probabilities"] - reference["probabilities"])))
    assert prob_error <= prob_atol, f"{name}: probabilities differ by {prob_error} > {prob_atol}"
    top2 = np.sort(reference["probabilities"], axis=-1)[..., -2:]
    decided = (top2[..., 1] - top2[..., 0]) > 2 * prob_atol
    disagree = (candidate["masks"] != reference["masks"]) & decided
    assert not disagree.any(), f"{name}: {int(disagree.sum())} mask pixels differ from Keras"
    return {"max_probability_error": prob_error,
            "mask_agreement": float(np.mean(candidate["masks"] == reference["masks"]))}


def semantic_report(reference, candidate):
    """How far a quantised semantic artifact drifts: fraction of equal mask pixels, largest probability error."""
    return {"mask_agreement": float(np.mean(candidate["masks"] == reference["masks"])),
            "max_probability_error": float(np.max(np.abs(candidate["probabilities"] - reference["probabilities"])))}


def check_export_parity(model, images, tmp_path, formats=("saved_model", "tflite", "onnx"), box_atol=1e-3,
                        score_atol=1e-4, representative_images=None, check_serving_bytes=True, mask_iou=None):
    """Export `model` to each format and check every artifact against Keras `detect` on `images`, and that it
    carries the model's class names.

    Args:
        model: a kdet model (Detector contract), built or not.
        images: uint8 [B, H, W, 3] at `model.image_size`.
        tmp_path: a directory for the artifacts (pytest's tmp_path).
        formats: any of "keras", "saved_model", "tflite", "tflite_fp16", "tflite_int8", "onnx".
        box_atol: pixels; score_atol: absolute score difference (probabilities for semantic models).
        representative_images: uint8 [N, H, W, 3] for int8 calibration (default: `images`).
        check_serving_bytes: also run the SavedModel's `serving_bytes` on PNG-encoded `images` (same pixels, so it
            must match `serving_default` exactly).
        mask_iou: instance masks ("masks" [B, K, H, W]) compared by per-detection IoU >= mask_iou (None: values
            within 1e-3, compare_detections' default).
    Returns:
        {format: report dict}; float formats are asserted, quantised formats only reported.
    """
    from kdet.export import export_onnx, export_saved_model, export_tflite, load_runner

    images = np.asarray(images, np.uint8)
    semantic = getattr(model, "task", "detection") == "semantic"
    reference = keras_outputs(model, images)
    reports = {}
    for fmt in formats:
        if fmt == "keras":
            path = str(tmp_path / "model.keras")
            model.save(path)
        elif fmt == "saved_model":
            path = export_saved_model(model, tmp_path / "saved_model")
        elif fmt.startswith("tflite"):
            quantize = fmt.partition("_")[2] or None
            calibration = images if representative_images is None else representative_images
            path = export_tflite(model, tmp_path / f"model{'_' + quantize if quantize else ''}.tflite",
                                 quantize=quantize, representative_images=calibration)
        elif fmt == "onnx":
            path = export_onnx(model, tmp_path / "model.onnx")
        else:
            raise ValueError(f"unknown format {fmt!r}")
        runner = load_runner(path)
        assert runner.class_names == getattr(model, "class_names", None), f"{fmt}: class names not carried"
        outputs = runner(images)
        if fmt in QUANTISED_FORMATS:
            reports[fmt] = semantic_report(reference, outputs) if semantic else quantised_report(reference, outputs)
        elif semantic:
            reports[fmt] = compare_semantic(reference, outputs, prob_atol=score_atol, name=fmt)
        else:
            reports[fmt] = compare_detections(reference, outputs, box_atol, score_atol, name=fmt, mask_iou=mask_iou)
        if fmt == "saved_model" and check_serving_bytes:
            reports["serving_bytes"] = _check_serving_bytes(path, images, outputs, semantic)
    return reports


def _check_serving_bytes(path, images, expected, semantic):
    """serving_bytes on lossless PNGs at the model size gives exactly what serving_default gave."""
    loaded = tf.saved_model.load(str(path))
    encoded = tf.constant([encode_png(image) for image in images])
    outputs = {k: v.numpy() for k, v in loaded.signatures["serving_bytes"](image_bytes=encoded).items()}
    keys = ("masks", "probabilities") if semantic else DETECTION_KEYS + (("masks",) if "masks" in expected else ())
    for key in keys:
        np.testing.assert_allclose(outputs[key], expected[key], atol=1e-5,
                                   err_msg=f"serving_bytes {key} differs from serving_default")
    return {"checked": list(keys)}


# -- tiny contract-following models ---------------------------------------------------------------------------------
# Random init is enough: export parity does not need a trained model. Each uses kdet.ops that TFLite has no builtin
# for (combined NMS, RoIAlign's crop_and_resize), which switch to their builtins-only twins under `builtins_only()`.

class _TinyBackbone(keras.layers.Layer):
    """[B, H, W, 3] normalised -> [B, H/8, W/8, width]: three stride-2 convs."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.convs = [keras.layers.Conv2D(w, 3, strides=2, padding="same", activation="relu")
                      for w in (8, width, width)]

    def call(self, x):
        for conv in self.convs:
            x = conv(x)
        return x


@keras.saving.register_keras_serializable(package="kdet_tests")
class TinyGridDetector(Detector):
    """One box per stride-8 cell plus per-class sigmoid scores; decode = score threshold + combined NMS.

    call -> {"box_deltas": [B, h, w, 4], "class_logits": [B, h, w, C]}.
    """

    def __init__(self, num_classes=3, image_size=(64, 80), max_detections=10, score_threshold=0.3,
                 iou_threshold=0.5, width=16, **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=max_detections, **kwargs)
        self.score_threshold, self.iou_threshold, self.width = float(score_threshold), float(iou_threshold), width
        self.backbone = _TinyBackbone(width, name="backbone")
        # A wide spread of initial logits keeps random-init scores apart, so near-ties at the threshold are rare.
        self.head = keras.layers.Conv2D(4 + num_classes, 1, name="head",
                                        kernel_initializer=keras.initializers.RandomNormal(0.0, 3.0))

    def call(self, images, training=False):
        out = self.head(self.backbone(self.normalize(images)))
        return {"box_deltas": out[..., :4], "class_logits": out[..., 4:]}

    def grid_boxes(self, deltas, image_size):
        """deltas [B, h, w, 4] -> boxes [B, h*w, 4] yxyx pixels, clipped to the image of `image_size`."""
        height, width = image_size
        grid_h, grid_w = deltas.shape[1], deltas.shape[2]
        stride_y, stride_x = height / grid_h, width / grid_w
        cy = (tf.range(grid_h, dtype=tf.float32)[:, None] + 0.5 + tf.tanh(deltas[..., 0])) * stride_y
        cx = (tf.range(grid_w, dtype=tf.float32)[None, :] + 0.5 + tf.tanh(deltas[..., 1])) * stride_x
        h = 2.0 * stride_y * tf.exp(tf.clip_by_value(deltas[..., 2], -2.0, 2.0))
        w = 2.0 * stride_x * tf.exp(tf.clip_by_value(deltas[..., 3], -2.0, 2.0))
        boxes = tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)
        boxes = tf.minimum(tf.maximum(boxes, 0.0), [height, width, height, width])
        return tf.reshape(boxes, [-1, grid_h * grid_w, 4])

    def decode(self, outputs, image_size):
        boxes = self.grid_boxes(outputs["box_deltas"], image_size)
        scores = tf.reshape(tf.sigmoid(outputs["class_logits"]), [tf.shape(boxes)[0], -1, self.num_classes])
        return combined_nms(boxes, scores, self.max_detections, self.iou_threshold, self.score_threshold)

    def get_config(self):
        return dict(super().get_config(), score_threshold=self.score_threshold, iou_threshold=self.iou_threshold,
                    width=self.width)


@keras.saving.register_keras_serializable(package="kdet_tests")
class TinyRoiDetector(TinyGridDetector):
    """Two-stage toy: top-P grid boxes (by max class score) as proposals -> RoIAlign -> class and box refinement
    -> combined NMS. call -> {"proposals": [B, P, 4], "box_deltas": [B, P, 4], "class_logits": [B, P, C]}."""

    def __init__(self, num_classes=3, image_size=(64, 64), max_detections=10, num_proposals=8, roi_size=4, **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=max_detections, **kwargs)
        self.num_proposals, self.roi_size = int(num_proposals), int(roi_size)
        self.roi_head = keras.layers.Dense(4 + num_classes,
                                           kernel_initializer=keras.initializers.RandomNormal(0.0, 1.0))

    def call(self, images, training=False):
        features = self.backbone(self.normalize(images))
        out = self.head(features)
        proposals = self.grid_boxes(out[..., :4], self.image_size)
        objectness = tf.reduce_max(tf.reshape(out[..., 4:], [tf.shape(proposals)[0], -1, self.num_classes]), -1)
        _, top = tf.math.top_k(objectness, self.num_proposals)
        proposals = tf.gather(proposals, top, batch_dims=1)
        batch = tf.shape(proposals)[0]
        crops = roi_align(features, tf.reshape(proposals, [-1, 4]), tf.repeat(tf.range(batch), self.num_proposals),
                          self.roi_size, spatial_scale=features.shape[1] / self.image_size[0], sampling_ratio=2,
                          aligned=True)
        flat = tf.reshape(crops, [batch, self.num_proposals, self.roi_size * self.roi_size * crops.shape[-1]])
        refined = self.roi_head(flat)
        return {"proposals": proposals, "box_deltas": refined[..., :4], "class_logits": refined[..., 4:]}

    def decode(self, outputs, image_size):
        boxes = outputs["proposals"] + 4.0 * tf.tanh(outputs["box_deltas"])
        return combined_nms(boxes, tf.sigmoid(outputs["class_logits"]), self.max_detections, self.iou_threshold,
                            self.score_threshold)

    def get_config(self):
        return dict(super().get_config(), num_proposals=self.num_proposals, roi_size=self.roi_size)


@keras.saving.register_keras_serializable(package="kdet_tests")
class TinySegmenter(Detector):
    """Semantic toy: stride-4 conv features -> 1x1 class logits -> bilinear resize to the input size."""

    task = "semantic"

    def __init__(self, num_classes=3, image_size=(48, 64), **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, **kwargs)
        self.convs = [keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu") for _ in range(2)]
        self.classifier = keras.layers.Conv2D(num_classes, 1)

    def call(self, images, training=False):
        x = self.normalize(images)
        for conv in self.convs:
            x = conv(x)
        return {"logits": tf.image.resize(self.classifier(x), tf.shape(images)[1:3], method="bilinear")}

    def decode(self, outputs, image_size):
        probabilities = tf.nn.softmax(outputs["logits"], axis=-1)
        return {"masks": tf.argmax(probabilities, axis=-1, output_type=tf.int32), "probabilities": probabilities}


def check_dense_twin_outputs(model, images, fixture, anchor_atol=0.0):
    """A dense (anchor-per-location) twin against its torchvision fixture: the subsampled anchors, class logits
    and box deltas (<= 1e-3 of the fixture's largest value), then the detections of each image: same count, boxes
    <= 0.5 px, same labels, scores <= 1e-5 (torchvision returns them by descending score, as kdet does)."""
    outputs = model(images)
    keep = fixture["anchor_index"]
    anchors = model.anchors_for(tuple(images.shape[1:3])).numpy()
    assert len(anchors) == int(fixture["num_anchors"])
    np.testing.assert_allclose(anchors[keep], fixture["anchors"], atol=anchor_atol)
    for key in ("cls_logits", "box_regression"):
        result = outputs[key].numpy()[:, keep]
        assert np.max(np.abs(result - fixture[key])) <= 1e-3 * np.max(np.abs(fixture[key])), key
    detections = {k: v.numpy() for k, v in model.decode(outputs, images.shape[1:3]).items()}
    for i in range(len(images)):
        count = int(detections["num_detections"][i])
        assert count == len(fixture[f"det{i}_scores"]) > 0
        assert np.max(np.abs(detections["boxes"][i, :count] - fixture[f"det{i}_boxes"])) <= 0.5
        np.testing.assert_array_equal(detections["classes"][i, :count], fixture[f"det{i}_labels"])
        np.testing.assert_allclose(detections["scores"][i, :count], fixture[f"det{i}_scores"], atol=1e-5)


def relative_error(actual, expected):
    """max |actual - expected| / max |expected|: the twins' agreement measure."""
    return float(np.max(np.abs(np.asarray(actual) - expected)) / max(np.max(np.abs(expected)), 1e-12))


def twin_fixture_state(data):
    """The seeded torchvision state dict a two-stage twin fixture was made with (tests/reference/
    make_*_rcnn_twin_fixtures.py): its names and shapes, seed, and the box predictor's shifted class scores."""
    from kdet.convert.torchvision import seeded_state_dict
    names = [str(n) for n in data["torch_names"]]
    shapes = {n: tuple(int(v) for v in s.strip("[]").split(",") if v.strip())
              for n, s in zip(names, data["torch_shapes"])}
    state = seeded_state_dict(shapes, int(data["weight_seed"]))
    state["roi_heads.box_predictor.cls_score.weight"] *= data["cls_weight_scale"]
    state["roi_heads.box_predictor.cls_score.bias"][:] = data["cls_bias"]
    state["roi_heads.box_predictor.cls_score.bias"][0] = data["background_bias"]
    return state
