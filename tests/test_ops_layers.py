"""kdet.layers: the layers equal their ops, work in functional models, and round-trip through config and .keras."""
import keras
import numpy as np
import pytest

from kdet.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D, MultiScaleRoIAlign, RoIAlign
from kdet.ops import builtins_only, max_pool_with_argmax, max_unpool, multiscale_roi_align, roi_align


@pytest.mark.parametrize("layer", [
    RoIAlign((7, 5), spatial_scale=0.25, sampling_ratio=2, aligned=True, max_sampling_ratio=6, name="pool"),
    MultiScaleRoIAlign(7, (4, 8, 16), sampling_ratio=0, canonical_scale=200, canonical_level=3, aligned=True),
    MaxPoolingWithArgmax2D(3), MaxUnpooling2D(3)])
def test_get_config_round_trips(layer):
    rebuilt = type(layer).from_config(layer.get_config())
    assert rebuilt.get_config() == layer.get_config()


def test_roi_align_layer_flat_and_per_image_rois():
    rng = np.random.default_rng(0)
    features = rng.normal(0, 1, (2, 8, 10, 3)).astype(np.float32)
    boxes = np.sort(rng.uniform(0, 32, (2, 5, 4)), axis=-1).astype(np.float32)  # y1 <= x1 <= y2 <= x2: valid
    layer = RoIAlign(3, spatial_scale=0.25, sampling_ratio=2)
    per_image = layer(features, boxes).numpy()
    assert per_image.shape == (2, 5, 3, 3, 3)
    flat = roi_align(features, boxes.reshape(-1, 4), np.repeat([0, 1], 5), 3, 0.25, 2).numpy()
    np.testing.assert_allclose(per_image.reshape(-1, 3, 3, 3), flat, atol=1e-6)
    np.testing.assert_allclose(layer(features, boxes.reshape(-1, 4), np.repeat([0, 1], 5)).numpy(), flat, atol=1e-6)
    with pytest.raises(ValueError):
        layer(features, boxes.reshape(-1, 4))


def build_model():
    image = keras.Input((16, 20, 3), name="image")
    rois = keras.Input((6, 4), name="rois")
    conv = keras.layers.Conv2D(4, 3, padding="same")(image)
    values, argmax = MaxPoolingWithArgmax2D(2)(conv)
    coarse = keras.layers.Conv2D(4, 1)(values)
    restored = MaxUnpooling2D(2)(coarse, argmax, conv)
    level = keras.layers.AveragePooling2D(2)(restored)
    pooled = RoIAlign(4, spatial_scale=1.0, sampling_ratio=-1, aligned=True)(restored, rois)
    multi = MultiScaleRoIAlign(2, (1, 2), sampling_ratio=2)([restored, level], rois)
    return keras.Model([image, rois], {"restored": restored, "pooled": pooled, "multi": multi})


def test_layers_in_a_functional_model_save_and_load(tmp_path):
    keras.utils.set_random_seed(1)
    model = build_model()
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (2, 16, 20, 3)).astype(np.float32)
    corner = rng.uniform(0, 12, (2, 6, 2))
    rois = np.concatenate([corner, corner + rng.uniform(1, 8, (2, 6, 2))], axis=-1).astype(np.float32)
    outputs = {k: v.numpy() for k, v in model([images, rois]).items()}
    assert outputs["restored"].shape == (2, 16, 20, 4)
    assert outputs["pooled"].shape == (2, 6, 4, 4, 4) and outputs["multi"].shape == (2, 6, 2, 2, 4)
    # the unpooled map keeps exactly one non-zero per 2x2 window (where the max was)
    nonzero = (outputs["restored"] != 0).reshape(2, 8, 2, 10, 2, 4).sum(axis=(2, 4))
    assert nonzero.max() <= 1
    path = tmp_path / "layers.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for key, value in loaded([images, rois]).items():
        np.testing.assert_allclose(value.numpy(), outputs[key], atol=1e-5)
    with builtins_only():  # the twins give the same model outputs
        for key, value in model([images, rois]).items():
            np.testing.assert_allclose(value.numpy(), outputs[key], atol=1e-4)


def test_unpooling_layers_equal_the_ops():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (1, 7, 9, 2)).astype(np.float32)
    values, argmax = MaxPoolingWithArgmax2D(2)(x)
    ref_values, ref_argmax = max_pool_with_argmax(x, 2)
    np.testing.assert_array_equal(values.numpy(), ref_values.numpy())
    np.testing.assert_array_equal(argmax.numpy(), ref_argmax.numpy())
    odd = MaxUnpooling2D(2)(values, argmax, x).numpy()
    np.testing.assert_array_equal(odd, max_unpool(ref_values, ref_argmax, x.shape).numpy())
    even = x[:, :6, :8]  # without a reference the pooled input must have been exactly (h * k, w * k)
    even_values, even_argmax = MaxPoolingWithArgmax2D(2)(even)
    np.testing.assert_array_equal(MaxUnpooling2D(2)(even_values, even_argmax).numpy(),
                                  max_unpool(even_values, even_argmax, even.shape).numpy())


def test_multiscale_layer_equals_the_op():
    rng = np.random.default_rng(3)
    levels = [rng.normal(0, 1, (1, 32 // s, 32 // s, 2)).astype(np.float32) for s in (4, 8)]
    boxes = np.array([[0, 0, 100, 120], [3, 4, 20, 30], [10, 10, 128, 128]], np.float32)
    expected = multiscale_roi_align(levels, boxes, [0, 0, 0], 3, (4, 8)).numpy()
    np.testing.assert_allclose(MultiScaleRoIAlign(3, (4, 8))(levels, boxes[None]).numpy()[0], expected, atol=1e-6)
