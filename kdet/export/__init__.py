"""Export any kdet model to SavedModel (TF Serving layout), TFLite (fp32 / fp16 / int8) and ONNX, and run the results.

    export_model(model, out_dir, name)  ->  {"saved_model": out_dir/name/<version>,
                                             "tflite": out_dir/name/name.tflite (name_fp16 / name_int8 when quantised),
                                             "onnx": out_dir/name/name.onnx}
    load_runner(path)(images uint8 [B, H, W, 3]) -> dict of numpy, for .keras / SavedModel / .tflite / .onnx
    load_runner(path).class_names -> the model's class names stored in the artifact (None when it had none)

Export only uses the model contract (`detect(images)` = `decode(call(images), image_size)`, `image_size`, `task`,
`class_names`); artifacts take uint8 images at `image_size` and return boxes as yxyx pixels of that size. Models
never import this package.

Every artifact is written from an inference copy of the model (`kdet.models.inference_copy.inference_model`):
BatchNorm folded into the preceding convolutions unless `fold_bn=False`, and for the SavedModel optionally bfloat16
compute (`precision="bfloat16"`; TFLite has its own fp16 / int8 quantisation, ONNX stays float32). The model passed in is
never changed.
"""
from pathlib import Path

from kdet.errors import ConfigError
from kdet.models.inference_copy import check_precision, inference_model
from kdet.export.onnx import export_onnx
from kdet.inference.runners import load_runner
from kdet.export.saved_model import export_saved_model
from kdet.export.tflite import export_tflite

FORMATS = ("saved_model", "tflite", "onnx")

__all__ = ["FORMATS", "export_model", "export_onnx", "export_saved_model", "export_tflite", "load_runner",
           "tflite_filename"]


def tflite_filename(name, quantize=None):
    """name.tflite, name_fp16.tflite or name_int8.tflite."""
    return f"{name}_{quantize}.tflite" if quantize else f"{name}.tflite"


def export_model(model, out_dir, name, formats=FORMATS, quantize=None, representative_images=None, version=None,
                 fold_bn=True, precision="float32"):
    """Write the requested artifacts of `model` under `out_dir/name/` and return {format: path}.

    Args:
        model: a kdet model.
        out_dir: e.g. "saved_models"; name: the model's directory and file stem.
        formats: any of "saved_model", "tflite", "onnx".
        quantize: None, "fp16" or "int8": applies to the TFLite artifact only.
        representative_images: uint8 [N, H, W, 3] training images, needed for int8.
        version: SavedModel version (default: the next integer in out_dir/name/).
        fold_bn: fold BatchNorm into the convolutions of every artifact (default; numerically the same model).
        precision: "float32", or "bfloat16" for a SavedModel computing in bfloat16 (box coding, anchors and NMS stay
            float32); bfloat16 cannot be combined with TFLite or ONNX.
    """
    if isinstance(formats, str):
        formats = (formats,)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ConfigError(f"unknown export format(s) {unknown}; choose from {list(FORMATS)}")
    if check_precision(precision) == "bfloat16" and set(formats) - {"saved_model"}:
        raise ConfigError(f"precision bfloat16 is for the SavedModel only, not {sorted(set(formats) - {'saved_model'})}"
                          " (TFLite quantises with quantize fp16 / int8): export those formats separately")
    model = inference_model(model, precision=precision, fold_bn=fold_bn)
    model_dir = Path(out_dir) / name
    paths = {}
    if "saved_model" in formats:  # `model` is the inference copy now: the exporters use it as it is
        paths["saved_model"] = export_saved_model(model, model_dir, version=version, precision=precision)
    if "tflite" in formats:
        paths["tflite"] = export_tflite(model, model_dir / tflite_filename(name, quantize), quantize=quantize,
                                        representative_images=representative_images)
    if "onnx" in formats:
        paths["onnx"] = export_onnx(model, model_dir / f"{name}.onnx")
    return paths
