"""FCN-32s/16s/8s, the encoder-decoder with every unpooling, U-Net (valid / same): shapes, overlap-tile, training on
shapes, save/load and export parity (SavedModel, TFLite builtins incl. max-unpooling, ONNX)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.backbones.vgg import VGGBackbone
from kdet.data.pipeline import make_tf_dataset
from kdet.data.shapes import make_shapes
from kdet.errors import ConfigError
from kdet.models import MODELS
from kdet.models.fcn import FCN
from kdet.models.segmentation_base import predict_tiled
from kdet.models.segnet import UNPOOLING, EncoderDecoder
from kdet.models.unet import UNet, valid_sizes

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


def test_semantic_contract_and_class_weights():
    model = FCN(3, (32, 32), class_weights="median", **TINY_VGG)
    assert model.task == "semantic" and model.num_mask_classes == 4
    out = model.detect(random_images(model, 2))
    assert out["masks"].shape == (2, 32, 32) and out["masks"].dtype == tf.int32
    np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(model.class_weight_vector.numpy(), [1, 1, 1, 1])
    model.set_class_weights([0.5, 1, 2, 3])
    np.testing.assert_array_equal(model.class_weight_vector.numpy(), [0.5, 1, 2, 3])
    with pytest.raises(ConfigError, match="3 class weights for a model with 4"):
        model.set_class_weights([1, 2, 3])
    with pytest.raises(ConfigError, match="class_weights = 'mean'"):
        FCN(3, (32, 32), class_weights="mean", **TINY_VGG)
    with pytest.raises(ConfigError, match="with_segmentation=True"):
        model.encode_targets({"images": np.zeros((1, 32, 32, 3))})
    assert {"fcn", "segnet", "unet"} <= set(MODELS)


def train_on_shapes(model, steps=40, with_masks=False, learning_rate=3e-3):
    data = make_shapes(64, image_size=model.image_size, max_objects=3, min_size=0.3, max_size=0.6, seed=1)
    ds = make_tf_dataset(data, model.image_size, 8, training=True, with_segmentation=True, with_masks=with_masks)
    ds = ds.map(lambda b: (b["images"], model.encode_targets(b))).repeat()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    history = model.fit(ds, epochs=4, steps_per_epoch=steps // 4, verbose=0).history
    return history, np.stack([r.image for r in data.records[:2]])


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
    history, images = train_on_shapes(model)
    assert history["pixel_loss"][-1] < 0.7 * history["pixel_loss"][0]
    reports = check_export_parity(model, images, tmp_path, formats=("keras", "saved_model", "tflite", "onnx"))
    assert reports["tflite"]["mask_agreement"] > 0.999  # MaxPoolWithArgmax has no builtin: the twin ran


@pytest.mark.slow
def test_unet_with_border_weights_trains_and_exports(tmp_path):
    keras.utils.set_random_seed(0)
    model = UNet(3, (48, 48), widths=(8, 16, 16), padding="valid", batch_norm=True)
    assert model.uses_instance_masks and model.network_input_size == (88, 88)
    history, images = train_on_shapes(model, steps=32, with_masks=True)
    assert history["pixel_loss"][-1] < 0.7 * history["pixel_loss"][0]
    reports = check_export_parity(model, images, tmp_path, formats=("keras", "saved_model", "tflite", "onnx"))
    assert reports["onnx"]["mask_agreement"] > 0.999
