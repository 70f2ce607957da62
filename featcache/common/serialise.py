"""Plain data from numpy, paths and tuples: for JSON files, YAML configs and weights-only checkpoints."""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

import numpy as np


def plain(value: Any, *, finite_only: bool = False) -> Any:
    """Recursively turn numpy scalars and arrays, paths and tuples into Python dicts, lists, numbers and
    strings. finite_only maps NaN and inf to None, so the JSON written is standard (json.dumps writes NaN)."""
    if isinstance(value, dict):
        return {str(k): plain(v, finite_only=finite_only) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v, finite_only=finite_only) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist(), finite_only=finite_only)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, PurePath):
        return str(value)
    if finite_only and isinstance(value, float) and not math.isfinite(value):
        return None
    return value
