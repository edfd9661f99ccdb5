"""`kdet serve` under abuse: the limits answer, the server keeps serving, its memory stays bounded, its log stays clean.

The server runs as a `kdet serve` subprocess (its own resident memory is read from /proc/<pid>/status and its log is
checked for tracebacks) with limits small enough for a fast test: 2 MB bodies, 4 MP images, 1 s request and idle
timeouts, 16 REST threads. The model is test_serving's TinyDetector (uint8 `images` and string `image_bytes`).
"""
import base64
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import prediction_service_pb2_grpc

from kdet.serving.limits import Limits, image_header
from tests.test_serving import grpc_request, images, png_bytes, save_version, wait_for

REPO = Path(__file__).resolve().parents[1]
MAX_BODY, MAX_PIXELS, TIMEOUT, THREADS = 2_000_000, 4_000_000, 1.0, 16


def zero_png(width, height):
    """An all-zero 8-bit grayscale PNG, compressed row by row (16000 x 16000 -> about 0.25 MB, never 256 MB)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row, parts = zlib.compressobj(9), bytes(width + 1), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


class Served:
    """A `kdet serve` subprocess: its ports, pid and every log line."""

    def __init__(self, base):
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from kdet.serving.server import main; sys.exit(main(sys.argv[1:]))",
             str(base), "--rest-port", "0", "--grpc-port", "0", "--poll-seconds", "0",
             "--max-body-bytes", str(MAX_BODY), "--max-image-pixels", str(MAX_PIXELS),
             "--request-timeout", str(TIMEOUT), "--idle-timeout", str(TIMEOUT), "--rest-threads", str(THREADS)],
            cwd=REPO, stderr=subprocess.PIPE, text=True)
        self.log, self.rest_port, self.grpc_port = [], None, None
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self):
        for line in self.process.stderr:
            self.log.append(line)
            if "REST on http://127.0.0.1:" in line:
                self.rest_port = int(line.split("127.0.0.1:")[1].split("/")[0])
            if "gRPC on 127.0.0.1:" in line:
                self.grpc_port = int(line.split("127.0.0.1:")[1])

    def rss_mb(self):
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024

    def connect(self):
        return socket.create_connection(("127.0.0.1", self.rest_port), timeout=30)

    def post(self, body, path="/v1/models/tiny:predict"):
        """(status, parsed JSON) of one POST over a fresh connection; body: dict (JSON) or bytes."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        with self.connect() as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(data)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + data)
            return parse_response(read_all(sock))


def read_all(sock, timeout=30):
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    parts = []
    while chunk := sock.recv(1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def parse_response(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def bytes_request(data):
    return {"signature_name": "serving_bytes", "instances": [{"b64": base64.b64encode(data).decode()}]}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "tiny"
    save_version(base, 1, seed=1)
    server = Served(base)
    try:
        assert wait_for(lambda: server.rest_port and server.grpc_port, timeout=90), "".join(server.log)
        assert server.post(bytes_request(png_bytes(images(1)[0])))[0] == 200  # warm both signatures up
        assert server.post({"instances": images(1).tolist()})[0] == 200
        yield server
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)


def assert_still_serves(served):
    status, body = served.post(bytes_request(png_bytes(images(1, seed=5)[0])))
    assert status == 200 and set(body["predictions"][0]) == {"boxes", "scores", "classes", "num_detections"}


# -- the image header: read the size of real encoded images without decoding them -------------------------------
def encoded(image, kind, **options):
    buffer = BytesIO()
    frames = image if isinstance(image, list) else [image]
    frames[0].save(buffer, kind, save_all=len(frames) > 1, append_images=frames[1:], **options)
    return buffer.getvalue()


def test_image_header_reads_the_size_of_each_format():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    assert image_header(tf.io.encode_jpeg(np.asarray(rgb)).numpy()) == ("JPEG", 37, 53, 1)
    assert image_header(encoded(rgb, "JPEG", progressive=True)) == ("JPEG", 37, 53, 1)
    assert image_header(png_bytes(np.asarray(rgb))) == ("PNG", 37, 53, 1)
    assert image_header(encoded(rgb, "BMP")) == ("BMP", 37, 53, 1)
    assert image_header(encoded(rgb, "WEBP", lossless=True)) == ("WebP", 37, 53, 1)
    assert image_header(encoded(rgb, "WEBP", quality=80)) == ("WebP", 37, 53, 1)
    assert image_header(encoded([rgb, rgb.rotate(90), rgb.rotate(180)], "GIF")) == ("GIF", 37, 53, 3)
    assert image_header(zero_png(16000, 16000)) == ("PNG", 16000, 16000, 1)
    for data, problem in [(b"", "empty bytes"), (b"garbage!", "not a JPEG, PNG, GIF, BMP or WebP image"),
                          (b"\x89PNG\r\n\x1a\n\0\0", "truncated PNG header"), (b"\xff\x0a\xfa", "JPEG XL")]:
        with pytest.raises(ValueError, match=problem):
            image_header(data)


def test_limits_refuse_nonsense_values():
    with pytest.raises(ValueError, match="max_body_bytes must be at least 1"):
        Limits(max_body_bytes=0)
    with pytest.raises(ValueError, match="idle_timeout must be a positive"):
        Limits(idle_timeout=float("nan"))


# -- the server under abuse ----------------------------------------------------------------------------------------
def test_oversized_png_refused_from_its_header_with_memory_bounded(served):
    png = zero_png(16000, 16000)  # decoding it would take 16000 * 16000 * 3 bytes = 768 MB
    before = served.rss_mb()
    began = time.monotonic()
    status, body = served.post(bytes_request(png))
    seconds = time.monotonic() - began
    assert status == 400 and body["error"] == (
        "input 'image_bytes' item 0: the PNG image is 16000x16000 = 256.0 MP, more than this server's limit of "
        "4.0 MP (kdet serve --max-image-pixels)")
    assert seconds < 2.0, f"refused after {seconds:.1f} s"
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                grpc_request(signature="serving_bytes", image_bytes=np.array([png], object)), 30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "256.0 MP" in caught.value.details()
    assert served.rss_mb() - before < 100, f"resident memory {before:.0f} -> {served.rss_mb():.0f} MB"
    assert_still_serves(served)


def test_oversized_body_refused_before_it_is_read(served):
    with served.connect() as sock:  # announces 100 MB and sends none of it: the answer must not wait for it
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n")
        began = time.monotonic()
        status, body = parse_response(read_all(sock))
    assert status == 413 and time.monotonic() - began < 3 * TIMEOUT  # not 408: it did not wait for the body
    assert body["error"] == ("request body of 100000000 bytes is larger than this server's limit of 2000000 bytes "
                             "(kdet serve --max-body-bytes)")
    for length in (b"-5", b"\xb2", b"12abc"):  # not a length at all
        with served.connect() as sock:
            sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: t\r\nContent-Length: " + length + b"\r\n\r\n")
            status, body = parse_response(read_all(sock))
        assert status == 400 and body["error"].startswith("Content-Length is not a number: "), body
    with served.connect() as sock:  # a client that asks first (Expect: 100-continue) is refused before sending
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: t\r\nContent-Length: 3000000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        raw = read_all(sock)
    assert raw.startswith(b"HTTP/1.1 413 ") and parse_response(raw)[0] == 413 and b"Connection: close" in raw
    # a client that sends its 3 MB body anyway still reads the 413 (the server discards the rest, keeps nothing)
    assert served.post(b"x" * 3_000_000)[0] == 413
    with served.connect() as sock:  # chunked bodies are counted as they arrive
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"".join(b"%x\r\n" % 500_000 + b"y" * 500_000 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n")
        status, body = parse_response(read_all(sock))
    assert status == 413 and "chunked request body is larger than this server's limit" in body["error"]
    with served.connect() as sock:  # a small chunked body is read as any other
        data = json.dumps(bytes_request(png_bytes(images(1)[0]))).encode()
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n" + b"%x\r\n" % 100 + data[:100] + b"\r\n"
                     + b"%x\r\n" % (len(data) - 100) + data[100:] + b"\r\n0\r\n\r\n")
        assert parse_response(read_all(sock))[0] == 200
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                grpc_request(images=np.zeros([700, 32, 32, 3], np.uint8)), 30)  # 2.15 MB of pixels
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serves(served)


def test_stalled_connections_are_closed_and_later_clients_wait_their_turn(served):
    sockets = [served.connect() for _ in range(50)]  # more than the 16 REST threads
    for sock in sockets[25:]:  # half start a request and stall in its headers, half send nothing at all
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: t\r\nContent-Len")
    began = time.monotonic()
    status, _ = served.post(bytes_request(png_bytes(images(1)[0])))  # queued behind the 50 stalled ones
    waited = time.monotonic() - began
    assert status == 200 and waited < 12 * TIMEOUT, f"a normal request waited {waited:.1f} s"
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda sock: read_all(sock, timeout=15), sockets))
    assert time.monotonic() - began < 15
    assert answers[:25] == [b""] * 25  # idle: closed without an answer
    for raw in answers[25:]:  # started: 408, then closed
        assert parse_response(raw) == (408, {"error": "request not received within 1 s"})
    for sock in sockets:
        sock.close()
    assert_still_serves(served)


def test_content_length_larger_than_the_body_times_out(served):
    with served.connect() as sock:
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{\"inst")
        began = time.monotonic()
        status, body = parse_response(read_all(sock))
    assert (status, body) == (408, {"error": "request not received within 1 s"})
    assert time.monotonic() - began < 3 * TIMEOUT
    assert_still_serves(served)


def test_undecodable_bytes_answer_a_clear_400(served):
    status, body = served.post(bytes_request(b"\x00garbage, not an image"))
    assert (status, body) == (400, {"error": "input 'image_bytes' item 0: cannot decode the image: not a JPEG, PNG, "
                                             "GIF, BMP or WebP image (first bytes: 00 67 61 72 62 61 67 65)"})
    truncated = png_bytes(images(1)[0])[:60]  # a valid header, then nothing: only the decoder can tell
    status, body = served.post(bytes_request(truncated))
    assert status == 400 and body["error"].startswith("input 'image_bytes': cannot decode the image: ")
    assert "Graph execution" not in body["error"] and "function_node" not in body["error"]
    assert_still_serves(served)


def test_client_disconnects_leave_no_traceback(served):
    with served.connect() as sock:  # leaves in the middle of its body
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{\"in")
    data = json.dumps(bytes_request(png_bytes(images(1)[0]))).encode()
    for _ in range(3):  # sends a whole request, then resets the connection before the answer
        sock = served.connect()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(data)
                     + data)
        sock.close()
    with served.connect() as sock:  # resets in the middle of its headers
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"GET /v1/models/tiny HTTP/1.1\r\nHo")
    time.sleep(0.5)
    assert_still_serves(served)
    log = "".join(served.log)
    assert "Traceback" not in log and "Error" not in log, log[-3000:]
