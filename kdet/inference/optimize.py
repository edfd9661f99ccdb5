"""An inference copy of a model: BatchNorm folded into the convolutions and, optionally, bfloat16 compute.

    fast = inference_model(model)                          # float32, BN folded (kdet export's default)
    fast = inference_model(model, precision="bfloat16")     # built under mixed_bfloat16, fp32 weights copied in
    fast = inference_model(model, fold_bn=False)            # returns `model` itself (nothing to change)

The copy is made through the model's own config (`from_config(get_config())`), built at `model.image_size` and given
the original's weights, so `model` is never changed and can still be trained or saved. Under bfloat16 the network
(convolutions, matmuls) computes in bfloat16 with float32 variables; box coding, anchors, NMS and losses stay float32
in every kdet model (they cast their inputs), and the outputs are float32 like the fp32 model's.
The copy is for inference only: a folded BN refuses `training=True` (kdet.layers.fold_bn).
"""
import contextlib

import keras
import numpy as np

from kdet.errors import ConfigError
from kdet.layers.fold_bn import fold_batch_norm

PRECISIONS = ("float32", "bfloat16")
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


@contextlib.contextmanager
def global_policy(name):
    """Keras' global dtype policy set to `name` while the block runs (layers created inside take it)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def check_precision(precision):
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def copy_model(model, policy="float32"):
    """A new model of `model`'s class and config under the dtype `policy`, built at image_size, same weights."""
    ensure_built(model)
    config = dict(model.get_config())
    config["dtype"] = policy
    with global_policy(policy):
        copy = type(model).from_config(config)
        height, width = model.image_size
        copy(np.zeros((1, height, width, 3), np.float32), training=False)
    try:
        copy.set_weights(model.get_weights())
    except ValueError as error:
        raise ConfigError(f"{type(model).__name__}: cannot copy weights into an inference copy: {error}") from None
    return copy


def ensure_built(model):
    if not model.built:
        height, width = model.image_size
        model(np.zeros((1, height, width, 3), np.float32), training=False)


def inference_model(model, precision="float32", fold_bn=True):
    """`model` ready for inference: a copy with BN folded (fold_bn) and / or computing in bfloat16 (precision);
    `model` itself when neither applies. The copy's `folded_pairs` says how many (conv, BN) pairs were folded."""
    policy = POLICIES[check_precision(precision)]
    if not fold_bn and policy == model.dtype_policy.name:
        return model
    copy = copy_model(model, policy)
    copy.folded_pairs = len(fold_batch_norm(copy)) if fold_bn else 0
    return copy
