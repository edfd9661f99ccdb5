"""ONNX export through tf2onnx, from the same traced function as the SavedModel's `serving_default`.

Input "images" uint8 [B, H, W, 3]; outputs named like the detection dict ("boxes", "scores", "classes",
"num_detections"), or "masks"/"probabilities" for semantic models. The TF ops are kept (not the TFLite twins):
tf2onnx maps CombinedNonMaxSuppression and NonMaxSuppressionV4/V5 to ONNX NonMaxSuppression, and CropAndResize to a
Loop of Resize (measured equal to TF within 3.3e-7, opsets 13-18).
"""
import warnings
from pathlib import Path

import tensorflow as tf

from kdet.errors import KdetError
from kdet.export.saved_model import ensure_built, serving_fn


def export_onnx(model, path, opset=17):
    """Convert `model` to ONNX at `path` (parent directories created) and return the path.

    Raises:
        KdetError: tf2onnx could not convert an op (the message names it).
    """
    import tf2onnx

    _patch_tf2onnx_for_numpy2()
    ensure_built(model)
    height, width = model.image_size
    spec = [tf.TensorSpec((None, height, width, 3), tf.uint8, name="images")]
    function = tf.function(serving_fn(model), input_signature=spec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tf2onnx.convert.from_function(function, input_signature=spec, opset=int(opset), output_path=str(path))
    except ValueError as error:
        # tf2onnx reports ops it cannot map as "Unsupported ops: Counter({'Op': n})".
        if "Unsupported ops" in str(error):
            raise KdetError(f"ONNX export failed (opset {opset}): {error}") from None
        raise
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
