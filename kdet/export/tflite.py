"""TFLite export: builtins only, float32 / float16 / int8, with the detection dict as the signature's outputs.

The model is traced inside `with builtins_only():` so that ops without a TFLite builtin (CropAndResize,
CombinedNonMaxSuppression, MaxPoolWithArgmax) take their builtins-only twins, then converted with
`supported_ops=[TFLITE_BUILTINS]`: an op that still has no builtin fails the export with a `KdetError` naming it.
Never `model.export(format="litert")`: it adds SELECT_TF_OPS silently, and no Flex delegate can run here
(docs/design.md, "Export and serving"). The model's class names go into the flatbuffer's metadata list as the entry
"kdet_class_names" (a JSON list of str; `kdet.inference.runners.tflite_metadata` reads it).

int8: the network is quantised, decoding + NMS stay float. Measured: with NMS (or the box arithmetic feeding it)
inside the int8 graph, counts drift or a DIV kernel fails. The decode is traced under the name scope `kdet_decode`;
after calibration every tensor of that scope (and any `keep_float` scope, and any scope the model lists in
`tflite_float_scopes`) loses its calibration range and is denylisted from quantisation (TF's mlir_quantize
`denylisted_nodes`), so the int8 network ends in a DEQUANTIZE and decode, NMS included, runs in float32. Tensors
whose calibrated range is a sentinel (not finite, or beyond +-1e30) stay float32 as well.

The trace also runs under `kdet.export.layer_forms.xnnpack_layer_forms()`: deep Conv2D / Dense layers as sums over
input-channel slices (float only) and dilated convolutions as one dilated CONV_2D, forms LiteRT's XNNPACK runs fast.
"""
import contextlib
import re
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kdet.errors import ConfigError, KdetError
from kdet.export.layer_forms import xnnpack_layer_forms
from kdet.export.saved_model import checked_class_names, ensure_built
from kdet.models.inference_copy import inference_model
from kdet.inference.runners import CLASS_NAMES_KEY, class_names_to_json
from kdet.ops.mode import builtins_only

DECODE_SCOPE = "kdet_decode"
QUANTIZE_MODES = (None, "fp16", "int8")
# TOPK_V2 is multi-output, so the node denylist misses it, and the quantiser made it int8 inside float scopes (a
# QUANTIZE inserted before it: Faster R-CNN's proposal top-k, the decode's score top-k): every TOPK_V2 stays float32.
FLOAT_OPS = ("TOPK_V2",)
UNBOUNDED_RANGE = 1e30  # a calibrated |min| or |max| above it is a sentinel, not an activation range


def export_tflite(model, path, quantize=None, representative_images=None, keep_float=(), fold_bn=True,
                  batch_size=None):
    """Convert `model` to a TFLite flatbuffer at `path` and return the path.

    Args:
        model: a kdet model (`detect`, `image_size`).
        path: output file, e.g. `saved_models/name/name_int8.tflite`.
        quantize: None (float32), "fp16" (float16 weights, float32 compute) or "int8" (int8 network, float decode).
        representative_images: uint8 or float 0..255 [N, H, W, 3] training images; needed for "int8" (calibration).
        keep_float: extra name scopes (layer names, e.g. a proposal layer) whose ops stay float in an int8 model,
            for models that run NMS inside `call`. Ops fed only by such a scope stay float too (no input range).
        fold_bn: convert the model with BatchNorm folded into its convolutions (kdet.models.inference_copy).
        batch_size: None (default): a dynamic batch (the runner resizes the input); 1 fixes it, so every shape is
            static: the converter folds the shape arithmetic and dilated convolutions (SPACE_TO_BATCH_ND + CONV_2D +
            BATCH_TO_SPACE_ND) away and XNNPACK takes more of the graph (load_runner then runs a batch image by
            image; measured in benchmarks/profile_stages.py --tflite, "tflite_batch1").
    Signature `serving_default`: images uint8 [B, H, W, 3] -> the model's output dict (same keys as `detect`).
    Raises:
        KdetError: an op has no TFLite builtin (the message names it); ConfigError: bad quantize / images.
    """
    if quantize not in QUANTIZE_MODES:
        raise ConfigError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if batch_size not in (None, 1):
        raise ConfigError(f"batch_size must be None (dynamic) or 1, got {batch_size!r}")
    if quantize == "int8":
        representative_images = _check_images(model, representative_images)
    class_names = checked_class_names(model)
    model = inference_model(model, fold_bn=fold_bn)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix="kdet-tflite-")
    try:
        with xnnpack_layer_forms(split=quantize != "int8"):  # int8: each partial sum would be requantised
            _write_builtins_saved_model(model, staging, batch_size)
        converter = _converter(staging, quantize)
        if quantize == "int8":
            scopes = (DECODE_SCOPE,) + tuple(getattr(model, "tflite_float_scopes", ())) + tuple(keep_float)
            flatbuffer = _convert_int8(converter, representative_images, scopes)
        else:
            flatbuffer = _convert(converter)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if class_names is not None:
        flatbuffer = with_metadata(flatbuffer, {CLASS_NAMES_KEY: class_names_to_json(class_names)})
    path.write_bytes(flatbuffer)
    return str(path)


def with_metadata(flatbuffer, entries):
    """The flatbuffer with {name: text} added to (or replaced in) its Model.metadata list, each in a new buffer."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    model.metadata = [m for m in model.metadata or [] if m.name.decode() not in entries]
    for name, text in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(text.encode("utf-8"), np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _write_builtins_saved_model(model, directory, batch_size=None):
    """A SavedModel of the builtins-only trace (from_saved_model freezes Keras variables; concrete functions don't)."""
    ensure_built(model)
    height, width = model.image_size

    def serve(images):
        outputs = model(tf.cast(images, tf.float32), training=False)
        with tf.name_scope(DECODE_SCOPE):  # marks the float part for int8
            return dict(model.decode(outputs, (height, width)))

    with builtins_only():  # read by kdet.ops at trace time, which happens inside write_out
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve,
                             input_signature=[tf.TensorSpec((batch_size, height, width, 3), tf.uint8, name="images")])
        archive.write_out(directory, verbose=False)


def function_flatbuffer(fn, input_signature, track, layer_forms=True):
    """The float TFLite flatbuffer of any function of Keras objects, converted as `export_tflite` converts a model:
    traced under `builtins_only()` (and, if layer_forms, `xnnpack_layer_forms()`), written through
    keras.export.ExportArchive (which freezes the variables of `track`, the model or layer fn uses), TFLITE_BUILTINS
    only.

    fn: returns a dict of tensors (the signature `serving_default`'s outputs); input_signature: TensorSpecs with
    names (its inputs). For stage profiles, benchmarks and tests of single layers.
    """
    directory = tempfile.mkdtemp(prefix="kdet-tflite-function-")
    try:
        with builtins_only(), xnnpack_layer_forms() if layer_forms else contextlib.nullcontext():
            archive = keras.export.ExportArchive()
            archive.track(track)
            archive.add_endpoint("serving_default", fn, input_signature=input_signature)
            archive.write_out(directory, verbose=False)
        return _convert(_converter(directory, None))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _converter(saved_model_dir, quantize):
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter


def _convert(converter):
    try:
        return converter.convert()
    except Exception as error:  # ConverterError lives in a private module; anything else is re-raised unchanged
        _raise_if_unsupported(error)
        raise


def _raise_if_unsupported(error):
    ops = unsupported_ops(error)
    if ops:
        raise KdetError(
            "TFLite export failed: no TFLite builtin for " + ", ".join(ops) + ". Give the op a builtins-only twin in "
            "kdet.ops (chosen by builtins_only()); SELECT_TF_OPS is not an option, no Flex delegate runs here"
        ) from None


def unsupported_ops(error):
    """Converter error -> ["CropAndResize (at roi_align/CropAndResize)", ...], the ops without a builtin kernel."""
    found = {}
    for data in getattr(error, "errors", None) or []:
        name = data.operator.name.removeprefix("tf.")
        if name:
            calls = [c.name.split("@")[0] for c in data.location.call] if data.location.call else []
            found.setdefault(name, calls[0] if calls else "")
    if not found:
        for name in re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", str(error)):
            found.setdefault(name, "")
    return [f"{name} (at {where})" if where else name for name, where in sorted(found.items())]


def _check_images(model, images):
    if images is None:
        raise ConfigError("quantize='int8' needs representative_images: uint8 [N, H, W, 3] training images")
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != (*model.image_size, 3) or len(images) == 0:
        raise ConfigError(f"representative_images must be [N, {model.image_size[0]}, {model.image_size[1]}, 3], "
                          f"got {images.shape}")
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def _convert_int8(converter, images, float_scopes):
    """Calibrate on `images`, then quantise everything except the tensors of `float_scopes` and the tensors whose
    calibrated range no int8 scale can hold.

    Two measures keep a scope float (measured on the tiny detectors of tests/testing.py): the quantiser's node
    denylist only matches ops whose location is a single name, so multi-output ops (TOPK_V2, SPLIT, NMS) and fused
    ops ("a;b") slip through it; an op whose tensors carry no calibration range is never quantised, so those ranges
    are removed from the calibrated model as well. With the denylist alone TANH/LOGISTIC/MIN/MAX of the decode stay
    int8; with both, the decode (and its WHILE body) is float32 and the network ends in a DEQUANTIZE.

    Calibration and quantisation are TF's two steps (calibrate_only, then mlir_quantize) called directly, the calls
    QuantizationDebugger makes, without its numeric-verify debug model: that one is quantised from the untouched
    ranges, and a range of -inf (log of an empty box's area in the RoI level rule) or +-3.4e38 (the -FLT_MAX fill
    before a top-k) crashed TF 2.21's quantiser with a segmentation fault (ConvertStatsToQDQs; Mask R-CNN).
    """
    from tensorflow.lite.python import convert

    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def dataset():
        for image in images:
            yield [image[None]]

    converter.representative_dataset = dataset
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # noqa: SLF001  (TF's own two-step path, as the debugger's)
    calibrated = _convert(converter)
    float_tensors = set(tensors_in_scopes(calibrated, float_scopes)) | set(unbounded_tensors(calibrated))
    calibrated = _without_calibration(calibrated, float_tensors)
    return convert.mlir_quantize(calibrated, disable_per_channel=converter._experimental_disable_per_channel,  # noqa
                                 fully_quantize=False, enable_numeric_verify=False,
                                 denylisted_ops=list(FLOAT_OPS), denylisted_nodes=sorted(float_tensors))


def unbounded_tensors(flatbuffer, limit=UNBOUNDED_RANGE):
    """Names of the calibrated tensors (all subgraphs) whose recorded min or max is not finite or beyond +-limit:
    sentinels (-FLT_MAX fills, log(0) = -inf) that no int8 scale represents; they stay float32."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    names = set()
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            q = tensor.quantization
            if q is None or q.min is None or q.max is None or not len(q.min):
                continue
            bounds = np.concatenate([np.asarray(q.min, np.float64), np.asarray(q.max, np.float64)])
            if not np.all(np.isfinite(bounds)) or np.max(np.abs(bounds)) > limit:
                names.add(tensor.name.decode())
    return sorted(names)


def _without_calibration(flatbuffer, names):
    """The calibrated model with the recorded min/max ranges of the tensors in `names` removed."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            if tensor.name.decode() in names:
                tensor.quantization = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def tensors_in_scopes(flatbuffer, scopes):
    """Names of the tensors (all subgraphs, so WHILE bodies too) created under any of `scopes`.

    A converted tensor's name lists the fused TF ops it came from ("a/conv;a/relu"); any part in a scope counts.
    A scope matches at any depth and with the "_1" suffix Keras adds when a layer is traced again
    ("detector_1/proposals_1/..." is in scope "proposals"). Signature outputs are named after the call op
    ("StatefulPartitionedCall:0") and always stay float.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    pattern = re.compile(r"(^|/)(" + "|".join(re.escape(s) for s in scopes) + r")(_\d+)?/")
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    names = set()
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            name = tensor.name.decode()
            if name.startswith("StatefulPartitionedCall") or any(pattern.search(p) for p in name.split(";")):
                names.add(name)
    return sorted(names)
