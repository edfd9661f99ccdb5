"""kdet: readable Keras 3 detectors and segmenters on TensorFlow.

    import kdet, keras
    model = kdet.models.RetinaNet(num_classes=3, image_size=(384, 384), depth=18)
    model.compile(optimizer="adam")
    model.fit(dataset)            # (images, {"boxes": [B, M, 4], "labels": [B, M]}) in model.bounding_box_format
    model.predict(images)         # any size -> {"boxes", "scores", "classes", "num_detections"}
    model.save("m.keras"); keras.saving.load_model("m.keras")   # works after `import kdet`

The config-driven API mirrors the CLI: `kdet.build_model`, `kdet.train`, `kdet.evaluate`, `kdet.predict`,
`kdet.export`, `kdet.benchmark` take the same arguments as `kdet train|evaluate|predict|export|benchmark`.
Importing kdet registers every model, layer and loss with Keras, so `keras.saving.load_model` finds them.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.2.0"

from kdet import models  # noqa: E402  (registers every architecture with Keras)
from kdet.api import benchmark, build_model, evaluate, export, predict, train  # noqa: E402
from kdet.config import load_config  # noqa: E402
from kdet.errors import ConfigError, DataError, KdetError  # noqa: E402
from kdet.models import MODELS  # noqa: E402

__all__ = ["MODELS", "ConfigError", "DataError", "KdetError", "__version__", "benchmark", "build_model", "evaluate",
           "export", "load_config", "models", "predict", "train"]
