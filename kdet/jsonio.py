"""Strict JSON for every file kdet writes: NaN and infinities become null (never the non-standard `NaN`), numpy
scalars and arrays become numbers and lists, and files are written through a temporary file renamed into place, so
a killed run leaves the previous file or the new one, never half of one."""
import json
import math
from pathlib import Path

import numpy as np


def strict(value):
    """`value` with every non-finite float replaced by None and numpy values made plain Python."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, (str, int, float, bool)) else k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value, **kwargs):
    """json.dumps of `strict(value)`; anything else json cannot write is written as its str (paths, dtypes)."""
    kwargs.setdefault("default", str)
    return json.dumps(strict(value), allow_nan=False, **kwargs)


def write_json(value, path, indent=1):
    """Write `value` as strict JSON to `path` (parents created) atomically. Returns the Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(dumps(value, indent=indent), encoding="utf-8")
    temporary.replace(path)
    return path
