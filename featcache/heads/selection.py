"""Which rows a fit trains and validates on: the whole split, a nested subset of it, or one fold of K.

A probing study asks how much labelled data an encoder saves (fits on nested random subsets of the train
split: the 500 spectra of a 500 fit are among the 2000 of a 2000 fit, and the same for every cell and every
cache of the same files) and whether a difference survives another split of the data (K folds over
train + validation spectra, the test split untouched). Subsets and folds are drawn over *spectra* (their
position in the split); a training spectrum brings every noise draw the cache has of it, validation
uses draw 0, as in a plain fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.reader import FeatureCache, FeatureMatrix, StackedMatrix
from ..common.errors import FeatcacheError
from ..common.subsets import nested_subset


@dataclass(frozen=True)
class RowSelection:
    """A fit's training rows: `train_size` spectra of the train split (a nested subset, drawn with
    `subset_seed`), or fold `fold` of `n_folds` over train + val spectra (drawn with `fold_seed`)."""

    train_size: int | None = None
    subset_seed: int = 0
    fold: int | None = None
    n_folds: int | None = None
    fold_seed: int = 0

    def __post_init__(self) -> None:
        if self.train_size is not None and self.train_size < 1:
            raise FeatcacheError(f"--train-sizes: {self.train_size} is not a positive number of spectra")
        if (self.fold is None) != (self.n_folds is None):
            raise FeatcacheError("a fold needs both its number and the number of folds")
        if self.n_folds is not None:
            if self.n_folds < 2:
                raise FeatcacheError(f"--folds {self.n_folds}: K-fold needs at least 2 folds")
            if not 0 <= int(self.fold or 0) < self.n_folds:
                raise FeatcacheError(f"fold {self.fold} is not one of 0..{self.n_folds - 1}")
            if self.train_size is not None:
                raise FeatcacheError("--train-sizes and --folds are separate studies: give one of them")

    def describe(self) -> dict[str, Any] | None:
        """Part of a fit's identity (compare's cell keys); None for the whole split."""
        out: dict[str, Any] = {}
        if self.train_size is not None:
            out.update(train_size=self.train_size, subset_seed=self.subset_seed)
        if self.n_folds is not None:
            out.update(fold=self.fold, n_folds=self.n_folds, fold_seed=self.fold_seed)
        return out or None


def fold_of(n_pool: int, n_folds: int, seed: int) -> np.ndarray:
    """The fold of each of n_pool spectra: a seeded permutation dealt round-robin, so fold sizes differ by
    at most one and every spectrum is in exactly one fold."""
    if n_pool < n_folds:
        raise FeatcacheError(f"--folds {n_folds}: only {n_pool} train + validation spectra")
    folds = np.empty(n_pool, dtype=np.int64)
    folds[np.random.default_rng(seed).permutation(n_pool)] = np.arange(n_pool) % n_folds
    return folds


@dataclass
class RoleRows:
    """One role's rows: the feature matrix, the targets, and (val / test) where each row comes from."""

    x: Any  # FeatureMatrix | StackedMatrix: row-sliceable, .load()
    y: np.ndarray
    splits: np.ndarray | None = None  # per row: the split it comes from
    index: np.ndarray | None = None   # per row: its spectrum index in that split's file
    labels: dict[str, np.ndarray] | None = None


def _all_draws(cache: FeatureCache, split: str, spectra: np.ndarray) -> np.ndarray:
    """Row positions (draw-major layout) of every draw of the given spectrum positions, sorted."""
    n = cache.n_spectra(split)
    draws = cache.n_rows(split) // n
    return np.sort(np.concatenate([spectra + d * n for d in range(draws)]))


def _targets(cache: FeatureCache, split: str, targets: list[str], draw: int | None) -> np.ndarray:
    return np.stack([cache.labels(split, t, draw=draw).astype(np.float64) for t in targets], axis=1)


def _scored(cache: FeatureCache, split: str, features: list[tuple[str, str]], targets: list[str],
            spectra: np.ndarray | None = None) -> RoleRows:
    """Draw 0 of a split's spectra (all, or the given positions), with where each row comes from."""
    keep = slice(None) if spectra is None else spectra
    labels = {name: cache.labels(split, name, draw=0)[keep] for name in cache.label_names(split)}
    index = cache.index(split, draw=0)[keep]
    return RoleRows(FeatureMatrix(cache, split, features, draw=0, rows=spectra),
                    _targets(cache, split, targets, draw=0)[keep], np.full(len(index), split), index, labels)


def role_rows(cache: FeatureCache, features: list[tuple[str, str]], targets: list[str], train_split: str,
              val_split: str | None, test_split: str | None, selection: RowSelection | None = None
              ) -> dict[str, RoleRows]:
    """The train / val / test rows of a fit under its selection (the whole splits when None)."""
    selection = selection or RowSelection()
    out: dict[str, RoleRows] = {}
    if selection.n_folds is not None:
        if val_split is None:
            raise FeatcacheError("--folds needs a validation split: the folds are drawn over train + validation")
        n_train, n_val = cache.n_spectra(train_split), cache.n_spectra(val_split)
        folds = fold_of(n_train + n_val, selection.n_folds, selection.fold_seed)
        held = folds == selection.fold
        fit_train, fit_val = np.flatnonzero(~held[:n_train]), np.flatnonzero(~held[n_train:])
        rows = [(train_split, fit_train), (val_split, fit_val)]
        draws = [(s, _all_draws(cache, s, p)) for s, p in rows]
        out["train"] = RoleRows(StackedMatrix([FeatureMatrix(cache, s, features, draw=None, rows=r) for s, r in draws]),
                                np.concatenate([_targets(cache, s, targets, draw=None)[r] for s, r in draws]))
        parts = [_scored(cache, train_split, features, targets, np.flatnonzero(held[:n_train])),
                 _scored(cache, val_split, features, targets, np.flatnonzero(held[n_train:]))]
        out["val"] = RoleRows(StackedMatrix([p.x for p in parts]), np.concatenate([p.y for p in parts]),
                              np.concatenate([p.splits for p in parts]), np.concatenate([p.index for p in parts]),
                              {k: np.concatenate([p.labels[k] for p in parts]) for k in parts[0].labels
                               if all(k in p.labels for p in parts)})
    else:
        if selection.train_size is not None:
            spectra = nested_subset(cache.n_spectra(train_split), selection.train_size, selection.subset_seed)
            rows = _all_draws(cache, train_split, spectra)
            out["train"] = RoleRows(FeatureMatrix(cache, train_split, features, draw=None, rows=rows),
                                    _targets(cache, train_split, targets, draw=None)[rows])
        else:
            out["train"] = RoleRows(FeatureMatrix(cache, train_split, features, draw=None),
                                    _targets(cache, train_split, targets, draw=None))
        if val_split is not None:
            out["val"] = _scored(cache, val_split, features, targets)
    if test_split is not None:
        out["test"] = _scored(cache, test_split, features, targets)
    return out
