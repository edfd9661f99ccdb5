"""`kdet serve` against TensorFlow Serving's contract, driven with the stock TF Serving client code.

The served SavedModel is a small detector with kdet's export signatures (`serving_default`: uint8 "images"
[None, 32, 32, 3]; `serving_bytes`: string "image_bytes" [None]; outputs boxes/scores/classes/num_detections).
It contains a convolution, so a wrong-rank tensor reaching it would abort this very test process: the bad-request
tests fail loudly if the server's input checks ever stop working.
"""
import ast
import base64
import graphlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

import kdet.serving
from kdet.serving import codec as serving_json
from kdet.serving.server import ModelServer, main

SIZE, K = 32, 5


class TinyDetector(tf.Module):
    """conv -> pooled features -> K boxes/scores: shaped like a kdet detector's export, small enough to save in 1 s."""

    def __init__(self, seed):
        super().__init__()
        self.conv = tf.Variable(tf.random.stateless_normal([3, 3, 3, 8], seed=[seed, 1]) * 0.05)
        self.dense = tf.Variable(tf.random.stateless_normal([8, 5 * K], seed=[seed, 2]))

    def _detect(self, images):
        x = tf.nn.relu(tf.nn.conv2d(tf.cast(images, tf.float32) / 255.0, self.conv, 1, "SAME"))
        y = tf.matmul(tf.reduce_mean(x, axis=[1, 2]), self.dense)
        scores = tf.sigmoid(y[:, 4 * K:])
        keep = scores > 0.5
        return {"boxes": tf.reshape(tf.sigmoid(y[:, :4 * K]) * SIZE, [-1, K, 4]),
                "scores": scores,
                "classes": tf.where(keep, tf.range(K, dtype=tf.int32)[None] % 3, 0),
                "num_detections": tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.uint8)])
    def serve_images(self, images):
        return self._detect(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve_bytes(self, image_bytes):
        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            return tf.cast(tf.image.resize(image, [SIZE, SIZE], method="nearest"), tf.uint8)
        return self._detect(tf.map_fn(decode, image_bytes, fn_output_signature=tf.uint8))


def save_version(base, version, seed):
    module = TinyDetector(seed)
    tf.saved_model.save(module, str(base / str(version)), signatures={
        "serving_default": module.serve_images.get_concrete_function(),
        "serving_bytes": module.serve_bytes.get_concrete_function()})


def direct(base, version, signature, **inputs):
    fn = tf.saved_model.load(str(base / str(version))).signatures[signature]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def png_bytes(image):
    return tf.io.encode_png(image).numpy()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    save_version(path, 1, seed=1)
    return path


@pytest.fixture(scope="module")
def server(base):
    with ModelServer(base, rest_port=0, grpc_port=0, poll_seconds=0) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)


def rest(server, path, body=None, method=None):
    """(HTTP status, parsed JSON) for one REST call; body: dict (sent as JSON) or raw bytes."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def grpc_request(name="tiny", signature="", version=None, **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def assert_outputs_equal(got, want):
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key], dtype=want[key].dtype), want[key], err_msg=key)


# -- gRPC ---------------------------------------------------------------------------------------------------------
def test_grpc_predict_matches_savedmodel(base, stub):
    x = images(3)
    response = stub[0].Predict(grpc_request(signature="serving_default", images=x), 30)
    assert (response.model_spec.name, response.model_spec.version.value) == ("tiny", 1)
    assert response.model_spec.signature_name == "serving_default"
    got = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    assert_outputs_equal(got, direct(base, 1, "serving_default", images=x))
    assert got["boxes"].shape == (3, K, 4) and got["classes"].dtype == np.int32


def test_grpc_bytes_signature_and_output_filter(base, stub):
    encoded = np.array([png_bytes(im) for im in images(2, seed=5)], dtype=object)
    request = grpc_request(signature="serving_bytes", image_bytes=encoded)
    request.output_filter.extend(["scores", "num_detections"])
    response = stub[0].Predict(request, 30)
    want = direct(base, 1, "serving_bytes", image_bytes=encoded)
    assert set(response.outputs) == {"scores", "num_detections"}
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["scores"]), want["scores"])
    # decoding PNG is lossless, so the bytes path equals the uint8 path on the same pixels
    np.testing.assert_array_equal(want["scores"], direct(base, 1, "serving_default", images=images(2, seed=5))["scores"])


def test_grpc_status_and_metadata(stub):
    status = stub[1].GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "tiny"}), 30)
    assert [(s.version, s.state, s.status.error_code) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)]
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "tiny"},
                                                              metadata_field=["signature_def"])
    response = stub[0].GetModelMetadata(request, 30)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_defs)
    default = signature_defs.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert [d.size for d in default.inputs["images"].tensor_shape.dim] == [-1, SIZE, SIZE, 3]
    assert set(default.outputs) == {"boxes", "scores", "classes", "num_detections"}
    assert signature_defs.signature_def["serving_bytes"].inputs["image_bytes"].dtype == tf.string.as_datatype_enum


@pytest.mark.parametrize("request_kwargs, code, text", [
    (dict(images=np.zeros((SIZE, SIZE, 3), np.uint8)), grpc.StatusCode.INVALID_ARGUMENT, "expects shape"),  # rank 3
    (dict(images=np.zeros((1, SIZE, SIZE + 1, 3), np.uint8)), grpc.StatusCode.INVALID_ARGUMENT, "expects shape"),
    (dict(images=np.zeros((1, SIZE, SIZE, 3), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "expects dtype uint8"),
    (dict(pixels=np.zeros((1, SIZE, SIZE, 3), np.uint8)), grpc.StatusCode.INVALID_ARGUMENT, "Missing but required"),
    (dict(name="nope", images=images(1)), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    (dict(version=7, images=images(1)), grpc.StatusCode.NOT_FOUND, "Specific(tiny, 7)"),
    (dict(signature="nope", images=images(1)), grpc.StatusCode.FAILED_PRECONDITION, '"nope" not found'),
    (dict(signature="serving_bytes", image_bytes=np.array([b"not an image"], object)),
     grpc.StatusCode.INVALID_ARGUMENT, "item 0: cannot decode the image: not a JPEG, PNG, GIF, BMP or WebP image"),
])
def test_grpc_bad_request_then_good_request(base, stub, request_kwargs, code, text):
    with pytest.raises(grpc.RpcError) as caught:
        stub[0].Predict(grpc_request(**request_kwargs), 30)
    assert caught.value.code() == code and text in caught.value.details()
    response = stub[0].Predict(grpc_request(images=images(1)), 30)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["boxes"]),
                                  direct(base, 1, "serving_default", images=images(1))["boxes"])


def test_grpc_malformed_tensor_proto(stub):
    request = grpc_request(images=images(1))
    request.inputs["images"].tensor_shape.dim[1].size = 10 ** 9  # claims far more elements than it carries
    with pytest.raises(grpc.RpcError) as caught:
        stub[0].Predict(request, 30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- REST -------------------------------------------------------------------------------------------------------
def test_rest_row_and_columnar_formats(base, server):
    x = images(2, seed=3)
    want = direct(base, 1, "serving_default", images=x)
    status, rows = rest(server, "/v1/models/tiny:predict", {"instances": x.tolist()})
    assert status == 200 and len(rows["predictions"]) == 2
    assert_outputs_equal({k: [row[k] for row in rows["predictions"]] for k in want}, want)
    status, columns = rest(server, "/v1/models/tiny/versions/1:predict",
                           {"signature_name": "serving_default", "inputs": {"images": x.tolist()}})
    assert status == 200
    assert_outputs_equal(columns["outputs"], want)


def test_rest_b64_bytes_signature(base, server):
    x = images(2, seed=4)
    encoded = [png_bytes(im) for im in x]
    want = direct(base, 1, "serving_bytes", image_bytes=np.array(encoded, dtype=object))
    b64 = [{"b64": base64.b64encode(data).decode()} for data in encoded]
    status, rows = rest(server, "/v1/models/tiny:predict", {"signature_name": "serving_bytes", "instances": b64})
    assert status == 200
    assert_outputs_equal({k: [row[k] for row in rows["predictions"]] for k in want}, want)
    status, columns = rest(server, "/v1/models/tiny:predict",
                           {"signature_name": "serving_bytes", "inputs": {"image_bytes": b64}})
    assert status == 200
    assert_outputs_equal(columns["outputs"], want)


def test_rest_status_and_metadata(server):
    assert rest(server, "/v1/models/tiny") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    assert rest(server, "/v1/models/tiny/versions/1")[1]["model_version_status"][0]["version"] == "1"
    status, metadata = rest(server, "/v1/models/tiny/metadata")
    assert status == 200
    assert metadata["model_spec"] == {"name": "tiny", "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["images"]["dtype"] == "DT_UINT8"
    assert signatures["serving_bytes"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert rest(server, "/v1/models/nope")[0] == 404
    assert rest(server, "/v1/models/tiny/versions/9") == (404, {"error": "Could not find version 9 of model tiny"})


GOOD_ROW = [[[0, 0, 0]] * SIZE] * SIZE


@pytest.mark.parametrize("path, body, status, text", [
    ("/v1/models/tiny:predict", {"instances": [[[0, 0, 0]] * SIZE]}, 400, "expects shape"),  # rank 3 batch
    ("/v1/models/tiny:predict", {"inputs": GOOD_ROW}, 400, "expects shape"),  # columnar without batch dim
    ("/v1/models/tiny:predict", {"instances": [[[[0, 0]] * SIZE] * SIZE]}, 400, "expects shape"),
    ("/v1/models/tiny:predict", {"instances": [[[[0.5, 0, 0]] * SIZE] * SIZE]}, 400, "is not of expected type: uint8"),
    ("/v1/models/tiny:predict", {"instances": [[[[300, 0, 0]] * SIZE] * SIZE]}, 400, "out of range for uint8"),
    ("/v1/models/tiny:predict", {"instances": [[[[0, 0, 0], [0, 0]]]]}, 400, "not a dense tensor"),
    ("/v1/models/tiny:predict", {"instances": [GOOD_ROW, GOOD_ROW[:3]]}, 400, "Expecting shape"),
    ("/v1/models/tiny:predict", {"signature_name": "serving_bytes", "instances": [{"b64": "%%%not base64"}]},
     400, "Unable to base64 decode"),
    ("/v1/models/tiny:predict", {"signature_name": "serving_bytes", "instances": [{"b64": "bm90IGFuIGltYWdl"}]},
     400, "item 0: cannot decode the image: not a JPEG, PNG, GIF, BMP or WebP image"),
    ("/v1/models/tiny:predict", {"signature_name": "serving_bytes", "instances": [7]}, 400, "expected type: string"),
    ("/v1/models/tiny:predict", {"signature_name": "nope", "instances": [GOOD_ROW]}, 400, '"nope" not found'),
    ("/v1/models/nope:predict", {"instances": [GOOD_ROW]}, 404, "Servable not found for request: Latest(nope)"),
    ("/v1/models/tiny/versions/3:predict", {"instances": [GOOD_ROW]}, 404, "Specific(tiny, 3)"),
    ("/v1/models/tiny:predict", b"{not json", 400, "JSON Parse error"),
    ("/v1/models/tiny:predict", b"", 400, "The document is empty"),
    ("/v1/models/tiny:predict", {"instance": []}, 400, "Missing 'inputs' or 'instances' key"),
    ("/v1/models/tiny:predict", {"instances": []}, 400, "No values in 'instances' array"),
    ("/v1/models/tiny:predict", {"inputs": {"pixels": []}}, 400, "Missing named input: images"),
    ("/v1/models/tiny:classify", {"examples": []}, 501, "classify"),
    ("/v1/models/tiny/labels/stable:predict", {"instances": [GOOD_ROW]}, 400, "Unrecognized servable version label"),
])
def test_rest_bad_request_then_good_request(server, path, body, status, text):
    got_status, got = rest(server, path, body, method="POST")
    assert got_status == status and text in got["error"], got
    ok, rows = rest(server, "/v1/models/tiny:predict", {"instances": [GOOD_ROW]})
    assert ok == 200 and len(rows["predictions"]) == 1


def test_json_number_formatting_matches_tf_serving():
    # WriteDecimal: "%g" if it reads back to the same float, else max_digits10; ".0" on whole numbers.
    values = np.array([0.2, 3.0, 9e6, 3e-5, 0.123456789, -1.5, np.nan, np.inf, -np.inf], np.float32)
    assert serving_json._format_floats(values) == [
        "0.2", "3.0", "9e+06", "3e-05", "0.123456791", "-1.5", "NaN", "Infinity", "-Infinity"]
    parsed = np.array([float(t) for t in serving_json._format_floats(values)], np.float32)
    np.testing.assert_array_equal(parsed, values)  # every text reads back to the exact float32
    text = serving_json.outputs_to_json({"scores": np.array([[0.5, 1.0]], np.float32)}, row_format=True)
    assert json.loads(text) == {"predictions": [[0.5, 1.0]]}  # one output: rows are plain values
    text = serving_json.outputs_to_json({"a": np.zeros((2, 0), np.int32), "b_bytes": np.array([b"\x00", b"x"],
                                                                                              object)}, False)
    assert json.loads(text) == {"outputs": {"a": [[], []], "b_bytes": [{"b64": "AA=="}, {"b64": "eA=="}]}}


def test_concurrent_rest_and_grpc_requests(base, server, stub):
    x = images(1, seed=9)
    want = direct(base, 1, "serving_default", images=x)["boxes"]
    body = {"instances": x.tolist()}

    def call(i):
        if i % 2:
            return tf.make_ndarray(stub[0].Predict(grpc_request(images=x), 60).outputs["boxes"])
        return np.array([row["boxes"] for row in rest(server, "/v1/models/tiny:predict", body)[1]["predictions"]],
                        np.float32)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, range(64)))
    for got in results:
        np.testing.assert_array_equal(got, want)


# -- versions -----------------------------------------------------------------------------------------------------
def wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_new_version_picked_up_and_old_one_still_served(base, tmp_path):
    versions = tmp_path / "tiny"
    shutil.copytree(base / "1", versions / "1")
    x = images(1, seed=11)
    with ModelServer(versions, rest_port=0, grpc_port=None, poll_seconds=0.2) as server:
        assert rest(server, "/v1/models/tiny:predict", {"inputs": x.tolist()})[0] == 200
        (versions / "3").mkdir()  # a half-written export: must not disturb serving
        (versions / "3" / "saved_model.pb").write_bytes(b"truncated")
        save_version(versions, 2, seed=2)
        def listed():
            return [s["version"] for s in rest(server, "/v1/models/tiny")[1]["model_version_status"]]

        assert wait_for(lambda: listed() == ["3", "2", "1"])
        states = {s["version"]: s for s in rest(server, "/v1/models/tiny")[1]["model_version_status"]}
        assert states["3"]["state"] == "END" and states["3"]["status"]["error_code"] != "OK"
        assert [states[v]["state"] for v in ("2", "1")] == ["AVAILABLE", "AVAILABLE"]
        latest = rest(server, "/v1/models/tiny:predict", {"inputs": x.tolist()})[1]["outputs"]
        assert_outputs_equal(latest, direct(versions, 2, "serving_default", images=x))
        pinned = rest(server, "/v1/models/tiny/versions/1:predict", {"inputs": x.tolist()})[1]["outputs"]
        assert_outputs_equal(pinned, direct(versions, 1, "serving_default", images=x))
        assert not np.array_equal(latest["scores"], pinned["scores"])
        shutil.rmtree(versions / "3")
        shutil.rmtree(versions / "2")
        assert wait_for(lambda: listed() == ["1"])
        assert rest(server, "/v1/models/tiny/versions/2:predict", {"inputs": x.tolist()})[0] == 404


def test_cli_main_serves_until_sigterm(base):
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from kdet.serving.server import main; sys.exit(main(sys.argv[1:]))",
         str(base), "--model-name", "cli", "--rest-port", "0", "--grpc-port", "-1"],
        stderr=subprocess.PIPE, text=True)
    port = []

    def read_log():
        for line in process.stderr:
            if "REST on http://127.0.0.1:" in line:
                port.append(int(line.split("127.0.0.1:")[1].split("/")[0]))

    threading.Thread(target=read_log, daemon=True).start()
    try:
        assert wait_for(lambda: port, timeout=60), "server did not start"
        with urllib.request.urlopen(f"http://127.0.0.1:{port[0]}/v1/models/cli", timeout=30) as response:
            assert json.loads(response.read())["model_version_status"][0]["state"] == "AVAILABLE"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_port_in_use_is_a_clear_error(base, server):
    from kdet.errors import ConfigError
    with pytest.raises(ConfigError, match="gRPC cannot bind"):
        ModelServer(base, rest_port=None, grpc_port=server.grpc_port, poll_seconds=0).start()
    second = ModelServer(base, rest_port=server.rest_port, grpc_port=0, poll_seconds=0)
    with pytest.raises(ConfigError, match="REST cannot bind"):
        second.start()
    assert second._grpc is None  # the gRPC server it had started was stopped again
    assert rest(server, "/v1/models/tiny")[0] == 200  # the first server is untouched


def test_main_reports_bad_directory(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "model base directory not found" in capsys.readouterr().err
    save_version(tmp_path, 1, seed=1)
    assert main([str(tmp_path / "1")]) == 2  # a version dir instead of the base dir
    assert "pass its parent directory" in capsys.readouterr().err


# -- a real kdet model, exported by kdet.export ------------------------------------------------------------------
@pytest.mark.slow
def test_serves_a_kdet_export_like_keras(tmp_path):
    from kdet.export.saved_model import export_saved_model
    from kdet.models.classloc import ClassLocModel

    keras.utils.set_random_seed(3)  # one fixed model: an unseeded one failed a run with a near-tie
    model = ClassLocModel(num_classes=3, image_size=(64, 64), widths=(8, 16), hidden=16,
                          class_names=["circle", "square", "triangle"])
    export_saved_model(model, tmp_path / "classloc")  # with class names: string variables + assets.extra/labels.txt
    x = images(2, seed=21).repeat(2, axis=1).repeat(2, axis=2)  # [2, 64, 64, 3]
    keras_out = {k: np.asarray(v) for k, v in model.detect(tf.constant(x, tf.float32)).items()}
    jpeg = tf.io.encode_jpeg(np.ascontiguousarray(x[0, :48]), quality=95).numpy()  # 48x64: serving_bytes resizes
    with ModelServer(tmp_path / "classloc", rest_port=0, grpc_port=0, poll_seconds=0) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                grpc_request(name="classloc", images=x), 30)
        served = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
        assert set(served) == {"boxes", "scores", "classes", "num_detections"}
        for key in keras_out:  # boxes are pixels up to 64, where float32's spacing is 7.6e-6: allow a few ulps
            np.testing.assert_allclose(served[key], keras_out[key], atol=1e-4, err_msg=key)
        status, body = rest(server, "/v1/models/classloc:predict", {
            "signature_name": "serving_bytes", "instances": [{"b64": base64.b64encode(jpeg).decode()}]})
        assert status == 200
        assert_outputs_equal({k: [v] for k, v in body["predictions"][0].items()},
                             direct(tmp_path / "classloc", 1, "serving_bytes", image_bytes=np.array([jpeg], object)))
        # a real conv net: this request would abort the process if it reached the graph
        assert rest(server, "/v1/models/classloc:predict", {"inputs": x[0].tolist()})[0] == 400
        assert rest(server, "/v1/models/classloc:predict", {"inputs": x.tolist()})[0] == 200


# -- package structure -------------------------------------------------------------------------------------------
def serving_imports():
    """{module: serving modules it imports} for kdet/serving/*.py, function-level imports included."""
    directory = Path(kdet.serving.__file__).parent
    modules = {f"kdet.serving.{p.stem}": p for p in directory.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for module, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):  # from kdet.serving import codec counts as kdet.serving.codec
                base = f"kdet.serving.{node.module or ''}".rstrip(".") if node.level else node.module
                found.update([base] + [f"{base}.{alias.name}" for alias in node.names])
        graph[module] = found & set(modules) - {module}
    return graph


def test_serving_modules_import_one_way():
    graph = serving_imports()
    assert graph["kdet.serving.server"] >= {"kdet.serving.core", "kdet.serving.rest", "kdet.serving.grpc_service"}
    assert graph["kdet.serving.core"] == set()  # the base of the package
    assert graph["kdet.serving.limits"] == {"kdet.serving.core"}  # under both wire formats, which enforce it
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the modules of a cycle
    with pytest.raises(graphlib.CycleError):  # what the old lazy import core -> rest made
        graphlib.TopologicalSorter(dict(graph, **{"kdet.serving.core": {"kdet.serving.rest"}})).prepare()
