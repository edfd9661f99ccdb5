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

Every request is checked against the signature's TensorSpec before it reaches the graph (see `core.py`); errors
carry TensorFlow Serving's status codes and, on REST, its HTTP mapping with `{"error": "..."}`.

    kdet serve saved_models/classloc_shapes --rest-port 8501 --grpc-port 8500
    curl -d '{"signature_name": "serving_bytes", "instances": [{"b64": "'$(base64 -w0 img.jpg)'"}]}' \
        http://127.0.0.1:8501/v1/models/classloc_shapes:predict

Differences from tensorflow_model_server: port 0 picks a free port (TF Serving: 0 turns REST off; here -1 does, or
None in Python); one model per server, no model config file, so version labels are refused (INVALID_ARGUMENT);
Classify / Regress / MultiInference (tf.Example APIs) answer UNIMPLEMENTED; no request batching. By default every
version on disk is served (TF Serving's `all` policy; `num_versions=N` keeps the newest N, its `latest` policy).

It is a development and test server, not a replacement for tensorflow_model_server; its limits (`limits.Limits`,
each a `kdet serve` option) keep abuse from taking it down: body size (413 before the body is read), pixels of
an encoded image (400 from its header, before decoding), request and idle timeouts (408 / close), bounded REST
threads (further clients wait in the listen queue) and gRPC workers and queue (then RESOURCE_EXHAUSTED).

This module starts the servers (`ModelServer`, `serve`, `main`); `core.py` holds the model repository and the
request checks, `rest.py` (with `codec.py`) and `grpc_service.py` translate the two wire formats.
"""
import argparse
import dataclasses
import logging
import signal
import sys
import threading
from pathlib import Path

from kdet.errors import ConfigError
from kdet.serving.core import ModelRepository
from kdet.serving.grpc_service import start_grpc_server
from kdet.serving.limits import Limits
from kdet.serving.rest import start_rest_server

log = logging.getLogger("kdet.serve")


class ModelServer:
    """REST + gRPC server over one ModelRepository. Use as a context manager, or `start()` / `stop()`.

    Ports: an int binds that port, 0 picks a free one (read `rest_port` / `grpc_port` after `start()`),
    None disables that protocol. Bind to 127.0.0.1 unless the server must be reachable from other machines.
    `limits`: a `Limits` (request size, pixels, timeouts, threads; default `Limits()`); `grpc_workers` overrides
    its gRPC thread count.
    """

    def __init__(self, model_base_dir, model_name=None, rest_port=8501, grpc_port=8500, host="127.0.0.1",
                 poll_seconds=2.0, num_versions=None, grpc_workers=None, limits=None):
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
        self.limits = limits or Limits()
        if grpc_workers is not None:
            self.limits = dataclasses.replace(self.limits, grpc_workers=int(grpc_workers))
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
        if not self.repository.refresh():
            log.warning("no versions of model %s found under %s yet; waiting for one",
                        self.repository.model_name, self.repository.base_dir)
        if self.grpc_port is not None:
            self._grpc, self.grpc_port = start_grpc_server(
                self.repository, self.host, self.grpc_port, self.limits)
            log.info("gRPC on %s:%d", self.host, self.grpc_port)
        if self.rest_port is not None:
            self._rest = start_rest_server(self.repository, self.host, self.rest_port, self.limits)
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
          num_versions=None, limits=None):
    """Serve MODEL_BASE_DIR/<version>/ SavedModels with TensorFlow Serving's REST and gRPC API until SIGINT/SIGTERM.

    Args:
        model_base_dir: directory of numeric version subdirectories, e.g. `saved_models/shapes_classloc/`
            holding `1/`, `2/` (what `kdet export --format saved_model` writes).
        model_name: name in request paths and ModelSpec (default: the base directory's name).
        rest_port, grpc_port: ports (TensorFlow Serving's defaults 8501 / 8500); 0 picks a free port, None disables.
        host: interface to bind; 127.0.0.1 keeps the server local.
        poll_seconds: how often to look for new or removed version directories (0 = never).
        num_versions: serve only the newest N versions; None serves all of them.
        limits: a `Limits` (body size, image pixels, timeouts, threads); None = the defaults.
    """
    server = ModelServer(model_base_dir, model_name, rest_port, grpc_port, host, poll_seconds, num_versions,
                         limits=limits)
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
    default = Limits()
    limits = parser.add_argument_group("limits (a development and test server: these keep abuse from taking it down)")
    limits.add_argument("--max-body-bytes", type=int, default=default.max_body_bytes,
                        help="largest REST body / gRPC message; a larger REST body gets 413 before it is read "
                             "(default %(default)s = 16 MiB)")
    limits.add_argument("--max-image-pixels", type=int, default=default.max_image_pixels,
                        help="largest encoded image (width x height x frames) in a *_bytes input, read from its "
                             "header before decoding; larger ones get 400 (default %(default)s)")
    limits.add_argument("--request-timeout", type=float, default=default.request_timeout,
                        help="seconds for a request's headers and body to arrive once it has started; then 408 "
                             "and the connection closes (default %(default)s)")
    limits.add_argument("--idle-timeout", type=float, default=default.idle_timeout,
                        help="seconds a connection may stay open without starting a request; then it is closed "
                             "(default %(default)s)")
    limits.add_argument("--rest-threads", type=int, default=default.rest_threads,
                        help="connections handled at once over REST; further clients wait in the listen queue "
                             "(default %(default)s)")
    limits.add_argument("--grpc-workers", type=int, default=default.grpc_workers,
                        help="gRPC calls run at once (default %(default)s)")
    limits.add_argument("--grpc-queue", type=int, default=default.grpc_queue,
                        help="gRPC calls that may wait for a worker; further calls get RESOURCE_EXHAUSTED "
                             "(default %(default)s)")
    args = parser.parse_args(argv)
    try:
        limits = Limits(args.max_body_bytes, args.max_image_pixels, args.request_timeout, args.idle_timeout,
                        args.rest_threads, args.grpc_workers, args.grpc_queue)
    except ValueError as error:
        name, _, rest = str(error).partition(" ")  # "max_body_bytes must be ..." -> the option's spelling
        parser.error(f"--{name.replace('_', '-')} {rest}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s kdet serve: %(message)s")
    try:
        serve(args.model_base_dir, args.model_name, None if args.rest_port < 0 else args.rest_port,
              None if args.grpc_port < 0 else args.grpc_port, args.host, args.poll_seconds, args.num_versions, limits)
    except ConfigError as error:  # bad directory or a port in use: one line, no trace (as kdet's CLI)
        print(f"kdet serve: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
