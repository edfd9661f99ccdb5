"""kdet.training.distribute: MirroredStrategy on logical CPUs, MultiWorkerMirroredStrategy on loopback, checkpoint + resume.

Logical devices and TF_CONFIG must be set before TensorFlow starts, so every scenario runs in a fresh Python process:
this file is also the worker script (`python tests/test_distribute.py MODE OUT_JSON [DIR]`). Each scenario trains
the same small Keras model from the same initial weights on the same global batches (SGD with momentum, no shuffle),
so every strategy must reproduce the single-device losses and weights up to float reduction order.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

GLOBAL_BATCH, EPOCHS, FEATURES = 32, 3, 8
HERE = Path(__file__).resolve()


# -- the worker side (runs in a subprocess) ------------------------------------------------------------------------
def _data():
    import tensorflow as tf
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, FEATURES)).astype(np.float32)
    y = (x @ rng.normal(size=(FEATURES, 1)) > 0).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)


def _model(strategy):
    """Build + compile under `strategy` with fixed initial weights (the same in every process)."""
    import keras
    with strategy.scope():
        model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(1, activation="sigmoid")])
        rng = np.random.default_rng(1)
        model.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in model.get_weights()])
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "binary_crossentropy")
    return model


def _state(model):
    """Model weights then optimizer variables (momentums), as plain arrays."""
    return [np.asarray(w) for w in model.get_weights()] + \
        [np.asarray(v.numpy()) for v in model.optimizer.variables if "momentum" in v.path]


def _fit(model, epochs=EPOCHS, **kwargs):
    return [float(v) for v in model.fit(_data(), epochs=epochs, verbose=0, **kwargs).history["loss"]]


def _worker(mode, out, directory=None):
    import keras
    import tensorflow as tf

    from kdet.training.distribute import configure_cpu_devices, is_chief, make_strategy
    from kdet.errors import ConfigError
    result = {}
    if mode == "compare":
        result["devices"] = configure_cpu_devices(2)
        single = _model(tf.distribute.get_strategy())
        result["single_loss"] = _fit(single)
        mirrored_strategy = make_strategy("mirrored")
        mirrored = _model(mirrored_strategy)
        result["mirrored_loss"] = _fit(mirrored)
        result["replicas"] = mirrored_strategy.num_replicas_in_sync
        result["strategy_reused"] = make_strategy("mirrored") is mirrored_strategy
        result["variable_type"] = type(mirrored.trainable_variables[0].value).__name__
        result["weights_diff"] = max(float(np.abs(a - b).max()) for a, b in
                                     zip(single.get_weights(), mirrored.get_weights()))
        np.savez(Path(directory) / "single_weights.npz", *single.get_weights())
        # Checkpoint: two epochs under the strategy with Keras' ModelCheckpoint (.weights.h5, every epoch).
        checkpointed = _model(mirrored_strategy)
        _fit(checkpointed, epochs=2, callbacks=[keras.callbacks.ModelCheckpoint(
            str(Path(directory) / "last.weights.h5"), save_weights_only=True)])
        np.savez(Path(directory) / "state_after_2.npz", *_state(checkpointed))
        configure_cpu_devices(2)  # same count again: a no-op
        try:
            configure_cpu_devices(3)
            result["too_late_error"] = None
        except ConfigError as error:
            result["too_late_error"] = str(error)
    elif mode == "resume":
        configure_cpu_devices(2)
        strategy = make_strategy("mirrored")
        model = _model(strategy)
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)  # so the checkpoint's optimizer variables have a home
        model.load_weights(str(Path(directory) / "last.weights.h5"))
        saved = np.load(Path(directory) / "state_after_2.npz")
        restored = _state(model)
        result["restored_count"] = len(restored)
        result["restored_diff"] = max(float(np.abs(a - saved[f"arr_{i}"]).max()) for i, a in enumerate(restored))
        result["resumed_loss"] = _fit(model, initial_epoch=2)
        # The trainer kdet's CLI uses, under the same strategy: 1 short epoch on the synthetic shapes.
        from kdet import api
        run = api.train("configs/classloc_shapes.yaml", verbose=0, overrides=[
            "train.strategy=mirrored", "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=8",
            "train.eval_every=0", f"train.output_dir={Path(directory) / 'run'}", "data.options.num_images=64"])
        result["api"] = {"history": run["history"], "replicas": run["model"].distribute_strategy.num_replicas_in_sync,
                         "variable_type": type(run["model"].trainable_variables[0].value).__name__}
    elif mode == "worker":
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        strategy = make_strategy("multi_worker")
        model = _model(strategy)
        result["loss"] = _fit(model)
        result["replicas"] = strategy.num_replicas_in_sync
        result["chief"] = is_chief(strategy)
        np.savez(Path(out).with_suffix(".npz"), *model.get_weights())
    Path(out).write_text(json.dumps(result))


# -- the test side --------------------------------------------------------------------------------------------------
def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    return env


def _start(mode, out, directory=None, **env):
    args = [sys.executable, str(HERE), mode, str(out)] + ([str(directory)] if directory else [])
    return subprocess.Popen(args, env=_env(**env), cwd=HERE.parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(process, out, timeout=300):
    try:
        log, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, log[-3000:]
    return json.loads(Path(out).read_text())


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start the two loopback workers and the single-device/mirrored comparison together (their start-up overlaps),
    then the restart process, which resumes from the comparison's checkpoint and runs `kdet.api.train`."""
    tmp = tmp_path_factory.mktemp("distribute")
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    workers = []
    try:
        for index in range(2):
            tf_config = json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
            out = tmp / f"worker{index}.json"
            workers.append((_start("worker", out, TF_CONFIG=tf_config), out))
        compare = _finish(_start("compare", tmp / "compare.json", tmp), tmp / "compare.json")
        results = {"tmp": tmp, "compare": compare, "workers": [_finish(p, out) for p, out in workers]}
    finally:
        for process, _ in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
    results["resume"] = _finish(_start("resume", tmp / "resume.json", tmp), tmp / "resume.json")
    return results


@pytest.mark.slow  # trains in subprocesses (the shared `runs` fixture)
def test_mirrored_fit_matches_single_device(runs):
    result = runs["compare"]
    assert result["devices"][-1].endswith("CPU:1") and result["replicas"] == 2
    assert result["variable_type"] == "MirroredVariable"
    assert result["strategy_reused"]  # a second MirroredStrategy in one process breaks fit (collective key clash)
    assert result["single_loss"][-1] < result["single_loss"][0]  # it trains
    np.testing.assert_allclose(result["mirrored_loss"], result["single_loss"], atol=2e-5)
    assert result["weights_diff"] < 5e-4


@pytest.mark.slow  # trains in subprocesses (the shared `runs` fixture)
def test_configure_cpu_devices_too_late_is_a_clear_error(runs):
    message = runs["compare"]["too_late_error"]
    assert message and "before any TF op" in message and "KDET_CPU_DEVICES=3" in message


@pytest.mark.slow  # trains in subprocesses (the shared `runs` fixture)
def test_checkpoint_resume_under_mirrored_restores_weights_and_momentum(runs):
    result = runs["resume"]
    assert result["restored_count"] == 4 + 4  # 4 weight arrays + 4 momentum slots
    assert result["restored_diff"] == 0.0
    # epoch 3 after the restart equals epoch 3 of the uninterrupted run
    np.testing.assert_allclose(result["resumed_loss"], runs["compare"]["mirrored_loss"][2:], atol=2e-5)


@pytest.mark.slow  # trains in subprocesses (the shared `runs` fixture)
def test_multi_worker_fit_on_loopback_matches_single_device(runs):
    single = np.load(runs["tmp"] / "single_weights.npz")
    for index, result in enumerate(runs["workers"]):
        assert result["replicas"] == 2 and result["chief"] == (index == 0)
        np.testing.assert_allclose(result["loss"], runs["compare"]["single_loss"], atol=2e-5)
        weights = np.load(runs["tmp"] / f"worker{index}.npz")
        for i in range(len(single.files)):
            np.testing.assert_allclose(weights[f"arr_{i}"], single[f"arr_{i}"], atol=5e-4)


@pytest.mark.slow  # trains in subprocesses (the shared `runs` fixture)
def test_api_train_with_mirrored_strategy(runs):
    # runs in the restart process after another model trained there: needs make_strategy's one-strategy rule
    result = runs["resume"]["api"]
    assert result["replicas"] == 2 and result["variable_type"] == "MirroredVariable"
    assert len(result["history"]) == 1 and np.isfinite(result["history"][0]["loss"])
    assert (runs["tmp"] / "run" / "last.weights.h5").is_file()


def test_strategy_names_and_tf_config_errors(monkeypatch):
    from kdet.training.distribute import make_strategy, read_tf_config
    from kdet.errors import ConfigError
    with pytest.raises(ConfigError, match="choose one of none, mirrored, multi_worker"):
        make_strategy("parameter_server")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs the TF_CONFIG environment variable"):
        make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG is malformed"):
        read_tf_config()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 3}}))
    with pytest.raises(ConfigError, match="task worker:3 is not in cluster.worker"):
        read_tf_config()


def test_multi_worker_patch_leaves_other_strategies_alone():
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    from kdet.training.distribute import _patch_keras_multi_worker_fit
    _patch_keras_multi_worker_fit()
    patched = (trainer.reduce_per_replica, trainer.TensorFlowTrainer._maybe_symbolic_build)
    _patch_keras_multi_worker_fit()  # idempotent: no double wrapping
    assert (trainer.reduce_per_replica, trainer.TensorFlowTrainer._maybe_symbolic_build) == patched
    logs = {"loss": tf.constant(0.25), "iou": tf.constant([0.5, 0.75])}
    reduced = trainer.reduce_per_replica(logs, tf.distribute.get_strategy(), "auto")  # not multi-worker: unchanged
    assert float(reduced["loss"]) == 0.25 and reduced["iou"].numpy().tolist() == [0.5, 0.75]


if __name__ == "__main__":
    _worker(*sys.argv[1:])
