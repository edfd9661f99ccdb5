"""JSON <-> tensors for `kdet serve`'s REST API, as TensorFlow Serving's json_tensor.cc does it.

  * "instances" (row format): a list with one entry per example, either plain values (one input) or objects
    {input_key: value}; the response is {"predictions": [...]}, one entry (an object when several outputs) per example.
  * "inputs" (columnar format): a value (one input) or {input_key: batched value}; the response is {"outputs": ...}.
  * string inputs take UTF-8 text or {"b64": "..."} for binary data (encoded images for `serving_bytes`);
    string outputs whose key ends in "_bytes" come back as {"b64": "..."}.
  * numbers follow the input's dtype: integers only for integer inputs (range-checked), any number for floats,
    true/false for bool; floats are written as TF Serving writes them: %g, or %.9g when %g would lose bits.
  * instance masks (kdet's one departure from TF Serving's JSON): an output named "masks" of dtype uint8 and rank 4
    ([B, K, H, W], Mask R-CNN) is written per instance as COCO RLE {"size": [H, W], "counts": str} (pycocotools'
    compressed string, `pycocotools.mask.decode` reads it back), K of them per image, instead of B*K*H*W numbers.
    When the response also has "original_size" [B, 2] (`serving_bytes`, whose masks are padded to the batch's
    largest image), each image's masks are cut to its own size first. gRPC keeps the tensor.
Every rule violation raises a `ServingError` (INVALID_ARGUMENT) with TF Serving's wording where it has one.
"""
import base64
import binascii
import json

import grpc
import numpy as np
import tensorflow as tf

from kdet.inference.predict import mask_rle
from kdet.serving.core import ServingError, invalid_argument


def short_json(value, limit=120):
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value):
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _type_error(value, dtype):
    return invalid_argument(f"JSON Value: {short_json(value)} Type: {_json_type(value)} is not of expected type: "
                            f"{dtype.name}")


def _is_b64(value):
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _leaves(value):
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _dense_shape(value):
    """Shape read along the first elements, as TF Serving's GetDenseTensorShape."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _decode_b64(value):
    text = value["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(f"Unable to base64 decode: {short_json(value)}") from None


def _string_array(value):
    """Nested lists of str / {"b64": ...} -> object array of bytes, checking that the lists are dense."""
    shape = _dense_shape(value)
    flat = []

    def fill(item, level):
        if not isinstance(item, list):
            if level != len(shape):
                raise invalid_argument(f"JSON Value: {short_json(item)} found at incorrect level: {level + 1} in the "
                                       f"JSON DOM. Expected at level: {len(shape)}")
            if isinstance(item, str):
                flat.append(item.encode("utf-8"))
            elif isinstance(item, dict):
                if not _is_b64(item):
                    raise invalid_argument(f"JSON Value: {short_json(item)} not formatted correctly for base64 data")
                flat.append(_decode_b64(item))
            else:
                raise _type_error(item, tf.string)
            return
        if level >= len(shape) or len(item) != shape[level]:
            raise invalid_argument(f"Encountered list at unexpected size: {len(item)} at level: {level} expected "
                                   f"size: {shape[level] if level < len(shape) else 'none'}")
        for child in item:
            fill(child, level + 1)

    fill(value, 0)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def json_to_array(value, dtype):
    """One JSON value (scalar or nested lists) -> np.ndarray of `dtype` (a tf.DType), with TF Serving's type rules:
    integers only for integer dtypes, numbers for floats, true/false for bool, strings or b64 objects for strings."""
    if dtype == tf.string:
        return _string_array(value)
    if isinstance(value, dict):
        raise _type_error(value, dtype)
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError):
        raise invalid_argument(f"JSON Value: {short_json(value)} is not a dense tensor: lists at one level have "
                               f"different lengths") from None
    target = np.dtype(dtype.as_numpy_dtype)
    if dtype.is_bool:
        allowed = "b"
    elif dtype.is_integer:
        allowed = "iu"
    elif dtype.is_floating:
        allowed = "iuf"
    else:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON to type: {dtype.name}")
    if array.size and array.dtype.kind not in allowed:
        bad = next((leaf for leaf in _leaves(value)
                    if not (isinstance(leaf, bool) if dtype.is_bool else
                            isinstance(leaf, int) and not isinstance(leaf, bool) if dtype.is_integer else
                            isinstance(leaf, (int, float)) and not isinstance(leaf, bool))), value)
        raise _type_error(bad, dtype)
    if array.size and dtype.is_integer:
        info = np.iinfo(target)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise invalid_argument(f"JSON Value: {low if low < info.min else high} is out of range for {dtype.name}")
    if array.size and dtype.is_floating and array.dtype.kind == "f":
        finite = array[np.isfinite(array)]
        if finite.size and np.abs(finite).max() > np.finfo(target).max:
            raise invalid_argument(f"Cannot convert JSON value: {np.abs(finite).max()} to {dtype.name} without "
                                   f"loss of precision.")
    return array.astype(target)


def instances_to_inputs(instances, specs):
    """Row format: {"instances": [...]} -> {key: [N, ...] array}; `specs` {key: tf.TensorSpec}."""
    if not isinstance(instances, list):
        raise invalid_argument("Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid_argument("No values in 'instances' array")
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named and len(specs) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input tensors "
                               "required as per tensorinfo_map")
    rows = {key: [] for key in specs}
    for index, item in enumerate(instances):
        is_object = isinstance(item, dict) and not _is_b64(item)
        if named != is_object:
            raise invalid_argument(f"Expecting {'object' if named else 'value/list'} but got "
                                   f"{'object' if is_object else 'list'} at item {index} of input list")
        for key, value in (item.items() if named else [(next(iter(specs)), item)]):
            if key not in specs:
                raise invalid_argument(f"Failed to process element: {index} key: {key} of 'instances' list. "
                                       f"Error: JSON object: does not have named input: {key}")
            try:
                array = json_to_array(value, specs[key].dtype)
            except ServingError as error:
                raise ServingError(error.code, f"Failed to process element: {index} of 'instances' list. "
                                               f"Error: {error.message}") from None
            if rows[key] and rows[key][0].shape != array.shape:
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. Expecting shape "
                                       f"{list(rows[key][0].shape)} but got: {list(array.shape)}")
            rows[key].append(array)
        if named and set(item) != set(specs):
            raise invalid_argument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                   f"{short_json(item)} must only have keys: {','.join(sorted(specs))}")
    return {key: np.stack(arrays) for key, arrays in rows.items()}


def columns_to_inputs(inputs, specs):
    """Columnar format: {"inputs": value or {key: value}} -> {key: array}."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(specs) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input tensors "
                                   "required as per tensorinfo_map")
        key = next(iter(specs))
        return {key: json_to_array(inputs, specs[key].dtype)}
    for key in specs:
        if key not in inputs:
            raise invalid_argument(f"Missing named input: {key} in 'inputs' object.")
    return {key: json_to_array(inputs[key], spec.dtype) for key, spec in specs.items()}


# -- numpy -> JSON ----------------------------------------------------------------------------------------------
def _format_floats(flat):
    """float array -> JSON number strings as TF Serving's WriteDecimal: %g, or full precision if %g loses bits."""
    wide = flat.astype(np.float64).tolist()
    precise = "%.17g" if flat.dtype == np.float64 else "%.9g"
    texts = ["%g" % v for v in wide]
    back = np.array([float(t) for t in texts]).astype(flat.dtype)
    for i in np.flatnonzero((back != flat) & np.isfinite(flat)):
        texts[i] = precise % wide[i]
    for i, v in enumerate(wide):
        if v != v:
            texts[i] = "NaN"
        elif v in (float("inf"), float("-inf")):
            texts[i] = "Infinity" if v > 0 else "-Infinity"
        elif "." not in texts[i] and "e" not in texts[i]:
            texts[i] += ".0"
    return texts


def _format_values(array, as_bytes):
    """Any output array -> flat list of JSON texts, one per element (row-major)."""
    flat = array.reshape(-1)
    if flat.dtype.kind == "f":
        return _format_floats(flat if flat.dtype in (np.float32, np.float64) else flat.astype(np.float32))
    if flat.dtype.kind == "b":
        return ["true" if v else "false" for v in flat.tolist()]
    if flat.dtype.kind in "iu":
        return [str(v) for v in flat.tolist()]
    if flat.dtype == object or flat.dtype.kind == "S":
        if as_bytes:
            return [json.dumps({"b64": base64.b64encode(v).decode("ascii")}) for v in flat.tolist()]
        return [json.dumps(v.decode("utf-8", errors="replace")) for v in flat.tolist()]
    raise invalid_argument(f"Failed to write JSON value for tensor type: {array.dtype}")


def _nest(texts, shape):
    """Flat element texts (row-major) -> one JSON text of nested lists with `shape`."""
    for level in range(len(shape) - 1, -1, -1):
        size, groups = shape[level], int(np.prod(shape[:level], dtype=np.int64))
        texts = ["[" + ",".join(texts[g * size:(g + 1) * size]) + "]" for g in range(groups)]
    return texts[0]


def is_instance_masks(key, array):
    """The RLE rule: the output "masks" of dtype uint8 and rank 4 holds instance masks [B, K, H, W]."""
    return key == "masks" and array.dtype == np.uint8 and array.ndim == 4


def _instance_masks_json(masks, original_size=None):
    """uint8 [B, K, H, W] -> one JSON text per image, a list of K COCO RLEs, each cut to original_size[b] if given."""
    texts = []
    for b, image_masks in enumerate(masks):
        if original_size is not None:
            height, width = (int(v) for v in original_size[b])
            image_masks = image_masks[:, :height, :width]
        texts.append("[" + ",".join(json.dumps(mask_rle(mask)) for mask in image_masks) + "]")
    return texts


def outputs_to_json(outputs, row_format):
    """{key: array} -> the response text: {"predictions": [...]} (row) or {"outputs": ...} (columnar)."""
    keys = sorted(outputs)
    rle = {k: _instance_masks_json(outputs[k], outputs.get("original_size")) for k in keys
           if is_instance_masks(k, outputs[k])}
    texts = {k: _format_values(outputs[k], k.endswith("_bytes") and outputs[k].dtype == object) for k in keys
             if k not in rle}
    if not row_format:
        columns = {k: "[" + ",".join(rle[k]) + "]" if k in rle else _nest(texts[k], outputs[k].shape) for k in keys}
        body = columns[keys[0]] if len(keys) == 1 else \
            "{" + ",".join(f"{json.dumps(k)}:{columns[k]}" for k in keys) + "}"
        return '{"outputs":' + body + "}"
    batch = None
    for key in keys:
        if outputs[key].ndim == 0:
            raise invalid_argument(f"Tensor name: {key} has no shape information ")
        size = outputs[key].shape[0]
        if size < 1:
            raise invalid_argument(f"Tensor name: {key} has invalid batch size: {size}")
        if batch is not None and size != batch:
            raise invalid_argument(f"Tensor name: {key} has inconsistent batch size: {size} expecting: {batch}")
        batch = size
    items = []
    for i in range(batch):
        per_key = {key: rle[key][i] for key in rle}
        for key in set(keys) - set(rle):
            step = int(np.prod(outputs[key].shape[1:], dtype=np.int64))
            per_key[key] = _nest(texts[key][i * step:(i + 1) * step], outputs[key].shape[1:])
        items.append(per_key[keys[0]] if len(keys) == 1 else
                     "{" + ",".join(f"{json.dumps(k)}:{per_key[k]}" for k in keys) + "}")
    return '{"predictions":[' + ",".join(items) + "]}"
