"""`kdet serve` under load: 200 concurrent requests over REST and over gRPC on 127.0.0.1, latency and errors.

    python benchmarks/bench_serving.py                    # ClassLocModel (random init) at 96x96, 200 clients
    python benchmarks/bench_serving.py --clients 50 --rounds 4 --size 128

A kdet model is exported with `kdet.export.saved_model.export_saved_model` into a temporary model base directory
and served by `kdet.serving.server.ModelServer` in this process (free ports, loopback only). Each round releases
`--clients` threads at once (a barrier), each sending one single-image request: REST with the JSON row format
of raw pixels (urllib, one connection per request, as curl would), REST with a base64 JPEG for `serving_bytes`
(the cheap way to send images as JSON: parsing thousands of pixel integers dominates the raw-pixel case), and gRPC
with the stock `PredictionServiceStub` on a shared channel. Every response is compared with the SavedModel called directly on the same image, so "errors" counts
failed calls and wrong answers alike. Prints one JSON line per figure: for each protocol the single-client p50
(compared with the in-process signature call on the same image, the protocol's own overhead), then errors, p50, p99
and throughput of the bursts (which queue: 2 cores serve 200 requests that arrive together). The run is bounded: rounds x clients requests, 120 s timeout each.
"""
import argparse
import base64
import json
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from kdet.export.saved_model import export_saved_model
from kdet.serving.server import ModelServer
from kdet.models.classloc import ClassLocModel


def emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": round(float(value), 4), "unit": unit, **extra}), flush=True)


def burst(call, clients, rounds):
    """`rounds` bursts of `clients` simultaneous calls; returns (latencies in ms, error count, wall seconds)."""
    latencies, errors = [], []
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for round_index in range(rounds):
            barrier = threading.Barrier(clients)

            def one(i):
                barrier.wait(timeout=120)
                began = time.perf_counter()
                try:
                    ok = call(round_index * clients + i)
                except Exception as error:  # counted, and the first few are shown
                    ok = f"{type(error).__name__}: {error}"
                return (time.perf_counter() - began) * 1000, ok

            for latency, ok in pool.map(one, range(clients)):
                latencies.append(latency)
                if ok is not True:
                    errors.append(ok)
    for message in errors[:3]:
        print(f"# error: {str(message)[:300]}", flush=True)
    return np.array(latencies), len(errors), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()

    size = (args.size, args.size)
    model = ClassLocModel(num_classes=3, image_size=size, widths=(32, 64, 96, 128), hidden=128)
    images = np.random.default_rng(0).integers(0, 256, (16, *size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        version_dir = export_saved_model(model, f"{tmp}/classloc")
        signature = tf.saved_model.load(version_dir).signatures["serving_default"]
        expected = [{k: v.numpy() for k, v in signature(images=tf.constant(im[None])).items()} for im in images]
        jpegs = [tf.io.encode_jpeg(im, quality=90).numpy() for im in images]
        bytes_signature = tf.saved_model.load(version_dir).signatures["serving_bytes"]
        expected_bytes = [{k: v.numpy() for k, v in bytes_signature(image_bytes=tf.constant([j])).items()}
                          for j in jpegs]
        direct = []
        for i in range(50):
            began = time.perf_counter()
            signature(images=tf.constant(images[i % 16][None]))
            direct.append((time.perf_counter() - began) * 1000)
        emit("direct_signature_p50", np.median(direct), "ms", note="in-process call, batch 1")

        with ModelServer(f"{tmp}/classloc", rest_port=0, grpc_port=0, poll_seconds=0,
                         grpc_workers=8) as server:
            rest_url = f"http://127.0.0.1:{server.rest_port}/v1/models/classloc:predict"
            bodies = [json.dumps({"instances": im[None].tolist()}).encode() for im in images]

            b64_bodies = [json.dumps({"signature_name": "serving_bytes", "instances": [
                {"b64": base64.b64encode(j).decode()}]}).encode() for j in jpegs]

            def post(body, want):
                request = urllib.request.Request(rest_url, data=body)
                with urllib.request.urlopen(request, timeout=120) as response:
                    row = json.loads(response.read())["predictions"][0]
                return all(np.allclose(np.asarray(row[k]), want[k][0], atol=1e-6) for k in want)

            def rest_call(i):
                return post(bodies[i % 16], expected[i % 16])

            def rest_b64_call(i):
                return post(b64_bodies[i % 16], expected_bytes[i % 16])

            channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            protos = [tf.make_tensor_proto(im[None]) for im in images]

            def grpc_call(i):
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "classloc"
                request.inputs["images"].CopyFrom(protos[i % 16])
                response = stub.Predict(request, 120)
                want = expected[i % 16]
                return all(np.array_equal(tf.make_ndarray(response.outputs[k]), want[k]) for k in want)

            for name, call in (("rest", rest_call), ("rest_b64_jpeg", rest_b64_call), ("grpc", grpc_call)):
                call(0)  # warm-up (first connection, first trace)
                alone, _, _ = burst(call, 1, 30)  # one client: the protocol's own cost per request
                emit(f"{name}_single_client_p50", np.median(alone), "ms", clients=1, requests=30)
                emit(f"{name}_single_client_p50_over_direct", np.median(alone) / np.median(direct), "ratio")
                latencies, errors, wall = burst(call, args.clients, args.rounds)
                extra = {"clients": args.clients, "requests": len(latencies)}
                emit(f"{name}_errors", errors, "count", **extra)
                emit(f"{name}_p50", np.percentile(latencies, 50), "ms", **extra)
                emit(f"{name}_p99", np.percentile(latencies, 99), "ms", **extra)
                emit(f"{name}_throughput", len(latencies) / wall, "requests/s", **extra)
            channel.close()


if __name__ == "__main__":
    main()
