"""One way to run any kdet artifact: `load_runner(path)(images) -> dict of numpy`.

    .keras file          keras.saving.load_model, `detect` compiled with tf.function
    SavedModel dir       tf.saved_model.load, signature `serving_default` (a TF Serving base dir: highest version)
    .tflite              ai-edge-litert Interpreter (2 threads), signature runner; the batch input is resized
    .onnx                onnxruntime (2 intra-op threads)

Every runner takes uint8 numpy images [B, H, W, 3] and checks them first: a loaded SavedModel signature called
with the wrong rank aborts the whole process (measured), so a bad shape must never reach it.
Used by `kdet benchmark` (latency of any artifact on the same images) and by the parity tests.

`runner.class_names` is the list of class names the artifact carries (None when it has none), read from
    .keras        the model's `class_names`
    SavedModel    the `class_names` attribute of the loaded object (one scalar string variable per class); the same
                  names, one per line, are in <version>/assets.extra/labels.txt for TF Serving users
    .tflite       the flatbuffer's metadata entry "kdet_class_names" (JSON list of str)
    .onnx         the model's metadata_props "kdet_class_names" (JSON list of str)
"""
import abc
import json
from pathlib import Path

import numpy as np

from kdet.errors import KdetError, require

NUM_THREADS = 2
CLASS_NAMES_KEY = "kdet_class_names"  # TFLite metadata name and ONNX metadata_props key
LABELS_FILE = ("assets.extra", "labels.txt")  # SavedModel version dir -> the class names file


def class_names_to_json(class_names):
    """["rbc", "wbc"] -> '["rbc", "wbc"]', the text stored in TFLite and ONNX metadata."""
    return json.dumps([str(name) for name in class_names], ensure_ascii=False)


def class_names_from_json(path, text):
    """The inverse of class_names_to_json; KdetError when the stored text is not a JSON list of strings."""
    try:
        names = json.loads(text)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise KdetError(f"{path}: metadata {CLASS_NAMES_KEY} is not a JSON list of strings: {text[:80]!r}")
    return names


class Runner(abc.ABC):
    """callable(images uint8 [B, H, W, 3]) -> {name: numpy array}.

    Attributes: path, format ("keras", "saved_model", "tflite", "onnx"), image_size (H, W),
    class_names (list of str, or None when the artifact carries none).
    """

    format = None

    def __init__(self, path, image_size, class_names=None):
        self.path = str(path)
        self.image_size = tuple(int(s) for s in image_size)
        self.class_names = None if class_names is None else list(class_names)

    def __call__(self, images):
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != (*self.image_size, 3) or images.dtype != np.uint8:
            raise KdetError(f"{self.path}: expects uint8 images [B, {self.image_size[0]}, {self.image_size[1]}, 3], "
                            f"got {images.dtype} {list(images.shape)}")
        return self.run(np.ascontiguousarray(images))

    @abc.abstractmethod
    def run(self, images):
        """images: checked uint8 [B, H, W, 3] -> {name: numpy array}; one subclass per artifact format."""


class KerasRunner(Runner):
    format = "keras"

    def __init__(self, path):
        import keras
        import tensorflow as tf

        import kdet.models  # noqa: F401  (registers kdet's serializable classes for safe_mode loading)

        try:
            self.model = keras.saving.load_model(path)
        except (TypeError, ValueError) as error:
            raise KdetError(f"{path}: cannot load Keras model: {error}") from None
        height, width = self.model.image_size
        self._detect = tf.function(lambda images: self.model.detect(tf.cast(images, tf.float32)),
                                   input_signature=[tf.TensorSpec((None, height, width, 3), tf.uint8)])
        super().__init__(path, self.model.image_size, getattr(self.model, "class_names", None))

    def run(self, images):
        return {k: v.numpy() for k, v in self._detect(images).items()}


class SavedModelRunner(Runner):
    format = "saved_model"

    def __init__(self, path):
        import tensorflow as tf

        directory = Path(path)
        if not (directory / "saved_model.pb").exists():
            directory = Path(latest_version_dir(directory) or directory)
        if not (directory / "saved_model.pb").exists():
            raise KdetError(f"{path}: no saved_model.pb here nor in a numbered version directory")
        self._loaded = tf.saved_model.load(str(directory))
        self._signature = self._loaded.signatures["serving_default"]
        spec = self._signature.structured_input_signature[1]["images"]
        names = getattr(self._loaded, "class_names", None)
        names = None if names is None else [name.numpy().decode("utf-8") for name in names]
        super().__init__(directory, spec.shape[1:3], names)

    def run(self, images):
        import tensorflow as tf

        return {k: v.numpy() for k, v in self._signature(images=tf.constant(images)).items()}


class TFLiteRunner(Runner):
    format = "tflite"

    def __init__(self, path):
        Interpreter = require("ai_edge_litert.interpreter", "export", "Running a TFLite model").Interpreter

        self._interpreter = Interpreter(model_path=str(path), num_threads=NUM_THREADS)
        self._runner = self._interpreter.get_signature_runner("serving_default")
        detail = self._runner.get_input_details()["images"]
        # A batch dimension fixed at conversion (shape_signature 1) cannot be resized: run image by image.
        self._dynamic_batch = int(detail["shape_signature"][0]) == -1
        stored = tflite_metadata(path).get(CLASS_NAMES_KEY)
        names = None if stored is None else class_names_from_json(path, stored.decode("utf-8", errors="replace"))
        super().__init__(path, detail["shape"][1:3], names)

    def run(self, images):
        if self._dynamic_batch:
            # The signature runner resizes the input (and reallocates) when the batch size changes.
            return {k: np.copy(v) for k, v in self._runner(images=images).items()}
        parts = [self._runner(images=image[None]) for image in images]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class OnnxRunner(Runner):
    format = "onnx"

    def __init__(self, path):
        onnxruntime = require("onnxruntime", "export", "Running an ONNX model")

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = NUM_THREADS
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        image_input = self._session.get_inputs()[0]
        self._input_name = image_input.name
        self._output_names = [o.name.split(":")[0] for o in self._session.get_outputs()]
        text = self._session.get_modelmeta().custom_metadata_map.get(CLASS_NAMES_KEY)
        super().__init__(path, image_input.shape[1:3], None if text is None else class_names_from_json(path, text))

    def run(self, images):
        outputs = self._session.run(None, {self._input_name: images})
        return dict(zip(self._output_names, outputs))


def tflite_metadata(path):
    """{name: bytes} of the metadata entries of a .tflite flatbuffer (the Model table's `metadata` list)."""
    schema = require("ai_edge_litert.schema_py_generated", "export", "Reading TFLite metadata")

    data = Path(path).read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    entries = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        buffer = model.Buffers(entry.Buffer())  # kdet writes metadata inline (not after the flatbuffer)
        content = buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
        entries[entry.Name().decode("utf-8")] = content
    return entries


def latest_version_dir(base_dir):
    """The highest integer-named subdirectory of base_dir (TF Serving's default version policy), or None."""
    versions = [p for p in Path(base_dir).glob("*") if p.is_dir() and p.name.isdigit()]
    return str(max(versions, key=lambda p: int(p.name))) if versions else None


def load_runner(path):
    """Pick the runner from the path: .keras, .tflite, .onnx file, or a SavedModel (version or base) directory."""
    path = Path(path)
    if not path.exists():
        raise KdetError(f"{path}: no such artifact")
    suffix = path.suffix.lower()
    if path.is_dir():
        return SavedModelRunner(path)
    if suffix == ".keras":
        return KerasRunner(path)
    if suffix == ".tflite":
        return TFLiteRunner(path)
    if suffix == ".onnx":
        return OnnxRunner(path)
    raise KdetError(f"{path}: unknown artifact type (expected .keras, .tflite, .onnx or a SavedModel directory)")
