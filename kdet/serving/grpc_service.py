"""gRPC side of `kdet serve`: TensorFlow Serving's PredictionService and ModelService on the official protos.

`predict`, `get_model_metadata` and `get_model_status` take and return the request/response protos of
`tensorflow_serving.apis`; the servicers only turn a `ServingError` into the gRPC status. The REST side calls the
same status and metadata functions, as TensorFlow Serving's HTTP handler does.
"""
import logging
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from kdet.errors import ConfigError
from kdet.serving.core import MAX_REQUEST_ELEMENTS, ServingError, check_version_label, invalid_argument
from kdet.serving.limits import Limits, run_checked

log = logging.getLogger("kdet.serve")

SIGNATURE_DEF_FIELD = "signature_def"


def _requested_version(model_spec):
    check_version_label(model_spec.version_label)
    return model_spec.version.value if model_spec.HasField("version") else None


def tensor_proto_to_array(key, proto):
    """TensorProto -> np.ndarray, with INVALID_ARGUMENT (not a crash) for a malformed or oversized proto."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims) or int(np.prod(dims, dtype=np.float64)) > MAX_REQUEST_ELEMENTS:
        raise invalid_argument(f"input '{key}': invalid tensor shape {dims}")
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as error:
        raise invalid_argument(f"input '{key}': malformed TensorProto: {error}") from None


def predict(repository, request, limits=None):
    """PredictRequest -> PredictResponse (outputs as TensorProto, model_spec with the version that answered).

    `limits` (default `Limits()`): encoded images over its pixel limit are refused before decoding."""
    servable = repository.servable(request.model_spec.name, _requested_version(request.model_spec))
    signature = servable.signature(request.model_spec.signature_name)
    inputs = {key: tensor_proto_to_array(key, proto) for key, proto in request.inputs.items()}
    outputs = run_checked(signature, inputs, limits or Limits(), tuple(request.output_filter))
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature.name
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
    return response


def get_model_metadata(repository, request):
    """GetModelMetadataRequest -> GetModelMetadataResponse with the SignatureDefMap packed under "signature_def"."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    if not request.metadata_field:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {field} is not supported")
    servable = repository.servable(request.model_spec.name, _requested_version(request.model_spec))
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map)
    return response


def get_model_status(repository, request):
    """GetModelStatusRequest -> GetModelStatusResponse, one ModelVersionStatus per version, newest first."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    states = repository.version_states(request.model_spec.name, _requested_version(request.model_spec))
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, state, error in states:
        status = response.model_version_status.add()
        status.version = version
        status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
        status.status.SetInParent()  # TF Serving always reports a status, OK included
        if error is not None:
            status.status.error_code = error.code.value[0]
            status.status.error_message = error.message
    return response


def _answer(fn, repository, request, context, *args):
    try:
        return fn(repository, request, *args)
    except ServingError as error:
        context.abort(error.code, error.message)
    except Exception as error:  # a bug must cost one request, not the server
        log.exception("internal error in %s", fn.__name__)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference (tf.Example APIs) stay UNIMPLEMENTED."""

    def __init__(self, repository, limits):
        self.repository = repository
        self.limits = limits

    def Predict(self, request, context):
        return _answer(predict, self.repository, request, context, self.limits)

    def GetModelMetadata(self, request, context):
        return _answer(get_model_metadata, self.repository, request, context)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus; HandleReloadConfigRequest needs a model config file and stays UNIMPLEMENTED."""

    def __init__(self, repository):
        self.repository = repository

    def GetModelStatus(self, request, context):
        return _answer(get_model_status, self.repository, request, context)


def start_grpc_server(repository, host, port, limits=None):
    """Start the gRPC server on host:port (0 = a free port). Returns (grpc.Server, bound port).

    `limits` (default `Limits()`): messages over max_body_bytes get RESOURCE_EXHAUSTED from gRPC itself;
    grpc_workers threads run calls, up to grpc_queue more wait, further calls get RESOURCE_EXHAUSTED at once.
    """
    limits = limits or Limits()
    # Batches of images easily pass gRPC's 4 MB default: the limit is the REST body limit instead.
    options = [("grpc.max_receive_message_length", limits.max_body_bytes), ("grpc.max_send_message_length", -1),
               ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=limits.grpc_workers, thread_name_prefix="kdet-grpc"),
                         options=options, maximum_concurrent_rpcs=limits.grpc_workers + limits.grpc_queue)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(repository, limits), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(repository), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as error:
        raise ConfigError(f"gRPC cannot bind {host}:{port}: {error}") from None
    if bound == 0:
        raise ConfigError(f"gRPC cannot bind {host}:{port} (port in use?)")
    server.start()
    return server, bound
