"""One switch between TensorFlow's ops and their TFLite-builtins-only twins.

TFLite has no builtin for CropAndResize, CombinedNonMaxSuppression or MaxPoolWithArgmax, and no Flex delegate can
run here (docs/design.md, "Export and serving"). Ops that have a twin read `builtins_only_enabled()` while they are
traced; `kdet.export` traces the model inside `with builtins_only():` for TFLite. Models never look at this flag.
"""
import contextlib
import threading

_state = threading.local()


def builtins_only_enabled() -> bool:
    """True while a `builtins_only()` block is active in this thread (read at trace time)."""
    return getattr(_state, "builtins_only", False)


@contextlib.contextmanager
def builtins_only(enabled: bool = True):
    """Trace ops with their TFLite-builtins-only twins (gather RoIAlign, padded NMS V5, space_to_depth unpool)."""
    previous = builtins_only_enabled()
    _state.builtins_only = enabled
    try:
        yield
    finally:
        _state.builtins_only = previous
