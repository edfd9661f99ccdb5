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
import contextlib
import os
import sys



def _quiet_cli():
    """The `kdet` command without --verbose: TensorFlow's C++ log lines (oneDNN and CUDA banners, which TF 2.21
    writes before its log level is read, and per-step cost-model errors on CPU) are not shown."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    command = os.path.basename(argv0) == "kdet" or argv0.endswith(os.path.join("kdet", "__main__.py"))
    return command and "--verbose" not in sys.argv and os.environ.get("KDET_VERBOSE", "") in ("", "0")


@contextlib.contextmanager
def _native_stderr_silenced(active):
    """Send file descriptor 2 to /dev/null while the native libraries load (Python errors still reach stderr:
    an exception propagates after the descriptor is restored)."""
    if not active:
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if _quiet_cli() else "2")
with _native_stderr_silenced(_quiet_cli()):
    import tensorflow  # noqa: F401,E402  (loaded here, once, so its banners can be silenced)

__version__ = "0.2.0"

from kdet import models  # noqa: E402  (registers every architecture with Keras)
from kdet.api import benchmark, build_model, evaluate, export, predict, train  # noqa: E402
from kdet.config import load_config  # noqa: E402
from kdet.errors import ConfigError, DataError, KdetError  # noqa: E402
from kdet.models import MODELS  # noqa: E402

__all__ = ["MODELS", "ConfigError", "DataError", "KdetError", "__version__", "benchmark", "build_model", "evaluate",
           "export", "load_config", "models", "predict", "train"]
