"""`kdet serve` with instance masks: REST JSON carries them as COCO RLE per instance, gRPC as the uint8 tensor.

The rule (kdet/serving/codec.py): an output named "masks" of dtype uint8 and rank 4 ([B, K, H, W], Mask R-CNN's
instance masks) is written in JSON as K RLEs {"size": [H, W], "counts": str} per image; with an "original_size"
[B, 2] output (`serving_bytes`, masks padded to the batch's largest image) each image's masks are cut to its size.
Semantic masks (int32 [B, H, W]) and every other output keep TF Serving's nested numbers.

The served SavedModel is a small tf.Module shaped like a kdet Mask R-CNN export (saved in about a second); the
real model's export goes through the same codec in tests/test_mask_rcnn_export.py.
"""
import base64
import json
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from kdet.serving.codec import outputs_to_json
from kdet.serving.server import ModelServer

H, W, K = 16, 24, 3


class TinyMasker(tf.Module):
    """K detections per image whose masks are thresholded channels of a conv: different per instance and image."""

    def __init__(self):
        super().__init__()
        self.conv = tf.Variable(tf.random.stateless_normal([3, 3, 3, K], seed=[7, 1]))

    def _detect(self, images):
        x = tf.nn.conv2d(tf.cast(images, tf.float32) / 127.5 - 1.0, self.conv, 1, "SAME")   # [B, H, W, K]
        masks = tf.cast(tf.transpose(x, [0, 3, 1, 2]) > 0.3, tf.uint8)                     # [B, K, H, W]
        batch = tf.shape(images)[0]
        return {"boxes": tf.zeros([batch, K, 4]), "scores": tf.fill([batch, K], 0.5),
                "classes": tf.zeros([batch, K], tf.int32), "num_detections": tf.fill([batch], K), "masks": masks}

    @tf.function(input_signature=[tf.TensorSpec([None, H, W, 3], tf.uint8)])
    def serve_images(self, images):
        return self._detect(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve_bytes(self, image_bytes):
        """Like kdet's serving_bytes: masks of each image at its own size, zero-padded to the largest image."""
        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            return tf.pad(image, [[0, 2 * H - tf.shape(image)[0]], [0, 2 * W - tf.shape(image)[1]], [0, 0]]), \
                tf.shape(image)[:2]

        padded, sizes = tf.map_fn(decode, image_bytes, fn_output_signature=(
            tf.TensorSpec([2 * H, 2 * W, 3], tf.uint8), tf.TensorSpec([2], tf.int32)))
        outputs = self._detect(tf.image.resize(padded, [H, W], method="nearest"))
        largest = tf.reduce_max(sizes, axis=0)
        masks = tf.image.resize(tf.transpose(outputs["masks"], [0, 2, 3, 1]), 2 * tf.constant([H, W]), "nearest")
        outputs["masks"] = tf.transpose(masks, [0, 3, 1, 2])[:, :, :largest[0], :largest[1]]
        outputs["original_size"] = sizes
        return outputs


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "masker"
    module = TinyMasker()
    tf.saved_model.save(module, str(path / "1"), signatures={
        "serving_default": module.serve_images.get_concrete_function(),
        "serving_bytes": module.serve_bytes.get_concrete_function()})
    return path


@pytest.fixture(scope="module")
def server(base):
    with ModelServer(base, rest_port=0, grpc_port=0, poll_seconds=0) as running:
        yield running


def direct(base, signature, **inputs):
    fn = tf.saved_model.load(str(base / "1")).signatures[signature]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def post(server, body):
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/models/masker:predict",
                                     data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def decode_rles(rles):
    """[K] of {"size", "counts": str} -> uint8 [K, h, w] (pycocotools, the reader COCO tools use)."""
    assert all(set(rle) == {"size", "counts"} and isinstance(rle["counts"], str) for rle in rles), rles
    return np.stack([mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}) for rle in rles])


def test_rest_rows_and_columns_return_rle_masks_equal_to_the_tensor(base, server):
    x = np.random.default_rng(0).integers(0, 256, (2, H, W, 3), dtype=np.uint8)
    want = direct(base, "serving_default", images=x)
    assert 0 < want["masks"].sum() < want["masks"].size and not np.array_equal(want["masks"][0], want["masks"][1])
    status, rows = post(server, {"instances": x.tolist()})
    assert status == 200
    for b, row in enumerate(rows["predictions"]):
        assert [rle["size"] for rle in row["masks"]] == [[H, W]] * K
        np.testing.assert_array_equal(decode_rles(row["masks"]), want["masks"][b])
        np.testing.assert_allclose(row["scores"], want["scores"][b])   # other outputs: numbers, as before
    status, columns = post(server, {"inputs": {"images": x.tolist()}})
    assert status == 200 and len(columns["outputs"]["masks"]) == 2
    for b in range(2):
        np.testing.assert_array_equal(decode_rles(columns["outputs"]["masks"][b]), want["masks"][b])


def test_rest_bytes_masks_are_cut_to_each_images_own_size(base, server):
    rng = np.random.default_rng(1)
    sizes = [(2 * H - 4, 2 * W), (H + 3, W + 5)]
    encoded = [tf.io.encode_png(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).numpy() for size in sizes]
    want = direct(base, "serving_bytes", image_bytes=np.array(encoded, dtype=object))
    assert want["masks"].shape == (2, K, 2 * H - 4, 2 * W)               # padded to the largest image
    b64 = [{"b64": base64.b64encode(data).decode()} for data in encoded]
    status, rows = post(server, {"signature_name": "serving_bytes", "instances": b64})
    assert status == 200
    for b, (row, (height, width)) in enumerate(zip(rows["predictions"], sizes)):
        assert row["original_size"] == [height, width]
        assert [rle["size"] for rle in row["masks"]] == [[height, width]] * K
        np.testing.assert_array_equal(decode_rles(row["masks"]), want["masks"][b, :, :height, :width])


def test_grpc_keeps_the_mask_tensor(base, server):
    x = np.random.default_rng(2).integers(0, 256, (2, H, W, 3), dtype=np.uint8)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "masker"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(x))
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    masks = tf.make_ndarray(response.outputs["masks"])
    assert masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, direct(base, "serving_default", images=x)["masks"])


def test_only_uint8_rank4_masks_become_rle():
    semantic = {"masks": np.array([[[0, 1], [2, 1]]], np.int32)}                # semantic: [B, H, W] int32
    assert json.loads(outputs_to_json(semantic, row_format=True)) == {"predictions": [[[0, 1], [2, 1]]]}
    other = {"masks": np.ones((1, 1, 2, 2), np.int32), "heat": np.ones((1, 1, 1, 1), np.uint8)}
    assert json.loads(outputs_to_json(other, row_format=False))["outputs"] == {
        "heat": [[[[1]]]], "masks": [[[[1, 1], [1, 1]]]]}
    instance = {"masks": np.zeros((1, 2, 3, 4), np.uint8), "num_detections": np.array([0], np.int32)}
    instance["masks"][0, 1, 1:, 2] = 1
    row = json.loads(outputs_to_json(instance, row_format=True))["predictions"][0]
    assert row["num_detections"] == 0
    np.testing.assert_array_equal(decode_rles(row["masks"]), instance["masks"][0])
