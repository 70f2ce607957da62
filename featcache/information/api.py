"""`featcache.bounds(...)`: per-star Cramer-Rao bounds of a file's spectra under a mask and a noise, and the
Cannon model they can come from.

Two sources of the Jacobian J (fisher.py has the bound itself):

* ``synth``: the generator's own noise-free spectrum, differentiated by central differences (exact.py); only
  for files the installed `featcache synth` wrote;
* ``cannon``: the data-driven model (cannon.py) fitted on a train split's clean flux (or its noisy flux with
  its errors), in the rest frame; any labelled pfsspec file.

The parameters are the stellar labels the file has (T_eff, log_g, M_H, then a_M and C_M where present) and the
radial velocity (as the `redshift` column, v/c) when it varies; every bound is marginalised over all of them.
sigma is what the encoder's second channel holds: error x noise_level for generated noise, the error itself
for a file's stored noisy array.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError, choices_message
from ..common.progress import progress as progress_bar
from ..spectra.pfsspec import PfsDataset
from .cannon import CannonFitter, CannonModel, PiecewiseCannon
from .exact import DEFAULT_STEPS, generator_info, synth_bounds, synth_parameters
from .fisher import crb, prior_sigma

STELLAR_LABELS = ("T_eff", "log_g", "M_H", "a_M", "C_M")
SOURCES = ("auto", "synth", "cannon")
TRAIN_ON = ("flux", "noisy")
READ_ROWS = 2048
Rows = tuple[int, int] | None


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def bar_for(total: int, desc: str, show: bool) -> Any:
    """A progress bar over spectra (hidden with --quiet), or none at all."""
    return progress_bar(total=total, desc=desc, unit="spectra") if show else _NoBar()


@dataclass
class Bounds:
    """Per-star marginalised bounds of one set of spectra: {parameter: (n,)} in the parameter's units
    (redshift as v/c), with the source of J, the prior ranges and the settings that made them."""

    values: dict[str, np.ndarray]
    source: str
    prior: dict[str, tuple[float, float]]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def parameters(self) -> list[str]:
        return list(self.values)

    def prior_sigma(self, name: str) -> float:
        """range / sqrt(12) of the label's prior: a bound above it is prior-limited."""
        lo, hi = self.prior[name]
        return prior_sigma(lo, hi)

    def __len__(self) -> int:
        return len(next(iter(self.values.values()))) if self.values else 0


def _rows(ds: PfsDataset, rows: Rows) -> tuple[int, int]:
    start, stop = (0, ds.n_rows) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= start < stop <= ds.n_rows:
        raise FeatcacheError(f"{ds.path}: rows {start}:{stop} outside 0:{ds.n_rows} (or empty)")
    return start, stop


def _mask(ds: PfsDataset, mask: Any) -> np.ndarray:
    if mask is None:
        return np.ones(ds.n_pixels, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != (ds.n_pixels,) or mask.dtype != bool:
        raise FeatcacheError(f"{ds.path}: the mask must be ({ds.n_pixels},) booleans, got {mask.shape} {mask.dtype}")
    if not mask.any():
        raise FeatcacheError(f"{ds.path}: the mask keeps no pixel")
    return mask


def check_noise(noise: str, noise_level: float, ds: PfsDataset) -> float:
    """The factor on the error: the level for generated noise, 1 for a stored noisy array (its sigma)."""
    if noise not in ("generated", "stored"):
        raise FeatcacheError(f"--noise {noise}: expected generated or stored")
    if noise == "stored":
        if not ds.has_noisy:
            raise FeatcacheError(f"{ds.path}: --noise stored but the file has no 'noisy' array")
        return 1.0
    level = float(noise_level)
    if not (np.isfinite(level) and level > 0):
        raise FeatcacheError(f"--noise-level must be a positive finite number, got {noise_level}")
    return level


def label_parameters(ds: PfsDataset, labels: Sequence[str] | None, start: int, stop: int) -> tuple[list[str], bool]:
    """The stellar labels to model (given, or those of STELLAR_LABELS the file has) and whether the redshift
    is a free parameter (a `redshift` column that is not all zero in these rows)."""
    available = ds.label_names()
    names = list(labels) if labels else [n for n in STELLAR_LABELS if n in available]
    for name in names:
        if name not in available:
            raise FeatcacheError(f"{ds.path}: " + choices_message("label", name, available))
    if not names:
        raise FeatcacheError(f"{ds.path}: no stellar label to bound ({', '.join(STELLAR_LABELS)}); name them with "
                             "--label")
    has_z = "redshift" in available and bool(np.any(ds.labels(["redshift"], start, stop)["redshift"] != 0))
    return [n for n in names if n != "redshift"], has_z


def _redshift(ds: PfsDataset, start: int, stop: int) -> np.ndarray:
    if "redshift" in ds.label_names():
        return np.asarray(ds.labels(["redshift"], start, stop)["redshift"], dtype=np.float64)
    return np.zeros(stop - start)


def _attrs(ds: PfsDataset) -> dict[str, Any]:
    import h5py

    with h5py.File(ds.path, "r") as h5:
        return dict(h5.attrs)


def resolve_source(source: str, ds: PfsDataset) -> str:
    """auto: `synth` for a file featcache synth wrote (its version must match), else `cannon`."""
    if source not in SOURCES:
        raise FeatcacheError("--source: " + choices_message("bound source", source, list(SOURCES)))
    if source == "auto":
        return "synth" if _attrs(ds).get("generator") in ("featcache.synth", b"featcache.synth") else "cannon"
    return source


# -- the data-driven model ----------------------------------------------------------------------------------
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
    (0.00046 of 0.00054 per pixel on the synthetic benchmark)."""
    if train_on not in TRAIN_ON:
        raise FeatcacheError("--cannon-train-on: " + choices_message("flux", train_on, list(TRAIN_ON)))
    with PfsDataset(path) as ds:
        start, stop = _rows(ds, rows)
        if max_train is not None:
            if int(max_train) < 1:
                raise FeatcacheError(f"--cannon-max-train must be at least 1, got {max_train}")
            stop = min(stop, start + int(max_train))
        names, has_z = label_parameters(ds, labels, start, stop)
        level = check_noise(noise, noise_level, ds) if train_on == "noisy" else 1.0
        table = ds.labels(names, start, stop)
        values = np.stack([np.asarray(table[n], dtype=np.float64) for n in names], axis=1)
        if not np.isfinite(values).all():
            raise FeatcacheError(f"{path}: NaN or inf labels among rows {start}:{stop} ({', '.join(names)})")
        z = _redshift(ds, start, stop)
        centre, scale = values.mean(axis=0), values.std(axis=0)
        flat = [n for n, s in zip(names, scale, strict=True) if not s > 0]
        if flat:
            raise FeatcacheError(f"{path}: label {', '.join(flat)} is constant over rows {start}:{stop}; the model "
                                 "cannot learn a derivative it never sees (leave it out with --label)")
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
            from .shift import to_rest_frame

            if train_on == "flux":
                flux, ivar = ds.read_flux(a, b).astype(np.float64), None
            else:
                from ..spectra.inputs import NoiseSpec, read_inputs

                inputs = read_inputs(ds, a, b, None, NoiseSpec(noise, noise_seed, level))
                flux = inputs.noisy.astype(np.float64)
                ivar = 1.0 / np.maximum(inputs.sigma.astype(np.float64), 1e-30) ** 2
            rest, valid = to_rest_frame(flux, ds.wave, z[a - start:b - start])
            return rest, valid, None if ivar is None else to_rest_frame(ivar, ds.wave, z[a - start:b - start])[0]

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
                for a, b in blocks:
                    first.add_rest(values[a - start:b - start], *cached(a, b))
                    bar.update(b - a)
                shape = _model(first, values, z_range)
                for a, b in blocks:
                    amps[a - start:b - start] = _flux_scales(shape, values[a - start:b - start], *cached(a, b))
                    bar.update(b - a)
                amps /= np.median(amps)
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


def cannon_bounds(model: CannonModel | PiecewiseCannon, labels: np.ndarray, redshift: np.ndarray, sigma: np.ndarray,
                  pixels: np.ndarray, with_redshift: bool) -> np.ndarray:
    """Per-star bounds (n, L [+ 1]) from the model's J at the stars' labels and redshifts (a piecewise model:
    the local model of the cell each star's labels fall in). Pixels the model cannot cover at a star's
    redshift (the grid's ends, pixels no train star covered) are left out of its F."""
    if isinstance(model, PiecewiseCannon):
        out = np.empty((len(labels), len(model.labels) + int(with_redshift)))
        for part, rows in model.groups(labels):
            out[rows] = cannon_bounds(part, labels[rows], redshift[rows], sigma[rows], pixels, with_redshift)
        return out
    _, jac, valid = model.observed(labels, redshift, pixels)
    assert jac is not None
    ok = valid & np.isfinite(jac).all(axis=1)
    jac = np.where(ok[:, None, :], jac, 0.0)
    sig = np.where(ok, sigma, 1.0)
    if not with_redshift:
        jac = jac[:, :-1]
    return crb(jac, sig)


# -- per-star bounds of a file ---------------------------------------------------------------------------------
def bounds(data: str | os.PathLike[str], mask: Any = None, *, rows: Rows = None, source: str = "auto",
           noise_level: float = 1.0, noise: str = "generated", model: CannonModel | PiecewiseCannon | None = None,
           train: str | os.PathLike[str] | None = None, train_rows: Rows = None,
           labels: Sequence[str] | None = None, order: int = 2, train_on: str = "flux",
           cells: str | Sequence[int] | None = "auto", steps: dict[str, float] | None = None,
           workers: int = 1, show_progress: bool = True) -> Bounds:
    """Per-star marginalised Cramer-Rao bounds of rows [start, stop) of a pfsspec file, over the pixels `mask`
    keeps (None: all), for the noise the encoder sees (sigma = error x noise_level; noise='stored': error).

    source 'synth' (exact: the generator's derivatives; the file must come from the installed generator),
    'cannon' (the data-driven model: pass a fitted `model`, or `train` (a file, default `data`) and
    `train_rows` to fit one here, with `cells` local models: cell_grid) or 'auto' (synth for featcache synth
    files; `workers` processes share its generator work). Returns a `Bounds`: per
    parameter an (n,) array in its units (redshift as v/c), the prior ranges and the settings.

        >>> b = featcache.bounds("data/test.h5", mask, source="synth")
        >>> b.values["log_g"]            # dex, one per spectrum
    """
    with PfsDataset(data) as ds:
        start, stop = _rows(ds, rows)
        keep = _mask(ds, mask)
        level = check_noise(noise, noise_level, ds)
        kind = resolve_source(source, ds)
        pixels = np.flatnonzero(keep)
        if kind == "synth":
            gen = generator_info(ds.path, _attrs(ds))
            _, has_z = label_parameters(ds, None, start, stop)
            params = synth_parameters(has_z)
            return _synth_file(ds, start, stop, pixels, level, params, gen, steps, show_progress, workers)
        if model is None:
            model = fit_cannon(train or data, train_rows if train is not None or train_rows is not None
                               else (start, stop), labels=labels, order=order, train_on=train_on,
                               noise_level=level, noise=noise, cells=cells, show_progress=show_progress)
        return _cannon_file(ds, start, stop, pixels, level, model, show_progress)


def _read_sigma(ds: PfsDataset, a: int, b: int, pixels: np.ndarray, level: float) -> np.ndarray:
    return ds.read_error(a, b)[:, pixels].astype(np.float64) * level


SYNTH_BLOCK = 512  # stars per unit of work of the exact source (a worker's share)


def _synth_file(ds: PfsDataset, start: int, stop: int, pixels: np.ndarray, level: float, params: list[str],
                gen: dict[str, Any], steps: dict[str, float] | None, show_progress: bool, workers: int = 1
                ) -> Bounds:
    """The exact source over rows [start, stop): blocks of SYNTH_BLOCK stars, in `workers` processes when
    more than one (the generator's numpy work runs on one core; the blocks are independent)."""
    from ..synth.physics import LABEL_RANGES

    names = [p for p in params if p != "redshift"]
    out = np.empty((stop - start, len(params)))

    def jobs() -> Any:
        for a in range(start, stop, SYNTH_BLOCK):
            b = min(a + SYNTH_BLOCK, stop)
            table = ds.labels(names, a, b)
            yield a, ({k: np.asarray(v, dtype=np.float64) for k, v in table.items()}, _redshift(ds, a, b),
                      _read_sigma(ds, a, b, pixels, level), pixels, gen["rv_max"], params, steps)

    with bar_for(stop - start, "bounds: synth", show_progress) as bar:
        if workers <= 1:
            for a, job in jobs():
                out[a - start:a - start + len(job[1])] = synth_bounds(*job)
                bar.update(len(job[1]))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                pending: dict[Any, int] = {}
                for a, job in jobs():
                    pending[pool.submit(synth_bounds, *job)] = a
                    if len(pending) >= 2 * workers:
                        _collect(pending, out, start, bar, wait_all=False)
                _collect(pending, out, start, bar, wait_all=True)
    prior = {k: tuple(map(float, LABEL_RANGES[k])) for k in names}
    if "redshift" in params:
        prior["redshift"] = (-gen["rv_max"] / 299792.458, gen["rv_max"] / 299792.458)
    settings = {**gen, "steps": {k: float(v) for k, v in {**DEFAULT_STEPS, **(steps or {})}.items() if k in params},
                "difference": "central", "noise_level": level, "pixels": int(len(pixels))}
    return Bounds({p: out[:, k] for k, p in enumerate(params)}, "synth", prior, settings)


def _collect(pending: dict[Any, int], out: np.ndarray, start: int, bar: Any, wait_all: bool) -> None:
    """Store finished blocks of the worker pool (at least one; all with wait_all)."""
    from concurrent.futures import FIRST_COMPLETED, wait

    while pending:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for future in done:
            a = pending.pop(future)
            result = future.result()
            out[a - start:a - start + len(result)] = result
            bar.update(len(result))
        if not wait_all:
            return


def _cannon_file(ds: PfsDataset, start: int, stop: int, pixels: np.ndarray, level: float,
                 model: CannonModel | PiecewiseCannon,
                 show_progress: bool) -> Bounds:
    if len(model.wave) != ds.n_pixels or not np.allclose(model.wave, ds.wave, rtol=0, atol=1e-6):
        raise FeatcacheError(f"{ds.path}: the Cannon model was fitted on another wavelength grid")
    available = ds.label_names()
    missing = [n for n in model.labels if n not in available]
    if missing:
        raise FeatcacheError(f"{ds.path}: no label {', '.join(missing)} (the Cannon model's labels)")
    with_z = bool(model.info.get("redshift_free", model.redshift_range != (0.0, 0.0)))
    params = [*model.labels, *(["redshift"] if with_z else [])]
    out = np.empty((stop - start, len(params)))
    with bar_for(stop - start, "bounds: cannon", show_progress) as bar:
        for a in range(start, stop, 256):
            b = min(a + 256, stop)
            table = ds.labels(model.labels, a, b)
            values = np.stack([np.asarray(table[n], dtype=np.float64) for n in model.labels], axis=1)
            out[a - start:b - start] = cannon_bounds(model, values, _redshift(ds, a, b),
                                                     _read_sigma(ds, a, b, pixels, level), pixels, with_z)
            bar.update(b - a)
    prior = {n: (float(lo), float(hi)) for n, lo, hi in zip(model.labels, model.low, model.high, strict=True)}
    if with_z:
        prior["redshift"] = tuple(map(float, model.redshift_range))
    settings = {"model": "cannon", "order": model.order, "train": model.info, "noise_level": level,
                "cells": model.info.get("cells"),
                "pixels": int(len(pixels)), "redshift_derivative": "wavelength derivative of the shifted model"}
    return Bounds({p: out[:, k] for k, p in enumerate(params)}, "cannon", prior, settings)


