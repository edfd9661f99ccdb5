"""ONNX export through tf2onnx, from the same traced function as the SavedModel's `serving_default`.

Input "images" uint8 [B, H, W, 3]; outputs named like the detection dict ("boxes", "scores", "classes",
"num_detections"), or "masks"/"probabilities" for semantic models. The TF ops are kept (not the TFLite twins):
tf2onnx maps CombinedNonMaxSuppression and NonMaxSuppressionV4/V5 to ONNX NonMaxSuppression, and CropAndResize to a
Loop of Resize (measured equal to TF within 3.3e-7, opsets 13-18).
The model's class names are stored in the model's metadata_props under "kdet_class_names" (a JSON list of str):
`onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map["kdet_class_names"]`.
"""
import warnings
from pathlib import Path

import tensorflow as tf

from kdet.errors import KdetError, require
from kdet.export.saved_model import checked_class_names, serving_fn
from kdet.models.inference_copy import inference_model
from kdet.inference.runners import CLASS_NAMES_KEY, class_names_to_json


def export_onnx(model, path, opset=17, fold_bn=True):
    """Convert `model` to ONNX at `path` (parent directories created) and return the path; `fold_bn` converts the
    model with BatchNorm folded into its convolutions (kdet.models.inference_copy).

    Raises:
        KdetError: tf2onnx could not convert an op (the message names it).
    """
    onnx = require("onnx", "export", "ONNX export")
    tf2onnx = require("tf2onnx", "export", "ONNX export")

    _patch_tf2onnx_for_numpy2()
    class_names = checked_class_names(model)
    model = inference_model(model, fold_bn=fold_bn)
    height, width = model.image_size
    spec = [tf.TensorSpec((None, height, width, 3), tf.uint8, name="images")]
    function = tf.function(serving_fn(model), input_signature=spec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=int(opset))
    except ValueError as error:
        # tf2onnx reports ops it cannot map as "Unsupported ops: Counter({'Op': n})".
        if "Unsupported ops" in str(error):
            raise KdetError(f"ONNX export failed (opset {opset}): {error}") from None
        raise
    if class_names is not None:
        onnx.helper.set_model_props(proto, {CLASS_NAMES_KEY: class_names_to_json(class_names)})
    onnx.save(proto, str(path))
    return str(path)


def _patch_tf2onnx_for_numpy2():
    """tf2onnx 1.17's constant folding uses names numpy 2 removed (np.object, ...): Keras ships the fix, reuse it."""
    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except ImportError:  # a Keras without the patch: tf2onnx's common paths still work (measured on the test models)
        return
    with warnings.catch_warnings():  # the patch probes np.object, which numpy 2 answers with a FutureWarning
        warnings.simplefilter("ignore", FutureWarning)
        patch_tf2onnx()
