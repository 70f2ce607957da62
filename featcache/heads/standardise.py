"""Standardisation shared by every head: which columns are constant, and column moments in float64."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError

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


def column_moments(X: Any, chunk: int = MOMENT_CHUNK, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean and population std per column, `chunk` rows at a time (no full float64 copy; X may be a
    lazy row-sliceable matrix), shifted by the first chunk's mean for accuracy. With `split` named, rows
    holding NaN or inf are refused (the streamed path's check, done in the same pass)."""
    n = X.shape[0]
    if n == 0:
        raise FeatcacheError(f"the {split or 'train'} split has no rows")
    shift = np.asarray(X[: min(n, chunk)]).mean(axis=0, dtype=np.float64)
    s1 = np.zeros(X.shape[1])
    s2 = np.zeros(X.shape[1])
    bad = 0
    for start in range(0, n, chunk):
        block = np.asarray(X[start:start + chunk]).astype(np.float64)
        if split is not None:
            bad += int(np.count_nonzero(~np.isfinite(block).all(axis=1)))
        block -= shift
        s1 += block.sum(axis=0)
        s2 += np.einsum("ij,ij->j", block, block)
    if bad:
        raise nonfinite_rows_error(bad, n, str(split))
    mean = shift + s1 / n
    var = np.clip(s2 / n - (s1 / n) ** 2, 0.0, None)
    return mean, np.sqrt(var)


def nonfinite_rows_error(bad: int, n: int, split: str) -> FeatcacheError:
    """The one wording for feature rows holding NaN or inf (in-memory check and streamed pass)."""
    return FeatcacheError(f"features contain NaN or inf values ({bad} of {n} {split} rows); "
                          "check the cache (or the spectra it was built from)")


def checked_targets(y: Any, split: str, names: Sequence[str] | None) -> np.ndarray:
    """Targets as a float64 (n, T) array; NaN or inf values are refused, naming the target and split."""
    y = np.asarray(y, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    for j in range(y.shape[1] if y.ndim == 2 else 0):
        bad = int(np.count_nonzero(~np.isfinite(y[:, j])))
        if bad:
            raise FeatcacheError(f"target '{target_name(names, j)}' has {bad} NaN or inf values on the "
                                 f"{split} split; drop or fill those rows")
    return y


def target_moments(y_train: np.ndarray, names: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Train mean and population std per target; a constant target is refused (nothing to fit)."""
    y_mean, y_scale = y_train.mean(axis=0), y_train.std(axis=0)
    for j in np.flatnonzero(is_constant(y_scale, y_mean)):
        raise FeatcacheError(f"target '{target_name(names, j)}' is constant on the train split "
                             f"(every value is {y_mean[j]:.6g}); nothing to fit")
    return y_mean, y_scale


def check_val_targets(y_val: np.ndarray, n_targets: int, names: Sequence[str] | None) -> None:
    """Validation targets match train's count and vary (validation R2 needs a spread)."""
    if y_val.shape[1] != n_targets:
        raise FeatcacheError(f"validation has {y_val.shape[1]} targets; train has {n_targets}")
    for j in np.flatnonzero(is_constant(y_val.std(axis=0), y_val.mean(axis=0))):
        raise FeatcacheError(f"target '{target_name(names, j)}' is constant on the validation "
                             "split; validation R2 is undefined")
