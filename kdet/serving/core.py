"""The base of `kdet serve`: status errors, the model repository, request checks and running a signature.

    ServingError / invalid_argument      a TensorFlow Serving status (grpc.StatusCode) and its message
    ModelRepository(base_dir)            MODEL_BASE_DIR/<version>/ SavedModels, loaded and kept in sync by polling
    Servable.signature(name)             one loaded signature with its TensorSpecs
    run_signature(signature, inputs)     check {key: np.ndarray} against the specs, run, return {key: np.ndarray}

Every request is checked against the signature's TensorSpec (input names, dtype, rank, static dims) before the
signature is called: a loaded signature does not check shapes itself, and a wrong-rank tensor reaching a convolution
aborts the whole process (`tensor_format.h Check failed`). Errors carry TensorFlow Serving's status codes
(INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION); the wire modules map them (REST: HTTP status + {"error": ...}).

The package's imports point one way: core <- codec (JSON <-> tensors) <- grpc_service <- rest <- server (`main`).
"""
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

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
    noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[")
    useful = [line for line in lines if line and not line.startswith(noise)]
    line = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", useful[0] if useful else error.message)
    return re.sub(r"\s*\[Op:[^\]]*\]$", "", line)


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
    except tf.errors.OpError as error:  # e.g. image bytes with a valid header but corrupt data
        message = _tf_error_message(error)
        strings = [key for key, spec in signature.inputs.items() if spec.dtype == tf.string]
        if strings and isinstance(error, tf.errors.InvalidArgumentError):
            message = f"input '{strings[0]}': cannot decode the image: {message}"
        raise ServingError(_GRPC_CODE_BY_NUMBER.get(error.error_code, grpc.StatusCode.UNKNOWN), message) from None
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
