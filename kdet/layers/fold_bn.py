"""BatchNorm folding: every (convolution -> BatchNormalization) pair of a built model becomes one convolution.

    pairs = fold_batch_norm(model)    # in place; returns the folded (conv, bn) layer pairs
    model.detect(images)              # the same outputs within float32 round-off, without BN's elementwise ops

In inference a BatchNormalization is y = (x - mean) * s + beta with s = gamma / sqrt(var + eps). When x is the output
of a convolution (kernel K, bias b or none, no activation), y = conv(x; K * s) + (b - mean) * s + beta: the kernel is
scaled per output channel and the BN shrinks to a bias add. Keras' BN in inference is a Mul and an Add on every
activation (after float32 casts under mixed precision) that grappler does not fuse into the convolution; a BiasAdd is
fused with the conv (and a following ReLU) into one oneDNN kernel.

Keras subclassed models call `self.bn(self.conv(x))` in Python, so pairs are found by tracing the model once with
`Conv2D.call` / `DepthwiseConv2D.call` / `BatchNormalization.call` recorded: a BN folds when its input is exactly the
output of one conv with a linear activation, channels last, called once, and that tensor has no consumer outside
the BN (checked on the traced graph, so a conv output that also feeds a shortcut is never folded). The folded BN
becomes a `FoldedBatchNormalization` (same object, same variables; isinstance checks and `training=` keep working):
its `beta` (or the conv's bias, when the conv has one) holds the folded bias. Folding is for inference only: the
folded layer refuses `training=True`.
"""
import contextlib

import keras
import numpy as np
import tensorflow as tf

CONV_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)  # Conv2DTranspose etc. are left unfolded


class FoldedBatchNormalization(keras.layers.BatchNormalization):
    """A BatchNormalization whose affine map now lives in the preceding convolution: call(x) = x + beta (BiasAdd),
    or x itself when the conv carries the bias. x [..., C] -> [..., C] in the compute dtype."""

    def call(self, inputs, training=None, mask=None):
        if training is True and self.trainable:
            raise RuntimeError(f"{self.name}: BatchNorm was folded into its convolution for inference; "
                               "train the unfolded model")
        if self._bias_in_conv:
            return inputs
        return tf.nn.bias_add(inputs, tf.cast(self.beta, inputs.dtype))


@contextlib.contextmanager
def _recording_calls(record):
    """Record, while active, every conv call (conv, output tensor) and every BN call (bn, input tensor, the graph ops
    the BN created)."""
    originals = {cls: cls.call for cls in CONV_TYPES + (keras.layers.BatchNormalization,)}

    def conv_call(original):
        def call(self, inputs, *args, **kwargs):
            outputs = original(self, inputs, *args, **kwargs)
            record["conv_outputs"].append((self, outputs))
            return outputs
        return call

    def bn_call(self, inputs, *args, **kwargs):
        graph = getattr(inputs, "graph", None)
        before = len(graph.get_operations()) if graph is not None else 0
        outputs = originals[keras.layers.BatchNormalization](self, inputs, *args, **kwargs)
        ops = set(graph.get_operations()[before:]) if graph is not None else set()
        record["bn_calls"].append((self, inputs, ops))
        return outputs

    try:
        for cls in CONV_TYPES:
            cls.call = conv_call(originals[cls])
        keras.layers.BatchNormalization.call = bn_call
        yield record
    finally:
        for cls, call in originals.items():
            cls.call = call


def find_conv_bn_pairs(model, image_size):
    """The foldable (conv, bn) pairs of `model`, traced on a float32 [1, H, W, 3] input of `image_size`. An unbuilt
    model is built by this trace (Keras may then also run layers on scratch graphs: only the trace's graph counts)."""
    record = {"conv_outputs": [], "bn_calls": []}
    height, width = image_size

    def trace(images):
        record["graph"] = images.graph
        return model(images, training=False)

    with _recording_calls(record):
        tf.function(trace).get_concrete_function(tf.TensorSpec((1, height, width, 3), tf.float32))
    graph = record["graph"]
    in_trace = lambda tensor: getattr(tensor, "graph", None) is graph  # noqa: E731
    conv_calls, bn_calls = {}, {}
    for conv, outputs in record["conv_outputs"]:
        if in_trace(outputs):
            conv_calls[id(conv)] = conv_calls.get(id(conv), 0) + 1
    bn_records = [(bn, inputs, ops) for bn, inputs, ops in record["bn_calls"] if in_trace(inputs)]
    for bn, _, _ in bn_records:
        bn_calls[id(bn)] = bn_calls.get(id(bn), 0) + 1
    producers = {id(outputs): (conv, outputs) for conv, outputs in record["conv_outputs"] if in_trace(outputs)}
    pairs = []
    for bn, inputs, bn_ops in bn_records:
        conv, outputs = producers.get(id(inputs), (None, None))
        if conv is None or outputs is not inputs or bn_calls[id(bn)] != 1 or conv_calls[id(conv)] != 1:
            continue
        if not _foldable(conv, bn, len(inputs.shape)) or any(op not in bn_ops for op in outputs.consumers()):
            continue
        pairs.append((conv, bn))
    return pairs


def _foldable(conv, bn, rank):
    """A linear, channels-last conv feeding a BN over the last axis with somewhere to put the bias."""
    linear = conv.activation in (None, keras.activations.linear)
    channels_last = getattr(conv, "data_format", "channels_last") == "channels_last"
    last_axis = bn.axis in (-1, rank - 1)
    return linear and channels_last and last_axis and (conv.use_bias or bn.center) and not bn.renorm


def fold_pair(conv, bn):
    """Fold one BN into its conv in place (float64 arithmetic) and turn the BN into a FoldedBatchNormalization."""
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    variance = np.asarray(bn.moving_variance.numpy(), np.float64)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    kernel = np.asarray(conv.kernel.numpy(), np.float64)
    if isinstance(conv, keras.layers.DepthwiseConv2D):   # [kh, kw, in, multiplier], output channel = in * m + j
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:                                                # [kh, kw, in, out]
        kernel = kernel * scale
    bias = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else np.zeros_like(mean)
    bias = (bias - mean) * scale + beta
    conv.kernel.assign(kernel.astype(np.float32))
    bn.__class__ = FoldedBatchNormalization
    bn._bias_in_conv = bool(conv.use_bias)
    if conv.use_bias:
        conv.bias.assign(bias.astype(np.float32))
    else:
        bn.beta.assign(bias.astype(np.float32))


def fold_batch_norm(model, image_size=None):
    """Fold every foldable (conv -> BN) pair of the built `model` in place; returns the list of (conv, bn) pairs.

    image_size: (H, W) of the tracing input (default `model.image_size`). Call it on a copy you only run for
    inference (kdet.models.inference_copy.inference_model makes one): the folded model cannot be trained.
    """
    pairs = find_conv_bn_pairs(model, image_size or tuple(model.image_size))
    for conv, bn in pairs:
        fold_pair(conv, bn)
    return pairs
