"""Seeded nested subsets of spectra, the one rule for "N of these rows": compare's `--train-sizes` (the rows a
probe trains on), finetune's `--train-size` (the supervised baseline's rows) and pretrain's `--aux-labels` (the
rows whose labels the auxiliary loss sees) all draw with it, so the same N and seed over the same rows name the
same spectra in every command."""

from __future__ import annotations

import numpy as np

from .errors import FeatcacheError


def nested_subset(n_spectra: int, size: int, seed: int) -> np.ndarray:
    """`size` spectrum positions out of n_spectra, sorted: the first `size` of one seeded permutation, so a
    smaller subset is always inside a larger one."""
    if size > n_spectra:
        raise FeatcacheError(f"--train-sizes {size}: the train split has only {n_spectra} spectra")
    order = np.random.default_rng(seed).permutation(n_spectra)
    return np.sort(order[:size])
