"""An inference copy of a model: BatchNorm folded into the convolutions and, optionally, bfloat16 compute.

    fast = inference_model(model)                          # float32, BN folded (kdet export's default)
    fast = inference_model(model, precision="bfloat16")     # built under mixed_bfloat16, fp32 weights copied in
    fast = inference_model(model, fold_bn=False)            # returns `model` itself (nothing to change)

The copy is made through the model's own config (`from_config(get_config())`), built layer by layer with the
original's build shapes (or, if that does not reproduce its weights, by one graph trace at `model.image_size`) and
given the original's weights, so `model` is never changed and can still be trained or saved. Under bfloat16 the network
(convolutions, matmuls) computes in bfloat16 with float32 variables; box coding, anchors, NMS and losses stay float32
in every kdet model (they cast their inputs), and the outputs are float32 like the fp32 model's.
The copy is for inference only: a folded BN refuses `training=True` (kdet.layers.fold_bn).
"""
import contextlib

import keras
import numpy as np
import tensorflow as tf

from kdet.errors import ConfigError
from kdet.layers.fold_bn import find_conv_bn_pairs, fold_pair

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


def new_model(model, policy="float32"):
    """A new, unbuilt model of `model`'s class and config whose layers take the dtype `policy`."""
    config = dict(model.get_config())
    config["dtype"] = policy
    with global_policy(policy):
        return type(model).from_config(config)


def build_like(source, copy):
    """Build `copy` layer by layer with the input shapes `source`'s layers were built with (no symbolic run of the
    model, which costs several traces in Keras); False when a layer's build config is missing or the weights came
    out different (the caller then builds by tracing a fresh copy)."""
    pairs = list(zip(source._flatten_layers(include_self=True, recursive=True),
                     copy._flatten_layers(include_self=True, recursive=True)))
    for original, layer in pairs:
        if type(original) is not type(layer):
            return False
        if layer.built:
            continue
        if type(layer).build is keras.layers.Layer.build or (isinstance(layer, keras.Model)
                                                             and type(layer).build is keras.Model.build):
            continue  # a container: its sublayers carry the weights
        config = original.get_build_config()
        if config is None:
            return False
        layer.build_from_config(config)
    for _, layer in pairs:
        layer.built = True
    return [tuple(w.shape) for w in source.weights] == [tuple(w.shape) for w in copy.weights]


def build_by_tracing(model):
    """Create `model`'s variables by tracing it once at image_size (a graph trace costs less than an eager call;
    Keras creates variables outside the function)."""
    height, width = model.image_size
    spec = tf.TensorSpec((1, height, width, 3), tf.float32)
    tf.function(lambda images: model(images, training=False)).get_concrete_function(spec)


def ensure_built(model):
    if not model.built:
        height, width = model.image_size
        model(np.zeros((1, height, width, 3), np.float32), training=False)


def copy_weights(source, target):
    try:
        target.set_weights(source.get_weights())
    except ValueError as error:
        raise ConfigError(f"{type(source).__name__}: cannot copy weights into an inference copy: {error}") from None


def has_batch_norm(model):
    return any(isinstance(layer, keras.layers.BatchNormalization)
               for layer in model._flatten_layers(include_self=False, recursive=True))


def inference_model(model, precision="float32", fold_bn=True):
    """`model` ready for inference: a copy with BN folded (fold_bn) and / or computing in bfloat16 (precision);
    `model` itself when neither applies (float32 and no BatchNorm, or `model` is already such a copy). The copy's
    `folded_pairs` says how many (conv, BN) pairs were folded."""
    policy = POLICIES[check_precision(precision)]
    fold_bn = fold_bn and has_batch_norm(model)
    if getattr(model, "folded_pairs", None) is not None or (not fold_bn and policy == model.dtype_policy.name):
        if policy != model.dtype_policy.name:  # its weights are folded: a copy of it would fold them again
            raise ConfigError(f"{model.name} is already an inference copy ({model.dtype_policy.name}); make the "
                              f"{precision} copy from the original model")
        return model
    ensure_built(model)
    copy = new_model(model, policy)
    if not build_like(model, copy):
        copy = new_model(model, policy)
        build_by_tracing(copy)
    copy_weights(model, copy)
    pairs = find_conv_bn_pairs(copy, tuple(model.image_size)) if fold_bn else []
    for conv, bn in pairs:
        fold_pair(conv, bn)
    copy.folded_pairs = len(pairs)
    return copy
