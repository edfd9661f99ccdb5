"""kdet: readable Keras 3 detectors and segmenters on TensorFlow.

The Python API mirrors the CLI: `kdet.build_model`, `kdet.train`, `kdet.evaluate`, `kdet.predict`, `kdet.export`,
`kdet.benchmark` take the same arguments as `kdet train|evaluate|predict|export|benchmark`.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"


def __getattr__(name):
    # The API pulls in TensorFlow; import it lazily so `import kdet.config` stays cheap.
    if name in ("build_model", "train", "evaluate", "predict", "export", "benchmark"):
        from kdet import api
        return getattr(api, name)
    raise AttributeError(name)
