"""The full-spectrum baseline of a cache: the Cannon model fitted on the train split's file rows, then every
validation and test spectrum the encoder saw (draw 0: the same noisy flux, the same mask) fitted for its
labels and radial velocity (fullfit.py). Nothing of the fitted stars but their spectra and errors is read:
their true labels and redshifts only score the fit afterwards (in the reports)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.reader import FeatureCache
from ..common.progress import status
from ..spectra.inputs import NoiseSpec, read_inputs
from ..spectra.pfsspec import PfsDataset
from .files import READ_ROWS, bar_for
from .fullfit import FitResult, FitSettings, fit_with
from .store import cache_noise, split_source
from .training import MAX_TRAIN, fit_cannon

BASELINE_VERSION = 2  # part of the baseline's cell key: bump when a change alters its numbers (2: flux scales)


@dataclass
class Baseline:
    """Per role ('val', 'test'): the fit of that split's spectra (draw 0), the model's description, seconds."""

    fits: dict[str, FitResult]
    model: dict[str, Any]
    seconds: float
    n_train: int


def describe(order: int, train_on: str, settings: FitSettings, cells: Any = "auto",
             max_train: int | None = MAX_TRAIN) -> dict[str, Any]:
    """What determines the baseline's numbers besides the data (its cell key)."""
    return {"model": "cannon", "order": int(order), "train_on": train_on, "fit": settings.to_dict(),
            "cells": cells if isinstance(cells, str) or cells is None else list(cells), "max_train": max_train,
            "version": BASELINE_VERSION}


def full_spectrum_baseline(cache: FeatureCache, train_split: str, splits: dict[str, str], *, order: int = 2,
                           train_on: str = "flux", settings: FitSettings | None = None, cells: Any = "auto",
                           max_train: int | None = MAX_TRAIN, show_progress: bool = True) -> Baseline:
    """Fit the model on `train_split` and the spectra of each split in `splits` ({role: split})."""
    settings = (settings or FitSettings()).validate()
    start_time = time.time()
    mode, level, seed = cache_noise(cache)
    path, start, stop = split_source(cache, train_split)
    used = stop - start if max_train is None else min(stop - start, int(max_train))
    status(f"full-spectrum baseline: Cannon model (order {order}) on {used} '{train_split}' spectra of {path}")
    model = fit_cannon(path, (start, stop), order=order, train_on=train_on, noise_level=level, noise=mode,
                       noise_seed=seed, cells=cells, max_train=max_train, show_progress=show_progress)
    mask = cache.mask
    pixels = np.flatnonzero(mask)
    noise = NoiseSpec(mode, seed, level).validate()
    fits = {}
    for role, split in splits.items():
        path, start, stop = split_source(cache, split)
        parts: list[FitResult] = []
        with PfsDataset(path) as ds, bar_for(stop - start, f"full-spectrum fit: {split}", show_progress) as bar:
            for a in range(start, stop, READ_ROWS):
                b = min(a + READ_ROWS, stop)
                inputs = read_inputs(ds, a, b, mask, noise, stream=0)  # draw 0: what the encoder saw
                parts.append(fit_with(model, inputs.noisy, inputs.sigma, pixels, settings, progress=bar.update))
        fits[role] = FitResult(np.concatenate([p.labels for p in parts]), np.concatenate([p.redshift for p in parts]),
                               np.concatenate([p.chi2 for p in parts]), np.concatenate([p.n_pixels for p in parts]),
                               np.concatenate([p.iterations for p in parts]), parts[0].label_names,
                               np.concatenate([p.scale for p in parts]))
    scatter = model.base.scatter if hasattr(model, "base") else model.scatter
    info = {**model.info, "scatter_median": float(np.nanmedian(scatter)), "pixels": int(len(pixels))}
    return Baseline(fits, info, time.time() - start_time, int(model.info["n"]))
