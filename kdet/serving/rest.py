"""REST side of `kdet serve`: TensorFlow Serving's HTTP API on the standard library's ThreadingHTTPServer.

Paths and error texts follow TensorFlow Serving (http_rest_api_handler.cc); the JSON tensor formats live in
`codec.py`. Errors come back as {"error": "..."} with TF Serving's HTTP mapping of status codes
(INVALID_ARGUMENT and FAILED_PRECONDITION 400, NOT_FOUND 404, UNIMPLEMENTED 501, ...).
"""
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from kdet.errors import ConfigError
from kdet.serving.core import ServingError, invalid_argument, run_signature
from kdet.serving.codec import columns_to_inputs, instances_to_inputs, outputs_to_json, short_json
from kdet.serving.grpc_service import SIGNATURE_DEF_FIELD, get_model_metadata, get_model_status

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
def _predict(repository, name, version, body):
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
    return outputs_to_json(run_signature(signature, inputs), row_format)


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


def handle_request(repository, method, path, body):
    """One REST request -> (HTTP status, JSON text). Pure function of the repository; the HTTP server wraps it."""
    try:
        if method == "POST" and (match := _PREDICT_PATH.fullmatch(path)):
            name, version, label, verb = match.groups()
            if verb.lower() != "predict":
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"{verb} needs tf.Example signatures; kdet models serve :predict")
            if label is not None:
                raise invalid_argument(f"Unrecognized servable version label: {unquote(label)}")
            return 200, _predict(repository, unquote(name), _parse_version(version), body)
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving's evhttp server
    server_version = "kdet-serve"
    repository = None  # set on the per-server subclass

    def _dispatch(self):
        path = urlsplit(self.path).path
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            if not re.fullmatch(r"/v1/.*", path, re.I):
                status, text = 404, json.dumps({"error": f"Unknown path {path}: the API lives under /v1/models/"})
            else:
                status, text = handle_request(self.repository, self.command, path, body)
        except ValueError:
            status, text = 400, json.dumps({"error": "Content-Length is not a number"})
        except Exception as error:  # a bug must cost one request, not the server
            log.exception("internal error on %s %s", self.command, path)
            status, text = 500, json.dumps({"error": f"internal error: {type(error).__name__}: {error}"})
        payload = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def log_message(self, format, *args):  # BaseHTTPRequestHandler's signature
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # many clients connecting at once must queue, not be refused (default 5)


def start_rest_server(repository, host, port):
    """Start the REST server on host:port (0 = a free port) in a daemon thread; returns the ThreadingHTTPServer."""
    handler = type("Handler", (_Handler,), {"repository": repository})
    try:
        server = _Server((host, port), handler)
    except OSError as error:
        raise ConfigError(f"REST cannot bind {host}:{port}: {error.strerror or error}") from None
    threading.Thread(target=server.serve_forever, name="kdet-rest", daemon=True).start()
    return server
