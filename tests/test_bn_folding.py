"""BatchNorm folding (kdet.layers.fold_bn, kdet.models.inference_copy): a folded copy computes what the model does.

Every BN gets random statistics and affine terms first (a fresh BN is almost the identity, which would hide a wrong
fold). Tolerance: raw head outputs within 1e-4 of their largest magnitude (float32 round-off of the reassociated
products), detections within 1e-2 px and 1e-4 in score.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.models.inference_copy import inference_model
from kdet.layers.fold_bn import FoldedBatchNormalization, fold_batch_norm
from kdet.models import FasterRCNN, FCNResNet, RetinaNet, SSD, SSDLite, YOLOv2
from tests.testing import compare_detections, random_images

TINY_FPN = dict(backbone="resnet_fpn", depth=18, base_width=8, fpn_channels=16,
                anchor_sizes=((16,), (32,), (64,), (128,), (256,)), rpn_pre_nms_top_n_test=1000,
                rpn_post_nms_top_n_test=100, representation_size=32, max_detections=20)
MODELS = {
    "retinanet": lambda: RetinaNet(3, image_size=(96, 128), max_detections=20, depth=18, base_width=8,
                                   fpn_channels=16, head_convs=1),
    "faster_rcnn": lambda: FasterRCNN(3, image_size=(96, 128), **TINY_FPN),
    "ssdlite": lambda: SSDLite(3, image_size=(96, 96), max_detections=20, alpha=0.35, extra_widths=(32, 16, 16, 16)),
    "yolov2": lambda: YOLOv2(3, image_size=(96, 96), max_detections=20, width_multiplier=0.0625),
    "fcn_resnet": lambda: FCNResNet(2, (32, 40), base_width=8),
}


def randomize_batch_norm(model, seed=0):
    rng = np.random.default_rng(seed)
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.3, channels))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, channels))
            layer.gamma.assign(rng.uniform(0.5, 1.5, channels))
            layer.beta.assign(rng.normal(0, 0.3, channels))
            count += 1
    return count


def built(name, seed=0):
    keras.utils.set_random_seed(seed)
    model = MODELS[name]()
    images = random_images(model, batch=2, seed=seed)
    model(images[:1])
    return model, images


def assert_close_relative(reference, candidate, rtol, name):
    """Every tensor of two output structures: floats within rtol of the tensor's largest magnitude, others equal."""
    expected_leaves, actual_leaves = keras.tree.flatten(reference), keras.tree.flatten(candidate)
    assert len(expected_leaves) == len(actual_leaves)
    for i, (expected, actual) in enumerate(zip(expected_leaves, actual_leaves)):
        expected, actual = np.asarray(expected), np.asarray(actual)
        if not np.issubdtype(expected.dtype, np.floating):
            np.testing.assert_array_equal(actual, expected, err_msg=f"{name}: output {i}")
            continue
        scale = max(float(np.abs(expected).max(initial=0.0)), 1e-6)
        error = float(np.abs(expected.astype(np.float64) - actual).max(initial=0.0)) / scale
        assert error <= rtol, f"{name}: output {i}: relative error {error:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_folded_copy_matches_the_model(name):
    model, images = built(name)
    bn_layers = randomize_batch_norm(model)
    folded = inference_model(model)
    assert folded is not model and folded.folded_pairs > 0
    # the conv outputs feeding a residual add are not a BN's only consumer elsewhere: every kdet BN follows a conv
    assert folded.folded_pairs == bn_layers, f"{name}: {folded.folded_pairs} of {bn_layers} BN folded"
    reference = model(images, training=False)
    outputs = folded(images, training=False)
    # Faster R-CNN's second stage runs on the proposals each model picked: with random weights the objectness scores
    # are near-ties, which the fold's reassociated float32 products may reorder (one CI run: its box outputs differed
    # by 0.52 of their scale). Its first stage is compared tensor by tensor, every model's detections below.
    compared = [k for k in reference if k.startswith("rpn_")] if name == "faster_rcnn" else list(reference)
    assert compared
    assert_close_relative({k: reference[k] for k in compared}, {k: outputs[k] for k in compared}, 1e-4, name)
    if model.task == "detection":
        compare_detections({k: np.asarray(v) for k, v in model.detect(images).items()},
                           {k: np.asarray(v) for k, v in folded.detect(images).items()},
                           box_atol=1e-2, score_atol=1e-4, name=name)
    # the original is untouched and still trainable; the copy refuses training
    assert not any(isinstance(layer, FoldedBatchNormalization)
                   for layer in model._flatten_layers(include_self=False, recursive=True))
    with pytest.raises(RuntimeError, match="folded"):
        folded(images, training=True)


def test_ssd300_vgg_has_no_batch_norm_and_is_returned_as_is():
    model = SSD(3, vgg_widths=(4, 8, 8, 16, 16), fc_width=16, extra_widths=((8, 16), (8, 16), (8, 16), (8, 16)))
    model(np.zeros((1, 300, 300, 3), np.float32))
    assert inference_model(model) is model


class PairsNet(keras.Model):
    """conv(bias) -> BN; depthwise -> BN; conv whose output feeds a BN and a shortcut (must stay unfolded);
    conv with ReLU -> BN (must stay unfolded)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.image_size = (12, 10)
        self.conv_bias = keras.layers.Conv2D(6, 3, padding="same", use_bias=True)
        self.bn1 = keras.layers.BatchNormalization(epsilon=1e-3)
        self.depthwise = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False)
        self.bn2 = keras.layers.BatchNormalization(epsilon=1e-5)
        self.shared = keras.layers.Conv2D(12, 1, use_bias=False)
        self.bn3 = keras.layers.BatchNormalization()
        self.relu_conv = keras.layers.Conv2D(12, 1, activation="relu", use_bias=False)
        self.bn4 = keras.layers.BatchNormalization()

    def call(self, x, training=False):
        x = self.bn1(self.conv_bias(x), training=training)
        x = self.bn2(self.depthwise(x), training=training)
        shared = self.shared(x)
        x = self.bn3(shared, training=training) + shared
        return self.bn4(self.relu_conv(x), training=training)


def test_pairs_found_and_folded_against_numpy():
    keras.utils.set_random_seed(1)
    model = PairsNet(name="pairs")
    images = np.random.default_rng(0).normal(size=(2, 12, 10, 3)).astype(np.float32)
    model(images)
    randomize_batch_norm(model, seed=2)
    model.conv_bias.bias.assign(np.random.default_rng(3).normal(size=6))
    reference = model(images).numpy()
    # numpy reference of the first pair: conv(x; K * s) + (b - mean) * s + beta
    bn = model.bn1
    scale = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    expected_kernel = model.conv_bias.kernel.numpy() * scale
    expected_bias = (model.conv_bias.bias.numpy() - bn.moving_mean.numpy()) * scale + bn.beta.numpy()
    pairs = fold_batch_norm(model)
    assert [(conv.name, bn.name) for conv, bn in pairs] == [(model.conv_bias.name, model.bn1.name),
                                                            (model.depthwise.name, model.bn2.name)]
    np.testing.assert_allclose(model.conv_bias.kernel.numpy(), expected_kernel, rtol=1e-6)
    np.testing.assert_allclose(model.conv_bias.bias.numpy(), expected_bias, rtol=1e-5, atol=1e-6)
    assert not isinstance(model.bn3, FoldedBatchNormalization) and not isinstance(model.bn4, FoldedBatchNormalization)
    np.testing.assert_allclose(model(images).numpy(), reference, rtol=1e-5, atol=1e-5)


def _op_types(saved_model_dir):
    loaded = tf.saved_model.load(saved_model_dir)
    graph = loaded.signatures["serving_default"].graph
    types = [op.type for op in graph.get_operations()]
    for function in graph.as_graph_def().library.function:
        types += [node.op for node in function.node_def]
    return types


def test_export_folds_by_default_and_can_keep_batch_norm(tmp_path):
    from kdet.export import export_saved_model, load_runner

    model, images = built("yolov2")
    randomize_batch_norm(model)
    folded_dir = export_saved_model(model, tmp_path / "folded")
    plain_dir = export_saved_model(model, tmp_path / "plain", fold_bn=False)
    # Keras' BN in inference is tf.nn.batch_normalization: an Rsqrt per BN. Folded, none is left.
    assert _op_types(plain_dir).count("Rsqrt") >= 21
    assert _op_types(folded_dir).count("Rsqrt") == 0
    reference = {k: np.asarray(v) for k, v in model.detect(tf.constant(images)).items()}
    for path in (folded_dir, plain_dir):
        compare_detections(reference, load_runner(path)(images), box_atol=1e-2, score_atol=1e-4, name=str(path))
