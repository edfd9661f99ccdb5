"""tf.distribute for kdet training: logical CPU devices, the strategy by name, and the one Keras workaround it needs.

    configure_cpu_devices(2)            # before any TF op: split the CPU into 2 logical devices
    strategy = make_strategy("mirrored")
    with strategy.scope():
        model = build_model(...); model.compile(...)
    model.fit(dataset_of_global_batches)

Names (the config's `train.strategy`):
  * "none": TensorFlow's default strategy (one device).
  * "mirrored": `MirroredStrategy` over every GPU, else over every logical CPU (see `configure_cpu_devices`;
    `KDET_CPU_DEVICES=N` in the environment does it for the CLI). Synchronous data parallelism in one process.
  * "multi_worker": `MultiWorkerMirroredStrategy`, one process per machine (or per process on one machine), the
    cluster and this process's place in it read from the `TF_CONFIG` environment variable.

Why a workaround, and why this one: Keras 3 `model.fit` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585, open; Keras 3.15 unchanged). `fit` first builds the model symbolically from one batch and
reduces that `PerReplica` batch eagerly across workers, which raises `ValueError: Attempt to convert a value
(PerReplica:...)`; after that, `reduce_per_replica` reduces scalar logs with `axis=0`, which raises `Invalid
reduction dimension 0 for input with 0 dimensions`. `_patch_keras_multi_worker_fit` replaces exactly those two
steps, only for multi-worker strategies: the build uses the first local replica's batch (only its shapes matter),
and scalar logs are reduced with `axis=None`. We keep `fit` instead of writing a custom training loop so that
kdet's one training path (callbacks, checkpoints, history, TensorBoard) is the same for every strategy; a custom
loop works without patches, but would be a second trainer to keep in step. The patch checks that the private Keras
functions it wraps still exist and fails loudly if they moved.
"""
import json
import os

import tensorflow as tf

from kdet.errors import ConfigError

STRATEGIES = ("none", "mirrored", "multi_worker")
CPU_DEVICES_ENV = "KDET_CPU_DEVICES"
# One strategy object per process and kind: a second MirroredStrategy over the same devices reuses the collective
# instance keys of the first, and `fit` under it aborts with "Shape mismatch in the collective instance 100"
# (measured, TF 2.21); a second MultiWorkerMirroredStrategy cannot join the cluster again.
_CREATED = {}


def configure_cpu_devices(n):
    """Split the first physical CPU into `n` logical devices (/cpu:0 ... /cpu:n-1) for MirroredStrategy.

    Must run before TensorFlow initialises its devices (before the first TF op or device listing). Calling it again
    with the same `n` is a no-op. Raises ConfigError when the devices already exist with another count.
    Returns the names of the logical CPU devices.
    """
    n = int(n)
    if n < 1:
        raise ConfigError(f"configure_cpu_devices: n must be >= 1, got {n}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if not (current is not None and len(current) == n):
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
        except RuntimeError:
            # Devices are initialised: fine if they already are what we want, otherwise say when to call us.
            existing = len(tf.config.list_logical_devices("CPU"))
            if existing != n:
                raise ConfigError(
                    f"configure_cpu_devices({n}) came too late: TensorFlow already created {existing} logical CPU "
                    f"device(s). Call it at program start, before any TF op, or set {CPU_DEVICES_ENV}={n} for "
                    f"`kdet train`.") from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def read_tf_config():
    """The parsed TF_CONFIG ({"cluster": {"worker": [...]}, "task": {"type": ..., "index": ...}}), validated."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ConfigError("train.strategy=multi_worker needs the TF_CONFIG environment variable, e.g. "
                          '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                          '"index": 0}} (see train_scripts/README.md)')
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task_type, index = config["task"]["type"], int(config["task"]["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"TF_CONFIG is malformed ({type(error).__name__}: {error}); expected "
                          '{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": N}}') from None
    if not isinstance(workers, list) or not workers:
        raise ConfigError("TF_CONFIG: cluster.worker must be a non-empty list of host:port")
    members = config["cluster"].get(task_type)
    if not isinstance(members, list) or not 0 <= index < len(members):
        raise ConfigError(f"TF_CONFIG: task {task_type}:{index} is not in cluster.{task_type}")
    return config


def make_strategy(name):
    """The tf.distribute strategy for `train.strategy` = `name` ("none", "mirrored" or "multi_worker").

    "multi_worker" also applies the Keras `fit` workaround (module docstring) and blocks until every worker in
    TF_CONFIG has started (the collective rendezvous). Calling it again returns the same strategy object (see
    `_CREATED`), so training twice in one process works.
    """
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if os.environ.get(CPU_DEVICES_ENV):
            configure_cpu_devices(int(os.environ[CPU_DEVICES_ENV]))
        devices = tuple(d.name for d in tf.config.list_logical_devices("GPU")) or \
            tuple(d.name for d in tf.config.list_logical_devices("CPU"))
        if ("mirrored", devices) not in _CREATED:
            _CREATED["mirrored", devices] = tf.distribute.MirroredStrategy(list(devices))
        return _CREATED["mirrored", devices]
    if name == "multi_worker":
        read_tf_config()
        _patch_keras_multi_worker_fit()
        if "multi_worker" not in _CREATED:
            _CREATED["multi_worker"] = tf.distribute.MultiWorkerMirroredStrategy()
        return _CREATED["multi_worker"]
    raise ConfigError(f"train.strategy = {name!r}; choose one of {', '.join(STRATEGIES)}")


def is_chief(strategy=None):
    """True on the process that should write checkpoints, logs and exports (worker 0 / chief, or no cluster)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0 and
                                            "chief" not in resolver.cluster_spec().as_dict())


def _is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


def _patch_keras_multi_worker_fit():
    """Make Keras 3 `fit`/`evaluate` work under MultiWorkerMirroredStrategy (keras-team/keras#20585). Idempotent."""
    from keras.src.backend.tensorflow import trainer

    missing = [name for name in ("TensorFlowTrainer", "reduce_per_replica") if not hasattr(trainer, name)]
    if not missing and not hasattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build"):
        missing.append("TensorFlowTrainer._maybe_symbolic_build")
    if missing:
        raise ConfigError(f"this Keras version moved {', '.join(missing)}; kdet's multi-worker `fit` workaround "
                          f"(keras-team/keras#20585) needs updating in kdet/training/distribute.py")
    if getattr(trainer, "_kdet_multi_worker_patch", False):
        return
    original_build = trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = trainer.reduce_per_replica

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or strategy is None or not _is_multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        # The build only needs shapes: take the first local replica's batch instead of an eager cross-worker reduce.
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(
                lambda value: strategy.experimental_local_results(value)[0], next(batches))
            break
        return original_build(self, iterator=None, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if _is_multi_worker(strategy) and reduction in ("auto", "mean"):
            # Logs are scalars: a mean across replicas, not along a (missing) axis 0.
            return tf.nest.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return original_reduce(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    trainer._kdet_multi_worker_patch = True
