"""Strict JSON for every file maskdet writes.

``json.dumps`` writes ``NaN`` and ``Infinity`` by default, which are not JSON: ``JSON.parse``, ``jq`` and
most other readers refuse the whole file. Every non-finite number becomes ``null`` here, and
``allow_nan=False`` makes any that slipped through an error instead of a broken file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from maskdet.writing import write_text


def strict(value):
    """``value`` with numpy scalars and arrays turned into Python ones and non-finite floats into None."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:  # 0-d tensors
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(value, **kwargs) -> str:
    return json.dumps(strict(value), allow_nan=False, **kwargs)


def write_json(path: str | Path, value, indent: int = 2) -> Path:
    """Write ``value`` as strict JSON, atomically (``maskdet.writing``: a reader never sees half a file)."""
    return write_text(path, dumps(value, indent=indent))
