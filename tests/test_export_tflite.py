"""TFLite export: builtins only, parity with Keras (counts included), fp16, int8 with float decode, loud failures."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from kdet.errors import ConfigError, KdetError
from kdet.export import export_tflite, load_runner
from kdet.export.layer_forms import contraction_parts
from kdet.export.tflite import function_flatbuffer
from kdet.inference.runners import tflite_metadata
from tests.testing import (TinyGridDetector, TinyRoiDetector, compare_detections, keras_outputs, make_tiny_detector,
                           quantised_report, random_images)

pytestmark = pytest.mark.slow

OP_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


def op_types(path):
    """[(subgraph, op name, input dtypes, output dtypes)] of a .tflite file."""
    model = flatbuffer_utils.read_model(str(path))
    rows = []
    for index, subgraph in enumerate(model.subgraphs):
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = OP_NAMES[max(code.builtinCode, code.deprecatedBuiltinCode)]
            dtypes = [[subgraph.tensors[i].type for i in ids if i >= 0] for ids in (op.inputs, op.outputs)]
            rows.append((index, name, *dtypes))
    return rows


CLASS_NAMES = ["red cell", "white cell", "plättchen"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    # Every file of the fixture carries class names, so the parity tests below run the flatbuffer with metadata added.
    model, images = make_tiny_detector(batch=3, class_names=CLASS_NAMES)
    directory = tmp_path_factory.mktemp("tflite")
    calibration = random_images(model, 16, seed=5)
    paths = {q: export_tflite(model, directory / f"grid_{q}.tflite", quantize=q, representative_images=calibration)
             for q in (None, "fp16", "int8")}
    return model, images, paths


def test_fp32_matches_keras_counts_included(grid):
    model, images, paths = grid
    reference = keras_outputs(model, images)
    counts = reference["num_detections"]
    # Counts strictly between 0 and K and different per image: a count read from the padded NMS indices
    # (always K in TFLite) or from the wrong image would fail here.
    assert 0 < counts.min() and counts.max() < model.max_detections and len(set(counts)) > 1, counts
    runner = load_runner(paths[None])
    outputs = runner(images)
    assert sorted(outputs) == ["boxes", "classes", "num_detections", "scores"]
    compare_detections(reference, outputs, box_atol=1e-3, name="tflite")
    # Batch 1 and a different batch size reuse the same interpreter (the input is resized).
    compare_detections(keras_outputs(model, images[1:2]), runner(images[1:2]), name="tflite batch 1")
    names = {name for _, name, _, _ in op_types(paths[None])}
    assert "NON_MAX_SUPPRESSION_V5" in names and "WHILE" in names


def test_fixed_batch_export_matches_keras_with_static_shapes(grid, tmp_path):
    """batch_size=1 fixes the input's batch: no shape arithmetic is left in the graph (every tensor static, what
    lets XNNPACK plan it), and the runner runs a batch of 3 image by image with Keras' detections."""
    model, images, paths = grid
    path = export_tflite(model, tmp_path / "b1.tflite", batch_size=1)
    runner = load_runner(path)
    assert list(runner._runner.get_input_details()["images"]["shape_signature"]) == [1, *model.image_size, 3]
    assert "SHAPE" not in {name for _, name, _, _ in op_types(path)}
    assert "SHAPE" in {name for _, name, _, _ in op_types(paths[None])}  # the dynamic batch's shape arithmetic
    compare_detections(keras_outputs(model, images), runner(images), box_atol=1e-3, name="tflite batch_size=1")
    with pytest.raises(ConfigError, match="batch_size"):
        export_tflite(model, tmp_path / "b2.tflite", batch_size=2)


def test_evaluate_artifact_scores_the_tflite_model_like_keras(grid):
    """kdet.eval.detection.evaluate_artifact runs an exported file over a dataset: the fp32 TFLite model's COCO / VOC
    figures equal the Keras model's on the same images."""
    from kdet.data.shapes import make_shapes
    from kdet.eval.detection import evaluate_artifact, evaluate_model
    from kdet.eval.detection import detect_dataset
    model, _, paths = grid
    dataset = make_shapes(12, tuple(model.image_size), max_objects=3, seed=2)
    runner = load_runner(paths[None])
    # The same detections, mapped back to each image's frame, from both (the tiny model is random: many boxes).
    ours, theirs = detect_dataset(model, dataset, progress=False), detect_dataset(runner, dataset,
                                                                                   image_size=model.image_size)
    assert sum(len(d["scores"]) for d in ours) > 12
    for a, b in zip(ours, theirs):
        assert a["image_id"] == b["image_id"] and len(a["scores"]) == len(b["scores"])
        np.testing.assert_allclose(np.sort(a["scores"]), np.sort(b["scores"]), atol=1e-4)
    keras_figures = evaluate_model(model, dataset, progress=False)
    tflite_figures = evaluate_artifact(paths[None], dataset, model.image_size, progress=False)
    for key in ("AP", "AP50", "mAP50"):
        assert abs(tflite_figures[key] - keras_figures[key]) < 1e-6, (key, tflite_figures[key], keras_figures[key])
    with pytest.raises(ValueError, match="image_size"):
        detect_dataset(runner, dataset)


def test_class_names_in_the_flatbuffer_metadata(grid, tmp_path):
    _, _, paths = grid
    for quantize, path in paths.items():
        entries = tflite_metadata(path)
        assert entries["kdet_class_names"].decode() == '["red cell", "white cell", "plättchen"]', quantize
        assert "min_runtime_version" in entries, quantize  # the converter's own entries are kept
        assert load_runner(path).class_names == CLASS_NAMES, quantize
    # The same entries through TF's own flatbuffer reader (what other TFLite tooling sees).
    stored = flatbuffer_utils.read_model(paths[None])
    names = {m.name.decode(): bytes(stored.buffers[m.buffer].data) for m in stored.metadata}
    assert names == tflite_metadata(paths[None])


def test_roi_detector_fp32_matches_keras(tmp_path):
    model, images = make_tiny_detector(TinyRoiDetector, batch=2, quantile=0.9)
    path = export_tflite(model, tmp_path / "roi.tflite")
    runner = load_runner(path)
    compare_detections(keras_outputs(model, images), runner(images), box_atol=1e-3, name="tflite roi")
    assert runner.class_names is None and "kdet_class_names" not in tflite_metadata(path)  # a model without names
    names = {name for _, name, _, _ in op_types(path)}
    assert "GATHER" in names or "GATHER_ND" in names  # the RoIAlign twin, not CropAndResize


def test_fp16_halves_the_weights_and_stays_close(grid):
    model, images, paths = grid
    # Every convolution kernel is stored as float16 (2 bytes a weight) and dequantised at load time.
    stored = flatbuffer_utils.read_model(paths["fp16"])
    half = sum(int(np.prod(t.shape)) for sg in stored.subgraphs for t in sg.tensors
               if t.type == schema.TensorType.FLOAT16)
    kernels = sum(int(np.prod(w.shape)) for w in model.weights if len(w.shape) == 4)
    assert half >= kernels, (half, kernels)
    assert len(open(paths["fp16"], "rb").read()) < len(open(paths[None], "rb").read())
    report = quantised_report(keras_outputs(model, images), load_runner(paths["fp16"])(images))
    assert report["matched_fraction"] >= 0.8 and report["mean_box_error"] < 0.5, report


def test_int8_quantises_the_network_and_keeps_decode_float(grid):
    model, images, paths = grid
    ops = op_types(paths["int8"])
    int8 = schema.TensorType.INT8
    convolutions = [row for row in ops if row[1] == "CONV_2D"]
    assert convolutions and all(row[3] == [int8] for row in convolutions)
    # NMS runs on float boxes and scores; nothing inside the decode loop is quantised.
    nms = [row for row in ops if row[1] == "NON_MAX_SUPPRESSION_V5"]
    assert nms and all(row[2][:2] == [schema.TensorType.FLOAT32] * 2 for row in nms)
    loop_ops = [row for row in ops if row[0] > 0]
    assert not [row for row in loop_ops if int8 in row[3] or row[1] in ("QUANTIZE", "DEQUANTIZE")]
    outputs = load_runner(paths["int8"])(images)
    reference = keras_outputs(model, images)
    assert all(outputs[k].shape == reference[k].shape for k in reference)
    report = quantised_report(reference, outputs)
    # Reported, not asserted equal: random weights put many scores near the threshold.
    assert report["matched_fraction"] >= 0.5, report
    print("int8 vs Keras:", report)


def test_int8_keep_float_scopes_stay_float(grid, tmp_path):
    model, images, _ = grid
    path = export_tflite(model, tmp_path / "head_float.tflite", quantize="int8",
                         representative_images=random_images(model, 8, seed=5), keep_float=("head",))
    outputs = [row[3] for row in op_types(path) if row[1] == "CONV_2D"]
    # The three backbone convolutions are int8; the head layer's convolution (the last one) stays float32.
    assert outputs == [[schema.TensorType.INT8]] * 3 + [[schema.TensorType.FLOAT32]], outputs
    assert load_runner(path)(images)["boxes"].shape == (len(images), model.max_detections, 4)


def test_unsupported_op_fails_loudly_naming_the_op(tmp_path):
    class NoTwinDetector(TinyGridDetector):
        """Calls CombinedNonMaxSuppression directly, without a builtins-only twin."""

        def decode(self, outputs, image_size):
            boxes = self.grid_boxes(outputs["box_deltas"], image_size)
            scores = tf.reshape(tf.sigmoid(outputs["class_logits"]), [tf.shape(boxes)[0], -1, self.num_classes])
            out = tf.image.combined_non_max_suppression(boxes[:, :, None], scores, 5, 5, clip_boxes=False)
            return {"boxes": out.nmsed_boxes, "scores": out.nmsed_scores,
                    "classes": tf.cast(out.nmsed_classes, tf.int32), "num_detections": out.valid_detections}

    model = NoTwinDetector()
    with pytest.raises(KdetError, match=r"no TFLite builtin for CombinedNonMaxSuppression") as error:
        export_tflite(model, tmp_path / "bad.tflite")
    assert "\n" not in str(error.value) and not (tmp_path / "bad.tflite").exists()
    with pytest.raises(KdetError, match="CombinedNonMaxSuppression"):
        export_tflite(model, tmp_path / "bad_int8.tflite", quantize="int8",
                      representative_images=random_images(model, 2))


def test_bad_quantisation_arguments(tmp_path):
    model = TinyGridDetector()
    with pytest.raises(ConfigError, match="representative_images"):
        export_tflite(model, tmp_path / "a.tflite", quantize="int8")
    with pytest.raises(ConfigError, match=r"\[N, 64, 80, 3\]"):
        export_tflite(model, tmp_path / "a.tflite", quantize="int8", representative_images=np.zeros((2, 80, 64, 3)))
    with pytest.raises(ConfigError, match="quantize must be one of"):
        export_tflite(model, tmp_path / "a.tflite", quantize="int4")


def test_contraction_parts_are_the_fewest_equal_slices_within_the_depth():
    assert contraction_parts(12544, 12544) == 4  # Faster R-CNN fc6: 3 slices would not divide 12544
    assert contraction_parts(9 * 2048, 2048) == 4  # FCN's classifier conv
    assert contraction_parts(9 * 1024, 1024) == 2
    assert contraction_parts(9 * 512, 512) == 1  # ResNet layer4: at the limit, never split
    assert contraction_parts(5000, 5000, max_depth=4608) == 2


def _op_names(flatbuffer, batch):
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], (batch, 5, 5, 640))
    interpreter.allocate_tensors()
    return interpreter, [op["op_name"] for op in interpreter._get_ops_details()]  # noqa: SLF001


def test_tflite_layer_forms_split_deep_contractions_and_keep_dilation_in_one_conv():
    """export.layer_forms: a depth-5760 conv and a depth-5000 Dense as 2 slices each, a dilated conv as one CONV_2D
    in a dynamic-batch graph (Keras' own form leaves SPACE_TO_BATCH_ND there); same outputs as Keras."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((5, 5, 640))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)  # depth 5760: 2 slices
    x = keras.layers.Conv2D(8, 3, padding="same", dilation_rate=2)(x)  # depth 72, dilated
    x = keras.layers.Conv2D(4, 1)(x)  # depth 8: untouched
    y = keras.layers.Dense(6)(keras.layers.Dense(5000)(keras.layers.Flatten()(x)))  # depth 100 and 5000 (2)
    model = keras.Model(inputs, y)
    images = np.random.default_rng(0).normal(0, 1, (2, 5, 5, 640)).astype(np.float32)
    signature = [tf.TensorSpec((None, 5, 5, 640), tf.float32, name="x")]
    original = keras.layers.Conv2D.call, keras.layers.Dense.call
    flatbuffer = function_flatbuffer(lambda t: {"y": model(t)}, signature, model)
    assert (keras.layers.Conv2D.call, keras.layers.Dense.call) == original  # restored on exit
    interpreter, ops = _op_names(flatbuffer, 2)
    assert ops.count("CONV_2D") == 4 and ops.count("FULLY_CONNECTED") == 3 and "SPACE_TO_BATCH_ND" not in ops, ops
    assert ops.count("SPLIT") == 2, ops  # the two split layers' inputs; none for the dilated conv
    _, keras_forms = _op_names(function_flatbuffer(lambda t: {"y": model(t)}, signature, model, layer_forms=False), 2)
    assert keras_forms.count("FULLY_CONNECTED") == 2 and "SPACE_TO_BATCH_ND" in keras_forms, keras_forms
    want = model(images).numpy()
    got = interpreter.get_signature_runner("serving_default")(x=images)["y"]
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_tflite_layer_forms_winograd_for_wide_3x3_convolutions():
    """export.layer_forms: a 3x3 stride-1 'same' conv of 128 -> 128 channels on an odd 7x9 map as Winograd
    F(2x2, 3x3) (16 1x1 CONV_2D, SPACE_TO_DEPTH / DEPTH_TO_SPACE), narrower or strided 3x3 convs and every conv of an
    int8 trace (split=False) as one CONV_2D; same outputs as Keras in a dynamic-batch graph."""
    import keras

    from kdet.export.layer_forms import xnnpack_layer_forms

    keras.utils.set_random_seed(4)
    inputs = keras.Input((7, 9, 128))
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu")(inputs)  # Winograd
    x = keras.layers.Conv2D(64, 3, padding="same")(x)  # 64 filters: direct
    x = keras.layers.Conv2D(128, 3, padding="same")(x)  # 64 input channels: direct
    y = keras.layers.Conv2D(128, 3, strides=2, padding="same")(x)  # strided: direct
    model = keras.Model(inputs, y)
    signature = [tf.TensorSpec((None, 7, 9, 128), tf.float32, name="x")]
    interpreter = tf.lite.Interpreter(model_content=function_flatbuffer(lambda t: {"y": model(t)}, signature, model))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], (2, 7, 9, 128))
    interpreter.allocate_tensors()
    ops = [op["op_name"] for op in interpreter._get_ops_details()]  # noqa: SLF001
    assert ops.count("CONV_2D") == 16 + 3 and ops.count("DEPTH_TO_SPACE") == ops.count("SPACE_TO_DEPTH") == 1, ops
    images = np.random.default_rng(1).normal(0, 1, (2, 7, 9, 128)).astype(np.float32)
    want = model(images).numpy()
    got = interpreter.get_signature_runner("serving_default")(x=images)["y"]
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    with xnnpack_layer_forms(split=False):
        graph = tf.function(model).get_concrete_function(signature[0]).graph
    assert not [op for op in graph.get_operations() if op.type == "DepthToSpace"]


def test_winograd_forms_in_a_resnet_fpn_detector_match_keras():
    """Faster R-CNN R18-FPN (128-channel FPN, BN folded as every export): the 15 Winograd layers (ResNet layer3 /
    layer4 3x3s, FPN outputs, the RPN conv on 5 levels, odd-sized maps included) give Keras' features and RPN
    outputs in TFLite."""
    import keras

    from kdet.models.faster_rcnn import FasterRCNN
    from kdet.models.inference_copy import inference_model

    keras.utils.set_random_seed(5)
    model = FasterRCNN(2, image_size=(96, 128), depth=18, base_width=32, fpn_channels=128)
    images = np.random.default_rng(2).uniform(0, 255, (2, 96, 128, 3)).astype(np.float32)
    model(images)
    model = inference_model(model)

    def stages(t):
        levels, _ = model.extract_features(t)
        objectness, deltas = model.rpn_head(levels)
        return {**{f"p{i}": level for i, level in enumerate(levels)}, "objectness": objectness, "deltas": deltas}

    signature = [tf.TensorSpec((None, 96, 128, 3), tf.float32, name="images")]
    flatbuffers = {forms: function_flatbuffer(stages, signature, model, layer_forms=forms) for forms in (True, False)}
    counts = {forms: [op["op_name"] for op in tf.lite.Interpreter(model_content=fb)._get_ops_details()].count(  # noqa
        "DEPTH_TO_SPACE") for forms, fb in flatbuffers.items()}
    assert counts[True] - counts[False] == 3 + 3 + 4 + 5, counts
    want = {k: v.numpy() for k, v in stages(images).items()}
    interpreter = tf.lite.Interpreter(model_content=flatbuffers[True])
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], images.shape)
    got = interpreter.get_signature_runner("serving_default")(images=images)
    for key, value in want.items():
        assert np.abs(got[key] - value).max() <= 2e-5 * max(1.0, np.abs(value).max()), key


@pytest.mark.parametrize("size, channels, winograd", [((16, 16), 512, True), ((13, 13), 512, False),
                                                      ((7, 7), 256, True), ((3, 3), 256, True)])
def test_winograd_form_only_where_tiles_outweigh_the_filters(size, channels, winograd):
    """Wide filters (> 256 x 256) need >= 64 output tiles per image (16x16: 64; 13x13: 7 * 7 = 49 stays direct:
    YOLOv2's 13x13 1024-channel layers made the model slower in Winograd form); 256 x 256 filters at any size."""
    import keras

    from kdet.export.layer_forms import xnnpack_layer_forms

    layer = keras.layers.Conv2D(channels, 3, padding="same")
    layer.build((None, *size, channels))
    with xnnpack_layer_forms():
        graph = tf.function(layer).get_concrete_function(tf.TensorSpec((None, *size, channels))).graph
    assert any(op.type == "DepthToSpace" for op in graph.get_operations()) == winograd
