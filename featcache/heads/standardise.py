"""Standardisation shared by every head: which columns are constant, and column moments in float64."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A column whose std is below this fraction of |mean| (or exactly 0) is treated as constant. Cached features
# are float32 (relative precision 6e-8): a spread under 1e-5 of the level is rounding, not signal, and dividing
# by it turns a slightly different test value into a z-score of 1e4 or more (seen on a saturated max-pooled
# channel: train std 6.5e-7 at level 2.26, one test value 2.29).
CONSTANT_RTOL = 1e-5
MOMENT_CHUNK = 65_536


def is_constant(std: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Columns (or targets) that carry no usable variation on train."""
    return (std == 0) | (std <= CONSTANT_RTOL * np.abs(mean))


def target_name(names: Sequence[str] | None, j: int) -> str:
    return str(names[j]) if names is not None and j < len(names) else str(j)


def column_moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean and population std per column, in chunks (no full float64 copy), shifted for accuracy."""
    n = X.shape[0]
    shift = X[: min(n, MOMENT_CHUNK)].mean(axis=0, dtype=np.float64)
    s1 = np.zeros(X.shape[1])
    s2 = np.zeros(X.shape[1])
    for start in range(0, n, MOMENT_CHUNK):
        block = X[start:start + MOMENT_CHUNK].astype(np.float64) - shift
        s1 += block.sum(axis=0)
        s2 += np.einsum("ij,ij->j", block, block)
    mean = shift + s1 / n
    var = np.clip(s2 / n - (s1 / n) ** 2, 0.0, None)
    return mean, np.sqrt(var)
