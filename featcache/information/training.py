"""Fitting the Cannon model (cannon.py) on a labelled pfsspec file: one global model and, from enough train
spectra, local models on a grid of label cells; each train spectrum moved to the rest frame with its own
redshift and divided by its flux scale (api.fit_cannon's docstring says why)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError, choices_message
from ..spectra.pfsspec import PfsDataset
from .cannon import CannonFitter, CannonModel, PiecewiseCannon
from .files import READ_ROWS, TRAIN_ON, Rows, bar_for, check_noise, file_redshift, file_rows, label_parameters

CELLS_AUTO = (4, 4, 3)   # local models on T_eff x log_g x [M/H] cells ...
MIN_CELL_TRAIN = 10000   # ... when the train split has at least this many spectra (auto)
CELL_MARGIN = 0.5        # each cell's model sees the train stars within half a cell's width around it
MAX_TRAIN = 30000        # train spectra a cache's Cannon model is fitted on at most (the split's first rows)
CACHE_ELEMENTS = 2 ** 27  # train rest-frame pixels kept in memory between the fit's passes (float32: 512 MB)


def cell_grid(cells: str | Sequence[int] | None, n_labels: int, n_train: int) -> tuple[int, ...] | None:
    """The local models' grid: 'auto' (4 x 4 x 3 over the first three labels from 10000 train spectra on,
    else none), 'none' / None (one global model), or counts per leading label ('4x4x3' or (4, 4, 3))."""
    if cells is None or cells == "none":
        return None
    if cells == "auto":
        return CELLS_AUTO[:n_labels] if n_train >= MIN_CELL_TRAIN else None
    try:
        grid = tuple(int(c) for c in (cells.lower().split("x") if isinstance(cells, str) else cells))
    except ValueError:
        grid = ()
    if not grid or len(grid) > n_labels or min(grid) < 1:
        raise FeatcacheError(f"--cannon-cells {cells}: expected auto, none or counts per leading label such as 4x4x3 "
                             f"(at most {n_labels} labels)")
    return grid


def fit_cannon(path: str | os.PathLike[str], rows: Rows = None, *, labels: Sequence[str] | None = None,
               order: int = 2, train_on: str = "flux", noise_level: float = 1.0, noise: str = "generated",
               noise_seed: int = 42, cells: str | Sequence[int] | None = "auto", max_train: int | None = None,
               flux_scale: bool = True, show_progress: bool = True) -> CannonModel | PiecewiseCannon:
    """The Cannon model (cannon.py) fitted on rows [start, stop) of a labelled pfsspec file, in the rest frame
    (each spectrum moved with its own `redshift`). train_on='flux': the clean flux, unweighted; 'noisy': the
    noisy flux (generated with this noise, or stored) weighted by 1 / sigma^2, for files without clean flux.
    cells (cell_grid): local models on a grid over the leading labels as well (a PiecewiseCannon); one pass
    over the file fits them all. max_train: only the first that many rows (a quadratic per cell needs a few
    thousand stars, not 100k; the cost is linear in them). flux_scale: each train spectrum is first divided by
    its flux scale (least squares against a first fit of the model; median 1 over the train stars), as the
    full-spectrum fit frees each star's scale: a normalisation that is not a function of the labels (featcache
    synth's median, which moves with the radial velocity; a flux calibration) is then not learnt as misfit
    (0.00048 of 0.00054 per pixel on the synthetic benchmark: benchmarks/fullfit_floor.py)."""
    if train_on not in TRAIN_ON:
        raise FeatcacheError("--cannon-train-on: " + choices_message("flux", train_on, list(TRAIN_ON)))
    with PfsDataset(path) as ds:
        start, stop, names, has_z, values = _train_labels(ds, rows, labels, max_train)
        level = check_noise(noise, noise_level, ds) if train_on == "noisy" else 1.0
        z = file_redshift(ds, start, stop)
        centre, scale = values.mean(axis=0), values.std(axis=0)
        weighted = train_on == "noisy"
        base = CannonFitter(names, order, ds.wave, centre, scale, weighted)
        if stop - start < 2 * len(base.terms):
            raise FeatcacheError(f"{path}: {stop - start} train spectra for a model of {len(base.terms)} terms per "
                                 f"pixel; give at least {2 * len(base.terms)}")
        grid = cell_grid(cells, len(names), stop - start)
        edges = [np.linspace(values[:, d].min(), values[:, d].max(), g + 1) for d, g in enumerate(grid or ())]
        members = _cell_members(values, edges, 3 * len(base.terms))
        fitters = {key: CannonFitter(names, order, ds.wave, values[m].mean(axis=0),
                                     np.where(values[m].std(axis=0) > 0, values[m].std(axis=0), 1.0), weighted)
                   for key, m in members.items()}
        blocks = [(a, min(a + READ_ROWS, stop)) for a in range(start, stop, READ_ROWS)]

        def read(a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
            return _read_rest(ds, a, b, z[a - start:b - start], train_on, noise, noise_seed, level)

        cached = _BlockCache(read, (stop - start) * ds.n_pixels <= CACHE_ELEMENTS)
        amps = np.ones(stop - start)

        def scaled(a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
            """Rest flux divided by each star's flux scale (weights times its square)."""
            rest, valid, w = cached(a, b)
            amp = amps[a - start:b - start, None]
            return rest / amp, valid, None if w is None else w * amp * amp

        z_range = (float(z.min()), float(z.max())) if has_z else (0.0, 0.0)
        with bar_for((4 if flux_scale else 2) * (stop - start), "cannon: fit", show_progress) as bar:
            if flux_scale:
                first = CannonFitter(names, order, ds.wave, centre, scale, weighted)
                amps[:] = _train_flux_scales(first, blocks, values, start, cached, z_range, bar)
            for a, b in blocks:
                rest, valid, w = scaled(a, b)
                block = values[a - start:b - start]
                base.add_rest(block, rest, valid, w)
                for key, fitter in fitters.items():
                    sel = members[key][a - start:b - start]
                    if sel.any():
                        fitter.add_rest(block[sel], rest[sel], valid[sel], None if w is None else w[sel])
                bar.update(b - a)
            models = {key: _model(f, values[members[key]] if key is not None else values, z_range)
                      for key, f in [(None, base), *fitters.items()]}
            _scatter(models, members, blocks, scaled, values, start, bar, weighted)
    info = {"train": str(path), "rows": [start, stop], "n": stop - start, "order": order, "train_on": train_on,
            "noise": {"mode": noise, "level": level} if weighted else None, "labels": names, "redshift_free": has_z,
            "cells": list(grid) if grid else None, "cell_margin": CELL_MARGIN if grid else None,
            "flux_scale": {"std": float(np.std(amps)), "min": float(amps.min()), "max": float(amps.max())}
            if flux_scale else None}
    for model in models.values():
        model.info = info
    if not grid:
        return models[None]
    return PiecewiseCannon(models[None], edges, {k: m for k, m in models.items() if k is not None}, CELL_MARGIN)


def _train_labels(ds: PfsDataset, rows: Rows, labels: Sequence[str] | None, max_train: int | None
                  ) -> tuple[int, int, list[str], bool, np.ndarray]:
    """The train rows [start, stop), the labels to model, whether the redshift is free, and their values
    (n, L): finite and not constant, or a one-line error."""
    start, stop = file_rows(ds, rows)
    if max_train is not None:
        if int(max_train) < 1:
            raise FeatcacheError(f"--cannon-max-train must be at least 1, got {max_train}")
        stop = min(stop, start + int(max_train))
    names, has_z = label_parameters(ds, labels, start, stop)
    table = ds.labels(names, start, stop)
    values = np.stack([np.asarray(table[n], dtype=np.float64) for n in names], axis=1)
    if not np.isfinite(values).all():
        raise FeatcacheError(f"{ds.path}: NaN or inf labels among rows {start}:{stop} ({', '.join(names)})")
    flat = [n for n, s in zip(names, values.std(axis=0), strict=True) if not s > 0]
    if flat:
        raise FeatcacheError(f"{ds.path}: label {', '.join(flat)} is constant over rows {start}:{stop}; the model "
                             "cannot learn a derivative it never sees (leave it out with --label)")
    return start, stop, names, has_z, values


def _read_rest(ds: PfsDataset, a: int, b: int, z: np.ndarray, train_on: str, noise: str, noise_seed: int,
               level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows [a, b) in the rest frame: flux, the pixels each covers, and (noisy flux) the inverse variances."""
    from .shift import to_rest_frame

    if train_on == "flux":
        flux, ivar = ds.read_flux(a, b).astype(np.float64), None
    else:
        from ..spectra.inputs import NoiseSpec, read_inputs

        inputs = read_inputs(ds, a, b, None, NoiseSpec(noise, noise_seed, level))
        flux = inputs.noisy.astype(np.float64)
        ivar = 1.0 / np.maximum(inputs.sigma.astype(np.float64), 1e-30) ** 2
    rest, valid = to_rest_frame(flux, ds.wave, z)
    return rest, valid, None if ivar is None else to_rest_frame(ivar, ds.wave, z)[0]


class _BlockCache:
    """The train blocks in the rest frame, read once and kept (float32) when they fit in CACHE_ELEMENTS: the
    fit passes over them three or four times."""

    def __init__(self, read: Any, keep: bool):
        self.read, self.keep, self.blocks = read, keep, {}

    def __call__(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if (a, b) not in self.blocks:
            rest, valid, w = self.read(a, b)
            if not self.keep:
                return rest, valid, w
            self.blocks[(a, b)] = (rest.astype(np.float32), valid, None if w is None else w.astype(np.float32))
        rest, valid, w = self.blocks[(a, b)]  # every pass sees the same (float32) values
        return rest.astype(np.float64), valid, None if w is None else w.astype(np.float64)


def _train_flux_scales(first: CannonFitter, blocks: list[tuple[int, int]], values: np.ndarray, start: int,
                       cached: _BlockCache, z_range: tuple[float, float], bar: Any) -> np.ndarray:
    """Each train star's flux scale against a first fit of the model (`first`, empty), their median set to 1."""
    for a, b in blocks:
        first.add_rest(values[a - start:b - start], *cached(a, b))
        bar.update(b - a)
    shape = _model(first, values, z_range)
    amps = np.ones(len(values))
    for a, b in blocks:
        amps[a - start:b - start] = _flux_scales(shape, values[a - start:b - start], *cached(a, b))
        bar.update(b - a)
    return amps / np.median(amps)


def _flux_scales(model: CannonModel, labels: np.ndarray, rest: np.ndarray, valid: np.ndarray,
                 w: np.ndarray | None) -> np.ndarray:
    """Each star's flux scale a = argmin sum w (rest - a model)^2 over the pixels it covers (1 where undefined)."""
    m = model.rest_flux(labels)
    ok = valid & np.isfinite(m) & np.isfinite(rest)
    weight = np.where(ok, 1.0 if w is None else np.where(np.isfinite(w), np.maximum(w, 0.0), 0.0), 0.0)
    m, r = np.where(ok, m, 0.0), np.where(ok, rest, 0.0)
    num, den = (weight * m * r).sum(axis=1), (weight * m * m).sum(axis=1)
    amp = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    return np.where(amp > 0, amp, 1.0)


def _cell_members(values: np.ndarray, edges: list[np.ndarray], minimum: int) -> dict[Any, np.ndarray]:
    """Per cell of the grid: the train stars inside it widened by CELL_MARGIN of its width (cells with fewer
    than `minimum` stars are left to the global model)."""
    import itertools

    out: dict[Any, np.ndarray] = {}
    for key in itertools.product(*(range(len(e) - 1) for e in edges)) if edges else ():
        inside = np.ones(len(values), dtype=bool)
        for d, k in enumerate(key):
            lo, hi = edges[d][k], edges[d][k + 1]
            pad = CELL_MARGIN * (hi - lo)
            inside &= (values[:, d] >= lo - pad) & (values[:, d] <= hi + pad)
        if inside.sum() >= minimum:
            out[key] = inside
    return out


def _model(fitter: CannonFitter, values: np.ndarray, z_range: tuple[float, float]) -> CannonModel:
    return CannonModel(fitter.labels, fitter.order, fitter.wave.copy(), fitter.centre, fitter.scale, fitter.solve(),
                       np.zeros(len(fitter.wave)), values.min(axis=0), values.max(axis=0), z_range)


def _scatter(models: dict[Any, CannonModel], members: dict[Any, np.ndarray], blocks: list[tuple[int, int]],
             read: Any, values: np.ndarray, start: int, bar: Any, weighted: bool) -> None:
    """Each model's per-pixel misfit s: the rms residual of its train stars in the rest frame (noisy flux: the
    residual variance beyond the noise's, floored at 0)."""
    n_pix = len(next(iter(models.values())).wave)
    sums = {k: np.zeros(n_pix) for k in models}
    counts = {k: np.zeros(n_pix) for k in models}
    for a, b in blocks:
        rest, valid, w = read(a, b)
        block = values[a - start:b - start]
        for key, model in models.items():
            sel = np.ones(b - a, dtype=bool) if key is None else members[key][a - start:b - start]
            if not sel.any():
                continue
            resid = rest[sel] - model.rest_flux(block[sel])
            excess = resid * resid
            if weighted:
                assert w is not None
                with np.errstate(divide="ignore"):
                    excess = excess - 1.0 / w[sel]
            ok = valid[sel] & np.isfinite(excess)
            sums[key] += np.where(ok, excess, 0.0).sum(axis=0)
            counts[key] += ok.sum(axis=0)
        bar.update(b - a)
    for key, model in models.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(counts[key] > 0, sums[key] / np.maximum(counts[key], 1), np.nan)
        model.scatter = np.sqrt(np.maximum(var, 0.0))
