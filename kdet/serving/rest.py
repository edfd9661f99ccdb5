"""REST side of `kdet serve`: TensorFlow Serving's HTTP API on the standard library's ThreadingHTTPServer.

Paths and error texts follow TensorFlow Serving (http_rest_api_handler.cc); the JSON tensor formats live in
`codec.py`. Errors come back as {"error": "..."} with TF Serving's HTTP mapping of status codes
(INVALID_ARGUMENT and FAILED_PRECONDITION 400, NOT_FOUND 404, UNIMPLEMENTED 501, ...).
"""
import json
import logging
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from kdet.errors import ConfigError
from kdet.serving.core import ServingError, invalid_argument
from kdet.serving.codec import columns_to_inputs, instances_to_inputs, outputs_to_json, short_json
from kdet.serving.grpc_service import SIGNATURE_DEF_FIELD, get_model_metadata, get_model_status
from kdet.serving.limits import Limits, run_checked

log = logging.getLogger("kdet.serve")

_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                          re.I)

# TF Serving's http_server.cc ToHTTPStatusCode.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.UNAUTHENTICATED: 401,
}


# -- request handling -------------------------------------------------------------------------------------------
def _predict(repository, name, version, body, limits):
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise invalid_argument(f"JSON Parse error: {error}") from None
    if not isinstance(document, dict):
        raise invalid_argument(f"JSON Value: {short_json(document)} Is not object")
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise invalid_argument(f"JSON Value: {short_json(document)} not formatted correctly. 'signature_name' key must "
                               f"be a string value.")
    servable = repository.servable(name, version)
    if (signature_name or "serving_default") not in servable.signatures:
        raise invalid_argument(f'Serving signature name: "{signature_name or "serving_default"}" not found in '
                               f'signature def')
    signature = servable.signature(signature_name)
    if "instances" in document and "inputs" in document:
        raise invalid_argument("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if "instances" in document:
        inputs, row_format = instances_to_inputs(document["instances"], signature.inputs), True
    elif "inputs" in document:
        inputs, row_format = columns_to_inputs(document["inputs"], signature.inputs), False
    else:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    return outputs_to_json(run_checked(signature, inputs, limits), row_format)


def _proto_dict(message):
    # TF Serving prints metadata with proto field names and default values (http_rest_api_util.cc ToJsonString).
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _parse_version(text):
    if text is None:
        return None
    if int(text) >= 2 ** 63:
        raise invalid_argument(f"Failed to convert version: {text} to numeric.")
    return int(text)


def _model_spec(request, name, version, label):
    request.model_spec.name = name
    if version is not None and label is not None:
        raise invalid_argument(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    return request


def handle_request(repository, method, path, body, limits=None):
    """One REST request -> (HTTP status, JSON text). Pure function of the repository and `Limits` (default: the
    defaults); the HTTP server wraps it."""
    try:
        if method == "POST" and (match := _PREDICT_PATH.fullmatch(path)):
            name, version, label, verb = match.groups()
            if verb.lower() != "predict":
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"{verb} needs tf.Example signatures; kdet models serve :predict")
            if label is not None:
                raise invalid_argument(f"Unrecognized servable version label: {unquote(label)}")
            return 200, _predict(repository, unquote(name), _parse_version(version), body, limits or Limits())
        if method == "GET" and (match := _STATUS_PATH.fullmatch(path)):
            name, version, label, metadata = match.groups()
            if not name:
                raise invalid_argument("Missing model name in request.")
            version = _parse_version(version)
            label = None if label is None else unquote(label)
            if metadata:
                request = _model_spec(get_model_metadata_pb2.GetModelMetadataRequest(), unquote(name), version, label)
                request.metadata_field.append(SIGNATURE_DEF_FIELD)
                response = get_model_metadata(repository, request)
                signature_defs = get_model_metadata_pb2.SignatureDefMap()
                response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_defs)
                return 200, json.dumps({"model_spec": _proto_dict(response.model_spec),
                                        "metadata": {"signature_def": _proto_dict(signature_defs)}}, indent=1)
            request = _model_spec(get_model_status_pb2.GetModelStatusRequest(), unquote(name), version, label)
            response = get_model_status(repository, request)
            return 200, json_format.MessageToJson(response, always_print_fields_with_no_presence=True, indent=1)
        raise invalid_argument(f"Malformed request: {method} {path}")
    except ServingError as error:
        return HTTP_STATUS.get(error.code, 500), json.dumps({"error": error.message})
    except RecursionError:
        return 400, json.dumps({"error": "JSON Parse error: the document is nested too deeply"})


class _Refused(Exception):
    """A request answered before (or instead of) reading its body: HTTP `status`, `message`; the connection closes."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


class _ClientGone(Exception):
    """The client closed the connection mid-request: nothing to answer, nothing to log above debug."""


_QUIET = (ConnectionError, TimeoutError, _ClientGone)  # a client's doing, not a server error


class _Handler(BaseHTTPRequestHandler):
    """One connection: keep-alive requests, each read under the server's Limits.

    A connection waits `idle_timeout` for a request to start; once its first byte arrives, the headers and body must
    arrive within `request_timeout` (a watchdog then shuts the socket's read side and the request gets 408). Bodies
    over `max_body_bytes` get 413 from their Content-Length, or while a chunked body is counted, and are never stored.
    """
    protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving's evhttp server
    server_version = "kdet-serve"
    repository = limits = None  # set on the per-server subclass

    def handle_one_request(self):
        self._expired = False
        self.connection.settimeout(self.limits.idle_timeout)
        try:
            if not self.rfile.peek(1):  # the client closed an idle connection
                self.close_connection = True
                return
        except TimeoutError:  # idle for idle_timeout: close without an answer, as HTTP servers do
            log.debug("closing a connection from %s idle for %gs", self.address_string(), self.limits.idle_timeout)
            self.close_connection = True
            return
        # Bounds each read and each write (to a client that does not read); one second over the watchdog's deadline,
        # so that a stalled read ends by the watchdog, which answers 408, not by a timeout, which cannot.
        self.connection.settimeout(self.limits.request_timeout + 1.0)
        watchdog = threading.Timer(self.limits.request_timeout, self._expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            super().handle_one_request()
        finally:
            watchdog.cancel()
        if self._expired:
            self.close_connection = True

    def _expire(self):
        """The request did not arrive within request_timeout: end its reads (they return EOF), keep the write side."""
        self._expired = True
        try:
            self.connection.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def send_error(self, code, message=None, explain=None):
        if self._expired:  # the stdlib's header parser saw the EOF the watchdog made
            code, message = 408, f"request not received within {self.limits.request_timeout:g} s"
        self.close_connection = True
        self._send(code, json.dumps({"error": message or self.responses.get(code, ("error",))[0]}))

    def handle_expect_100(self):
        try:
            self._check_length()
        except _Refused as refused:  # answer before the client sends the body at all
            self.close_connection = True
            self._send(refused.status, json.dumps({"error": refused.message}))
            return False
        return super().handle_expect_100()

    def _check_length(self):
        """Content-Length as an int (0 when absent); 400 when malformed, 413 when over max_body_bytes."""
        text = self.headers.get("Content-Length")
        if text is None:
            return 0
        if not re.fullmatch(r"\s*[0-9]+\s*", text):  # ASCII digits only: str.isdigit() also takes "\xb2"
            raise _Refused(400, f"Content-Length is not a number: {text[:40]!r}")
        if int(text) > self.limits.max_body_bytes:
            raise _Refused(413, f"request body of {int(text)} bytes is larger than this server's limit of "
                                f"{self.limits.max_body_bytes} bytes (kdet serve --max-body-bytes)")
        return int(text)

    def _read_exactly(self, size):
        data = self.rfile.read(size)
        if len(data) < size:
            if self._expired:
                raise _Refused(408, f"request not received within {self.limits.request_timeout:g} s")
            raise _ClientGone()
        return data

    def _read_chunked(self):
        """A Transfer-Encoding: chunked body, counted against max_body_bytes as it is read."""
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1026)
            if not line.endswith(b"\n"):
                if len(line) < 1026:  # the stream ended: the watchdog or the client closed it
                    self._read_exactly(1)
                raise _Refused(400, "malformed chunked body: a chunk size line is longer than 1024 bytes")
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _Refused(400, f"malformed chunk size line: {line[:40]!r}") from None
            if size == 0:
                break
            total += size
            if total > self.limits.max_body_bytes:
                raise _Refused(413, f"chunked request body is larger than this server's limit of "
                                    f"{self.limits.max_body_bytes} bytes (kdet serve --max-body-bytes)")
            parts.append(self._read_exactly(size))
            if self._read_exactly(2) != b"\r\n":
                raise _Refused(400, "malformed chunked body: a chunk does not end with CRLF")
        while self.rfile.readline(65537).strip():  # trailer fields, ignored
            pass
        return b"".join(parts)

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self._check_length()
        return self._read_exactly(length) if length else b""

    def _dispatch(self):
        path = urlsplit(self.path).path
        try:
            body = self._read_body()
            if self._expired:
                raise _Refused(408, f"request not received within {self.limits.request_timeout:g} s")
            if not re.fullmatch(r"/v1/.*", path, re.I):
                status, text = 404, json.dumps({"error": f"Unknown path {path}: the API lives under /v1/models/"})
            else:
                status, text = handle_request(self.repository, self.command, path, body, self.limits)
        except _Refused as refused:  # the rest of the body stays unread: this connection cannot carry another request
            self.close_connection = True
            self._send(refused.status, json.dumps({"error": refused.message}))
            self._linger()
            return
        except _QUIET:
            log.debug("client %s left during %s %s", self.address_string(), self.command, path)
            self.close_connection = True
            return
        except Exception as error:  # a bug must cost one request, not the server
            log.exception("internal error on %s %s", self.command, path)
            status, text = 500, json.dumps({"error": f"internal error: {type(error).__name__}: {error}"})
        self._send(status, text)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def _send(self, status, text):
        """Write one JSON response; a client that is gone (or stops reading) just loses it."""
        payload = text.encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except _QUIET:
            log.debug("client %s left before its %d answer", self.address_string(), status)
            self.close_connection = True

    def _linger(self, seconds=1.0):
        """After answering a body left unread: discard what the client still sends, for at most `seconds`, so it
        reads the answer instead of a connection reset (nginx's lingering close). Nothing is kept."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(1 << 16):
                    break
        except OSError:  # timeouts and resets included: the connection is closed next either way
            pass

    def log_message(self, format, *args):  # BaseHTTPRequestHandler's signature
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    """At most `limits.rest_threads` connections are handled at once; the next ones wait in the listen queue."""
    daemon_threads = True
    request_queue_size = 512  # many clients connecting at once must queue, not be refused (default 5)

    def __init__(self, address, handler, limits):
        self._slots = threading.BoundedSemaphore(limits.rest_threads)
        self._closing = False
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        while not self._slots.acquire(timeout=0.2):  # every handler busy: this connection waits its turn
            if self._closing:
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, _QUIET):  # e.g. a reset while the headers were read: the client's doing
            log.debug("client %s left: %s", client_address[0], error)
        else:
            log.exception("internal error on a connection from %s", client_address[0])

    def shutdown(self):
        self._closing = True
        super().shutdown()


def start_rest_server(repository, host, port, limits=None):
    """Start the REST server on host:port (0 = a free port) in a daemon thread; returns the ThreadingHTTPServer."""
    limits = limits or Limits()
    handler = type("Handler", (_Handler,), {"repository": repository, "limits": limits})
    try:
        server = _Server((host, port), handler, limits)
    except OSError as error:
        raise ConfigError(f"REST cannot bind {host}:{port}: {error.strerror or error}") from None
    threading.Thread(target=server.serve_forever, name="kdet-rest", daemon=True).start()
    return server
