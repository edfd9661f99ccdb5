"""`kdet serve`: TensorFlow Serving's REST and gRPC contract for kdet SavedModels.

No `tensorflow_model_server` binary can be installed from PyPI or Debian, so kdet ships a small server that speaks
the same contract, built on TensorFlow Serving's own protos (`tensorflow-serving-api`). A client written for
TensorFlow Serving (`PredictionServiceStub`, `predict_pb2.PredictRequest`, or REST JSON) talks to it unchanged:

    REST   GET  /v1/models/NAME[/versions/N]             model status
           GET  /v1/models/NAME[/versions/N]/metadata    signature defs
           POST /v1/models/NAME[/versions/N]:predict     {"instances": [...]} or {"inputs": ...}
    gRPC   PredictionService.Predict, PredictionService.GetModelMetadata, ModelService.GetModelStatus

It serves MODEL_BASE_DIR/<version>/ (the layout `kdet export` writes and TensorFlow Serving loads): requests without
a version get the highest one, a new version directory is picked up by polling, without a restart.

Every request is checked against the signature's TensorSpec (input names, dtype, rank, static dims) before the
signature is called: a loaded signature does not check shapes itself, and a wrong-rank tensor reaching a convolution
aborts the whole process (`tensor_format.h Check failed`). Errors carry TensorFlow Serving's status codes
(INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION) and, on REST, its HTTP mapping with `{"error": "..."}`.

    kdet serve saved_models/classloc_shapes --rest-port 8501 --grpc-port 8500
    curl -d '{"signature_name": "serving_bytes", "instances": [{"b64": "'$(base64 -w0 img.jpg)'"}]}' \
        http://127.0.0.1:8501/v1/models/classloc_shapes:predict

Differences from tensorflow_model_server: port 0 picks a free port (TF Serving: 0 turns REST off; here -1 does, or
None in Python); one model per server, no model config file, so version labels are refused (INVALID_ARGUMENT);
Classify / Regress / MultiInference (tf.Example APIs) answer UNIMPLEMENTED; no request batching. By default every
version on disk is served (TF Serving's `all` policy; `num_versions=N` keeps the newest N, its `latest` policy).

This module holds the model repository, the request checks and the `serve` / `main` entry points;
`serving_rest.py` (with `serving_json.py`) and `serving_grpc.py` translate the two wire formats.
"""
import argparse
import logging
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from kdet.errors import ConfigError

log = logging.getLogger("kdet.serve")

DEFAULT_SIGNATURE = "serving_default"
# A TensorProto can claim a huge shape with a single broadcast value; refuse it before numpy allocates it.
MAX_REQUEST_ELEMENTS = 1 << 28

_GRPC_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request failed with a TensorFlow Serving status: `code` is a `grpc.StatusCode`, `message` the detail."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_argument(message):
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class Signature:
    """One callable signature of a loaded SavedModel.

    inputs / outputs: {key: tf.TensorSpec}; fn is called with keyword tensors and returns {key: tensor}.
    """
    name: str
    fn: object
    inputs: dict
    outputs: dict


class Servable:
    """One loaded version: MODEL_BASE_DIR/<version>/ read with `tf.saved_model.load`."""

    def __init__(self, name, version, path):
        self.name = name
        self.version = int(version)
        self.path = Path(path)
        self._module = tf.saved_model.load(str(self.path))  # keeps the variables alive for the signatures
        self.signatures = {
            key: Signature(key, fn, dict(fn.structured_input_signature[1]), dict(fn.structured_outputs))
            for key, fn in self._module.signatures.items()}
        self.signature_def_map = read_signature_defs(self.path)

    def signature(self, name):
        """Signature `name` ("" means serving_default); FAILED_PRECONDITION as TensorFlow Serving when absent."""
        key = name or DEFAULT_SIGNATURE
        if key not in self.signatures:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        return self.signatures[key]


def read_signature_defs(saved_model_dir):
    """SignatureDefs of the "serve" MetaGraph as TensorFlow Serving's `SignatureDefMap` proto (for GetModelMetadata)."""
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    graphs = [g for g in proto.meta_graphs if "serve" in g.meta_info_def.tags] or list(proto.meta_graphs)
    result = get_model_metadata_pb2.SignatureDefMap()
    for key, signature_def in graphs[0].signature_def.items():
        result.signature_def[key].CopyFrom(signature_def)
    return result


def _spec_shape(spec):
    return "[" + ",".join("-1" if d is None else str(d) for d in spec.shape.as_list()) + "]"


def check_inputs(signature, inputs):
    """Raise INVALID_ARGUMENT unless `inputs` {key: np.ndarray} match the signature's names, dtypes and shapes.

    This is the guard that keeps a malformed request from reaching the graph (see the module docstring).
    """
    expected, sent = set(signature.inputs), set(inputs)
    if expected != sent:
        # TensorFlow Serving's wording (predict_util.cc VerifyRequestInputsSize).
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sorted(sent))}}}) "
            f"!= len({{{','.join(sorted(expected))}}}). Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
    for key, spec in signature.inputs.items():
        array = inputs[key]
        dtype = tf.string if array.dtype == object or array.dtype.kind == "S" else tf.as_dtype(array.dtype)
        if dtype != spec.dtype:
            raise invalid_argument(f"input '{key}' of signature '{signature.name}' expects dtype {spec.dtype.name} "
                                   f"but got {dtype.name}")
        if not spec.shape.is_compatible_with(array.shape):
            raise invalid_argument(f"input '{key}' of signature '{signature.name}' expects shape {_spec_shape(spec)} "
                                   f"(-1 = any size) but got [{','.join(str(d) for d in array.shape)}]")


def _tf_error_message(error):
    """The one informative line of a TF runtime error, without 'Graph execution error' and node traces."""
    lines = [line.strip() for line in error.message.splitlines()]
    noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[", "")
    useful = [line for line in lines if not line.startswith(noise)]
    return re.sub(r"\s*\[Op:[^\]]*\]$", "", useful[0] if useful else error.message)


def run_signature(signature, inputs, output_filter=()):
    """Check and run one signature.

    Args:
        signature: a `Signature` of a loaded servable.
        inputs: {key: np.ndarray}, e.g. {"images": uint8 [B, H, W, 3]} or {"image_bytes": object [B] of bytes}.
        output_filter: output keys to return (all when empty), as PredictRequest.output_filter.
    Returns:
        {key: np.ndarray}, e.g. boxes [B, K, 4] float32, scores [B, K], classes [B, K] int32, num_detections [B].
    """
    check_inputs(signature, inputs)
    for key in output_filter:
        if key not in signature.outputs:
            raise invalid_argument(f"output tensor alias not found in signature: {key} Outputs expected to be in "
                                   f"the set {{{','.join(sorted(signature.outputs))}}}.")
    if len(set(output_filter)) != len(output_filter):
        raise invalid_argument(f"duplicate output tensor alias in output_filter: {list(output_filter)}")
    feeds = {key: tf.constant(value, dtype=signature.inputs[key].dtype) for key, value in inputs.items()}
    try:
        outputs = signature.fn(**feeds)
    except tf.errors.OpError as error:  # e.g. undecodable image bytes: the model's own error, reported as is
        raise ServingError(_GRPC_CODE_BY_NUMBER.get(error.error_code, grpc.StatusCode.UNKNOWN),
                           _tf_error_message(error)) from None
    keys = list(output_filter) or sorted(outputs)
    return {key: outputs[key].numpy() for key in keys}


def _list_versions(base_dir):
    """{version: path} of the SavedModel directories MODEL_BASE_DIR/<int>/ (non-numeric entries are ignored)."""
    versions = {}
    for entry in base_dir.iterdir() if base_dir.is_dir() else ():
        if entry.is_dir() and entry.name.isdigit() and (entry / "saved_model.pb").is_file():
            versions[int(entry.name)] = entry
    return versions


def _directory_stamp(path):
    """Changes whenever a file under `path` is added, removed or rewritten (to retry a half-written export)."""
    stamp = []
    for root, _, files in os.walk(path):
        for name in files:
            info = os.stat(os.path.join(root, name))
            stamp.append((os.path.relpath(os.path.join(root, name), path), info.st_size, info.st_mtime_ns))
    return tuple(sorted(stamp))


class ModelRepository:
    """The versions of one model found under MODEL_BASE_DIR/<version>/, kept in sync by polling.

    Args:
        base_dir: directory holding numeric version subdirectories, each a SavedModel.
        model_name: the name clients use (default: the directory's name).
        num_versions: serve only the newest N versions (TensorFlow Serving's `latest {num_versions: N}`);
            None serves every version on disk (`all {}`), so any version can be requested by number.
    """

    def __init__(self, base_dir, model_name=None, num_versions=None):
        self.base_dir = Path(base_dir)
        self.model_name = model_name or self.base_dir.resolve().name
        self.num_versions = num_versions
        self._servables = {}   # version -> Servable
        self._failed = {}      # version -> (directory stamp, ServingError) of a load that failed
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()

    def refresh(self):
        """Load new versions, drop removed ones. Returns the versions that became available."""
        with self._refresh_lock:
            on_disk = _list_versions(self.base_dir)
            wanted = sorted(on_disk, reverse=True)[: self.num_versions] if self.num_versions else sorted(on_disk)
            loaded = []
            for version in wanted:
                if version in self._servables:
                    continue
                stamp = _directory_stamp(on_disk[version])
                if version in self._failed and self._failed[version][0] == stamp:
                    continue  # same files as the failed attempt: wait until they change
                try:
                    servable = Servable(self.model_name, version, on_disk[version])
                except Exception as error:  # a half-written or broken export must not stop the server
                    with self._lock:
                        self._failed[version] = (stamp, ServingError(grpc.StatusCode.UNKNOWN,
                                                                     str(error).splitlines()[0]))
                    log.warning("model %s version %d failed to load from %s: %s", self.model_name, version,
                                on_disk[version], str(error).splitlines()[0])
                    continue
                with self._lock:
                    self._servables[version] = servable
                    self._failed.pop(version, None)
                loaded.append(version)
                log.info("model %s version %d AVAILABLE (%s)", self.model_name, version, on_disk[version])
            with self._lock:
                for version in [v for v in self._servables if v not in wanted]:
                    del self._servables[version]
                    log.info("model %s version %d unloaded", self.model_name, version)
                for version in [v for v in self._failed if v not in wanted]:
                    del self._failed[version]
            return loaded

    def servable(self, name, version=None):
        """The servable for a request: `version` None = the highest available. NOT_FOUND as TensorFlow Serving."""
        with self._lock:
            if name == self.model_name and version is None and self._servables:
                return self._servables[max(self._servables)]
            if name == self.model_name and version is not None and int(version) in self._servables:
                return self._servables[int(version)]
        request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")

    def version_states(self, name, version=None):
        """[(version, state, ServingError or None)], newest first; state is "AVAILABLE" or "END" (failed load)."""
        if not name:
            raise invalid_argument("Missing model name in request.")
        with self._lock:
            states = {v: ("AVAILABLE", None) for v in self._servables}
            states.update({v: ("END", error) for v, (_, error) in self._failed.items() if v not in states})
        if name != self.model_name or not states:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
        if version is not None:
            if int(version) not in states:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
            states = {int(version): states[int(version)]}
        return [(v, *states[v]) for v in sorted(states, reverse=True)]


def check_version_label(label):
    """Version labels need a model config file, which `kdet serve` does not take: say so as TensorFlow Serving does."""
    if label:
        raise invalid_argument(f"Unrecognized servable version label: {label}")


class ModelServer:
    """REST + gRPC server over one ModelRepository. Use as a context manager, or `start()` / `stop()`.

    Ports: an int binds that port, 0 picks a free one (read `rest_port` / `grpc_port` after `start()`),
    None disables that protocol. Bind to 127.0.0.1 unless the server must be reachable from other machines.
    """

    def __init__(self, model_base_dir, model_name=None, rest_port=8501, grpc_port=8500, host="127.0.0.1",
                 poll_seconds=2.0, num_versions=None, grpc_workers=8):
        base = Path(model_base_dir)
        if not base.is_dir():
            raise ConfigError(f"{base}: model base directory not found")
        if (base / "saved_model.pb").is_file():
            raise ConfigError(f"{base}: this is a SavedModel itself; pass its parent directory, whose numeric "
                              f"subdirectories (1/, 2/, ...) are the versions")
        self.repository = ModelRepository(base, model_name, num_versions)
        self.host = host
        self.rest_port, self.grpc_port = rest_port, grpc_port
        self.poll_seconds = float(poll_seconds)
        self.grpc_workers = int(grpc_workers)
        self._stop = threading.Event()
        self._poller = self._rest = self._grpc = None

    def start(self):
        try:
            self._start()
        except BaseException:  # e.g. the REST port is taken after gRPC started: leave nothing running
            self.stop()
            raise
        return self

    def _start(self):
        from kdet.serving import grpc_service as serving_grpc, rest as serving_rest

        if not self.repository.refresh():
            log.warning("no versions of model %s found under %s yet; waiting for one",
                        self.repository.model_name, self.repository.base_dir)
        if self.grpc_port is not None:
            self._grpc, self.grpc_port = serving_grpc.start_grpc_server(
                self.repository, self.host, self.grpc_port, self.grpc_workers)
            log.info("gRPC on %s:%d", self.host, self.grpc_port)
        if self.rest_port is not None:
            self._rest = serving_rest.start_rest_server(self.repository, self.host, self.rest_port)
            self.rest_port = self._rest.server_address[1]
            log.info("REST on http://%s:%d/v1/models/%s", self.host, self.rest_port, self.repository.model_name)
        if self.poll_seconds > 0:
            self._poller = threading.Thread(target=self._poll, name="kdet-serve-poll", daemon=True)
            self._poller.start()

    def _poll(self):
        while not self._stop.wait(self.poll_seconds):
            try:
                self.repository.refresh()
            except OSError as error:  # base dir briefly unreadable (e.g. being replaced): try again next poll
                log.warning("polling %s failed: %s", self.repository.base_dir, error)

    def stop(self):
        """Stop both servers (in-flight requests get a second to finish) and the poller. Safe to call twice."""
        self._stop.set()
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=1.0).wait()
        if self._poller is not None:
            self._poller.join()
        self._rest = self._grpc = self._poller = None

    def wait(self):
        """Block until `stop()` is called (from a signal handler or another thread)."""
        while not self._stop.wait(0.5):
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def serve(model_base_dir, model_name=None, rest_port=8501, grpc_port=8500, host="127.0.0.1", poll_seconds=2,
          num_versions=None):
    """Serve MODEL_BASE_DIR/<version>/ SavedModels with TensorFlow Serving's REST and gRPC API until SIGINT/SIGTERM.

    Args:
        model_base_dir: directory of numeric version subdirectories, e.g. `saved_models/shapes_classloc/`
            holding `1/`, `2/` (what `kdet export --format saved_model` writes).
        model_name: name in request paths and ModelSpec (default: the base directory's name).
        rest_port, grpc_port: ports (TensorFlow Serving's defaults 8501 / 8500); 0 picks a free port, None disables.
        host: interface to bind; 127.0.0.1 keeps the server local.
        poll_seconds: how often to look for new or removed version directories (0 = never).
        num_versions: serve only the newest N versions; None serves all of them.
    """
    server = ModelServer(model_base_dir, model_name, rest_port, grpc_port, host, poll_seconds, num_versions)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: server._stop.set())
    server.start()
    try:
        server.wait()
    finally:
        server.stop()


def main(argv=None):
    """`kdet serve MODEL_BASE_DIR [--model-name N] [--rest-port P] [--grpc-port P] ...`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="kdet serve", description=serve.__doc__.splitlines()[0])
    parser.add_argument("model_base_dir", help="directory with numeric version subdirectories (1/, 2/, ...)")
    parser.add_argument("--model-name", default=None, help="model name clients use (default: directory name)")
    parser.add_argument("--rest-port", type=int, default=8501, help="REST port (0 = any free port, -1 = off)")
    parser.add_argument("--grpc-port", type=int, default=8500, help="gRPC port (0 = any free port, -1 = off)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="version directory poll period (0 = off)")
    parser.add_argument("--num-versions", type=int, default=None, help="serve only the newest N versions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s kdet serve: %(message)s")
    try:
        serve(args.model_base_dir, args.model_name, None if args.rest_port < 0 else args.rest_port,
              None if args.grpc_port < 0 else args.grpc_port, args.host, args.poll_seconds, args.num_versions)
    except ConfigError as error:  # bad directory or a port in use: one line, no trace (as kdet's CLI)
        print(f"kdet serve: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
