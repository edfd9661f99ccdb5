"""FCN-32s/16s/8s, the encoder-decoder with every unpooling, U-Net (valid / same): shapes, overlap-tile, the
Keras-native path (fit on (images, masks), any input size, reload in a fresh process), class weights by adapt(),
U-Net's border weights from instance masks in the train step, export parity (SavedModel, TFLite builtins incl.
max-unpooling, ONNX)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.backbones.vgg import VGGBackbone
from kdet.data.pipeline import make_tf_dataset
from kdet.data.shapes import make_shapes
from kdet.errors import ConfigError
from kdet.losses.unet_weights import border_weight_map, instance_label_image
from kdet.models import MODELS
from kdet.models.base import DataNeeds
from kdet.models.fcn import FCN
from kdet.models.segmentation_base import predict_tiled
from kdet.models.segnet import UNPOOLING, EncoderDecoder
from kdet.models.unet import UNet, valid_sizes

from tests.harness import check_keras_native
from tests.testing import check_export_parity, random_images

TINY_VGG = dict(widths=(4, 8, 8, 16, 16), convs_per_stage=(1, 1, 1, 1, 1), fc_width=16, fc_kernel=3)


def ceil_div(a, b):
    return -(-a // b)


def test_vgg16_backbone_is_vgg16_and_names_its_features():
    backbone = VGGBackbone()
    features = backbone(np.zeros((1, 37, 45, 3), np.float32))
    assert backbone.count_params() == 14_714_688  # keras.applications.VGG16(include_top=False)
    assert [w.path.split("/")[-2] for w in backbone.weights][:2] == ["block1_conv1", "block1_conv1"]
    for i, stride in enumerate((2, 4, 8, 16, 32), start=1):
        assert features[f"pool{i}"].shape[1:3] == (ceil_div(37, stride), ceil_div(45, stride))
    assert features["conv4_3"].shape == (1, 5, 6, 512) and features["conv5_3"].shape == (1, 3, 3, 512)
    floor = VGGBackbone((4,) * 5, pool_padding="valid")(np.zeros((1, 37, 45, 3), np.float32))
    assert floor["pool5"].shape[1:3] == (1, 1)
    with pytest.raises(ValueError, match="pool_padding"):
        VGGBackbone(pool_padding="full")


@pytest.mark.parametrize("size", [(37, 45), (33, 97), (65, 64), (100, 75), (31, 17)])
@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_fcn_skip_shapes_for_odd_sizes(variant, size):
    model = FCN(3, size, variant=variant, **TINY_VGG)
    shapes = model.skip_shapes(np.zeros((2, *size, 3), np.float32))
    for name, stride in (("pool3", 8), ("pool4", 16), ("pool5", 32)):
        assert tuple(shapes[name][1:3]) == (ceil_div(size[0], stride), ceil_div(size[1], stride))
    assert tuple(shapes["logits"]) == (2, *size, 4)  # num_classes + background


def test_fcn_follows_the_paper_at_init():
    model = FCN(2, (64, 64), variant="8s", **TINY_VGG)
    model(np.zeros((1, 64, 64, 3), np.float32))
    assert not model.score_pool4.kernel.numpy().any() and not model.score_pool3.kernel.numpy().any()
    frozen = {v.path.partition("/")[2] for v in model.non_trainable_weights}
    assert frozen == {"upscore8/deconv/kernel"}  # final upsampling: fixed bilinear; the x2 ones are learned
    # FCN-8s at init: the skips add zeros, so pool3 / pool4 cannot change the output yet
    images = random_images(model, 2)
    features = model.backbone(model.normalize(images))
    assert model.score_pool3(features["pool3"]).numpy().max() == 0.0
    with pytest.raises(ConfigError, match="variant"):
        FCN(2, (64, 64), variant="4s")


@pytest.mark.parametrize("unpooling", UNPOOLING)
def test_encoder_decoder_shapes_for_every_unpooling(unpooling):
    model = EncoderDecoder(2, (37, 45), unpooling=unpooling, widths=(4, 8, 8), convs_per_stage=(1, 2, 1))
    logits = model(np.zeros((2, 37, 45, 3), np.float32))["logits"]
    assert logits.shape == (2, 37, 45, 3)
    assert type(model).from_config(model.get_config()).get_config() == model.get_config()


def test_segnet_decoder_unpools_at_the_encoder_argmax():
    model = EncoderDecoder(1, (16, 16), unpooling="max", widths=(2,), convs_per_stage=(1,))
    x = model.normalize(random_images(model, 1))
    features = model._run_convs(model.encoder[0][0], x, False)
    values, argmax = model.encoder[0][2](features)
    np.testing.assert_array_equal(values, model.encoder[0][1](features))  # plain pool: the same maxima
    unpooled = model.decoder[0][0](values, argmax, features).numpy()
    kept = unpooled != 0
    np.testing.assert_array_equal(unpooled[kept], features.numpy()[kept])  # values only where they came from
    assert kept.sum() == values.numpy().astype(bool).sum()


def test_unet_sizes_follow_the_paper():
    assert valid_sizes(388, 4) == (572, 388)
    model = UNet(1, (388, 388), widths=(2, 2, 2, 2, 2))
    assert model.network_input_size == (572, 572) and model.context_margin == 92
    x = model.normalize(np.zeros((1, 572, 572, 3), np.float32))
    assert model.network(x).shape == (1, 388, 388, 2)  # 572 x 572 tile -> 388 x 388 segmentation
    assert model(np.zeros((1, 388, 388, 3), np.float32))["logits"].shape == (1, 388, 388, 2)
    same = UNet(1, (50, 70), widths=(4, 8, 16), padding="same")
    assert same.network_input_size == (52, 72) and same(np.zeros((1, 50, 70, 3)))["logits"].shape == (1, 50, 70, 2)
    assert same(np.zeros((1, 37, 61, 3)))["logits"].shape == (1, 37, 61, 2)  # any size
    with pytest.raises(ValueError, match="too small"):
        same(np.zeros((1, 2, 61, 3)))
    with pytest.raises(ValueError, match=r"fixed geometry: it takes 388x388 images .*got 400x388"):
        model(np.zeros((1, 400, 388, 3), np.float32))
    unknown = tf.function(lambda x: model(x)["logits"], input_signature=[tf.TensorSpec([None, None, None, 3])])
    with pytest.raises(tf.errors.InvalidArgumentError, match="fixed geometry"):
        unknown(tf.zeros((1, 380, 388, 3)))
    with pytest.raises(ConfigError, match="too small"):
        UNet(1, (40, 40), widths=(4, 8, 16, 32, 64))
    with pytest.raises(ConfigError, match="padding"):
        UNet(1, (64, 64), padding="full")


def test_overlap_tile_equals_one_pass_over_the_whole_image():
    # A valid U-Net's output pixel only sees its receptive field, so stitching 64 x 64 tiles whose margins hold the
    # real neighbours must equal one run over the whole (mirror-padded) image.
    keras.utils.set_random_seed(0)
    model = UNet(1, (64, 64), widths=(4, 8, 8), batch_norm=True)
    image = np.random.default_rng(0).uniform(0, 255, (128, 192, 3)).astype(np.float32)
    tiled = predict_tiled(model, image)
    margin = model.context_margin
    padded = np.pad(image, [[margin, margin], [margin, margin], [0, 0]], mode="reflect")
    whole = model.network(model.normalize(padded[None])).numpy()[0]
    assert whole.shape[:2] == (128, 192)
    np.testing.assert_allclose(tiled["probabilities"], tf.nn.softmax(whole).numpy(), atol=1e-5)
    odd = predict_tiled(model, image[:100, :77], overlap=8)  # any size, tiles overlapping
    assert odd["masks"].shape == (100, 77) and odd["probabilities"].shape == (100, 77, 2)


def test_semantic_contract_and_targets():
    model = FCN(3, (32, 32), class_weights="median", **TINY_VGG)
    assert model.task == "semantic" and model.num_mask_classes == 4
    assert model.data_needs == DataNeeds(semantic=True, adapt=True)
    assert FCN(3, (32, 32), **TINY_VGG).data_needs == DataNeeds(semantic=True)
    out = model.predict_on_batch(random_images(model, 2))
    assert out["masks"].shape == (2, 32, 32) and out["masks"].dtype == np.int32
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out["masks"], out["probabilities"].argmax(-1))
    np.testing.assert_array_equal(model.class_weight_vector.numpy(), [1, 1, 1, 1])  # until adapt
    masks = np.array([[[0, 1], [255, 3]]])
    for y in (masks, masks[..., None], masks[..., None].astype(np.float32), {"segmentation_masks": masks[..., None]}):
        targets = model.encode_targets(model.standardize_targets(y, (2, 2)), (2, 2))
        np.testing.assert_array_equal(targets["labels"], masks)
        assert targets["labels"].dtype == tf.int32
    with pytest.raises(ValueError, match="masks are 2x2 but the images 4x4"):
        model.encode_targets(model.standardize_targets(masks, (4, 4)), (4, 4))
    with pytest.raises(ValueError, match="segmentation_masks"):
        model.standardize_targets({"boxes": np.zeros((1, 1, 4))}, (2, 2))
    with pytest.raises(ConfigError, match="class_weights = 'mean'"):
        FCN(3, (32, 32), class_weights="mean", **TINY_VGG)
    assert {"fcn", "segnet", "unet"} <= set(MODELS)


def median_frequency_reference(masks, num_classes, ignore=255):
    """Eigen & Fergus by hand: f_c = pixels of c / labelled pixels of the images containing c; w_c = median(f) / f_c."""
    frequency = {}
    for c in range(num_classes):
        containing = [m for m in masks if (m == c).any()]
        if containing:
            frequency[c] = sum((m == c).sum() for m in containing) / sum((m != ignore).sum() for m in containing)
    median = np.median(list(frequency.values()))
    return np.array([median / frequency[c] if c in frequency else 1.0 for c in range(num_classes)], np.float32)


def test_adapt_computes_median_frequency_weights_like_numpy():
    rng = np.random.default_rng(0)
    masks = rng.choice([0, 0, 0, 1, 2, 255], size=(10, 12, 16)).astype(np.int32)
    masks[:4][masks[:4] == 2] = 0  # class 2 only in the last 6 images: image frequency differs from pixel frequency
    masks[7, :3, :3] = 4           # class 4 in one image; class 3 never (weight 1)
    images = np.zeros((10, 12, 16, 3), np.float32)
    model = FCN(4, (12, 16), class_weights="median", **TINY_VGG)
    dataset = tf.data.Dataset.from_tensor_slices((images, masks[..., None])).batch(3)
    weights = model.adapt(dataset)  # 4 batches, the last one short
    expected = median_frequency_reference(list(masks), 5)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    np.testing.assert_allclose(model.class_weight_vector.numpy(), expected, rtol=1e-6)
    assert expected[3] == 1.0 and len(set(np.round(expected, 4))) == 5
    with pytest.raises(ValueError, match="steps=N"):
        model.adapt(dataset.repeat())
    np.testing.assert_allclose(model.adapt(dataset.repeat(), steps=4), expected, rtol=1e-6)
    inverse = EncoderDecoder(4, (12, 16), widths=(4,), convs_per_stage=(1,), class_weights="inverse")
    pixels = np.array([(masks == c).sum() for c in range(5)], np.float64)
    present = pixels > 0
    expected = np.where(present, pixels.sum() / (present.sum() * np.maximum(pixels, 1)), 1.0)
    np.testing.assert_allclose(inverse.adapt(dataset), expected, rtol=1e-6)
    # kdet's own pipeline (255-padded masks): every (image, mask) of it, counted once
    shapes = shapes_xy(FCN(3, (32, 32), **TINY_VGG), count=12, batch=5)
    masks = [m for _, batch in shapes for m in batch.numpy()[..., 0]]
    assert len(masks) == 12
    weights = FCN(3, (32, 32), class_weights="median", **TINY_VGG).adapt(shapes)
    np.testing.assert_allclose(weights, median_frequency_reference(masks, 4), rtol=1e-6)
    assert weights[0] < min(weights[1:])  # background is the most frequent class


def shapes_xy(model, count=64, with_masks=False, batch=8):
    """kdet's own pipeline on shapes as fit data: (images, masks [B, H, W, 1]) or, for U-Net's border weights,
    (images, {"segmentation_masks", "masks" [B, N, H, W]})."""
    data = make_shapes(count, image_size=model.image_size, max_objects=3, min_size=0.3, max_size=0.6, seed=1)
    ds = make_tf_dataset(data, model.image_size, batch, training=True, with_segmentation=True, with_masks=with_masks)
    if with_masks:
        return ds.map(lambda b: (b["images"], {"segmentation_masks": b["segmentation_masks"], "masks": b["masks"]}))
    return ds.map(lambda b: (b["images"], b["segmentation_masks"]))


def train_on_shapes(model, steps=40, with_masks=False, learning_rate=3e-3):
    data = make_shapes(2, image_size=model.image_size, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    history = model.fit(shapes_xy(model, with_masks=with_masks).repeat(), epochs=4, steps_per_epoch=steps // 4,
                        verbose=0).history
    return history, np.stack([r.image for r in data.records])


@pytest.mark.slow
def test_fcn8s_keras_native(tmp_path):
    """Must show: fit on a Keras-only (images, masks) pipeline, predict at another size (= a model built there),
    reload in a fresh process after `import kdet`."""
    keras.utils.set_random_seed(0)
    model = FCN(3, (64, 64), variant="8s", batch_norm=True, dropout=0.0, class_names=["circle", "square", "triangle"],
                **TINY_VGG)
    check_keras_native(model, tmp_path, other_size=(56, 88), learning_rate=3e-3)


@pytest.mark.slow
def test_unet_same_keras_native(tmp_path):
    keras.utils.set_random_seed(0)
    model = UNet(3, (48, 48), widths=(8, 16, 16), padding="same", batch_norm=True, border_weights=False,
                 class_names=["circle", "square", "triangle"])
    assert model.data_needs == DataNeeds(semantic=True)
    check_keras_native(model, tmp_path, other_size=(40, 72), learning_rate=3e-3)


@pytest.mark.slow
def test_fcn8s_trains_saves_and_exports(tmp_path):
    keras.utils.set_random_seed(0)
    model = FCN(3, (64, 64), variant="8s", batch_norm=True, dropout=0.0, **TINY_VGG)
    history, images = train_on_shapes(model)
    assert history["pixel_loss"][-1] < 0.7 * history["pixel_loss"][0]
    assert "pixel_accuracy" in history
    reports = check_export_parity(model, images, tmp_path, formats=("keras", "saved_model", "tflite", "onnx"))
    assert reports["tflite"]["mask_agreement"] > 0.999


@pytest.mark.slow
def test_segnet_max_unpooling_trains_and_exports_with_the_builtins_twin(tmp_path):
    keras.utils.set_random_seed(0)
    model = EncoderDecoder(3, (48, 48), unpooling="max", widths=(8, 16, 16), convs_per_stage=(1, 1, 1),
                           class_weights="median")
    history, images = train_on_shapes(model)  # weights 1: adapt() was not called
    assert history["pixel_loss"][-1] < 0.7 * history["pixel_loss"][0]
    odd = model.predict(random_images(model, 2)[:, :37, :45], verbose=0)  # any size, max-unpooling included
    assert odd["masks"].shape == (2, 37, 45)
    reports = check_export_parity(model, images, tmp_path, formats=("keras", "saved_model", "tflite", "onnx"))
    assert reports["tflite"]["mask_agreement"] > 0.999  # MaxPoolWithArgmax has no builtin: the twin ran


def test_unet_border_weights_need_instance_masks_and_weigh_the_loss_like_the_paper():
    model = UNet(1, (24, 24), widths=(4, 8), padding="same", class_weights=[0.5, 2.0], w0=10.0, sigma=2.0)
    assert model.data_needs == DataNeeds(semantic=True, instance_masks=True)
    yy, xx = np.mgrid[:24, :24]
    masks = np.stack([(yy - 12) ** 2 + (xx - 7) ** 2 <= 25, (yy - 12) ** 2 + (xx - 17) ** 2 <= 16]).astype(np.uint8)
    semantic = (masks.max(0) > 0).astype(np.int32)
    semantic[0, :3] = 255
    images = tf.constant(random_images(model, 1), tf.float32)
    with pytest.raises(ValueError, match=r"'masks': \[B, N, H, W\] instance masks.*border_weights=False"):
        model.compute_loss(x=images, y=semantic[None, ..., None], y_pred=model(images))
    y = {"segmentation_masks": semantic[None, ..., None], "masks": masks[None]}
    outputs = model(images)
    loss = float(model.compute_loss(x=images, y=y, y_pred=outputs))
    # w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / 2 sigma^2): the class weight once, not again on top of the map
    weights = border_weight_map(instance_label_image(masks[None]), semantic[None], [0.5, 2.0], w0=10.0, sigma=2.0)
    weights = np.where(semantic == 255, 0.0, weights.numpy()[0])
    logits = outputs["logits"].numpy()[0].astype(np.float64)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_softmax, np.minimum(semantic, 1)[..., None], -1)[..., 0]
    assert weights.max() > 5  # the gap between the discs is weighted up
    assert loss == pytest.approx((weights * ce).sum() / weights.sum(), rel=1e-5)
    # kdet's pipeline makes the same map ahead of the step (pipeline_targets): the same loss
    ahead = model.pipeline_targets({k: tf.constant(v) for k, v in y.items()}, images)
    assert sorted(ahead) == ["segmentation_masks", "weights"]
    assert float(model.compute_loss(x=images, y=ahead, y_pred=outputs)) == pytest.approx(loss, rel=1e-6)


@pytest.mark.slow
def test_unet_with_border_weights_trains_and_exports(tmp_path):
    keras.utils.set_random_seed(0)
    model = UNet(3, (48, 48), widths=(8, 16, 16), padding="valid", batch_norm=True)
    assert model.data_needs.instance_masks and model.network_input_size == (88, 88)
    history, images = train_on_shapes(model, steps=32, with_masks=True)
    assert history["pixel_loss"][-1] < 0.7 * history["pixel_loss"][0]
    reports = check_export_parity(model, images, tmp_path, formats=("keras", "saved_model", "tflite", "onnx"))
    assert reports["onnx"]["mask_agreement"] > 0.999
