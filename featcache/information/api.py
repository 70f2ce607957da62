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
from ..spectra.pfsspec import PfsDataset
from .cannon import CannonModel, PiecewiseCannon
from .exact import DEFAULT_STEPS, generator_info, synth_bounds, synth_parameters
from .files import (
    Rows,
    bar_for,
    check_noise,
    file_attrs,
    file_mask,
    file_redshift,
    file_rows,
    label_parameters,
)
from .fisher import crb, prior_sigma
from .training import fit_cannon

SOURCES = ("auto", "synth", "cannon")


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


def resolve_source(source: str, ds: PfsDataset) -> str:
    """auto: `synth` for a file featcache synth wrote (its version must match), else `cannon`."""
    if source not in SOURCES:
        raise FeatcacheError("--source: " + choices_message("bound source", source, list(SOURCES)))
    if source == "auto":
        return "synth" if file_attrs(ds).get("generator") in ("featcache.synth", b"featcache.synth") else "cannon"
    return source


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
        start, stop = file_rows(ds, rows)
        keep = file_mask(ds, mask)
        level = check_noise(noise, noise_level, ds)
        kind = resolve_source(source, ds)
        pixels = np.flatnonzero(keep)
        if kind == "synth":
            gen = generator_info(ds.path, file_attrs(ds))
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
            yield a, ({k: np.asarray(v, dtype=np.float64) for k, v in table.items()}, file_redshift(ds, a, b),
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
            out[a - start:b - start] = cannon_bounds(model, values, file_redshift(ds, a, b),
                                                     _read_sigma(ds, a, b, pixels, level), pixels, with_z)
            bar.update(b - a)
    prior = {n: (float(lo), float(hi)) for n, lo, hi in zip(model.labels, model.low, model.high, strict=True)}
    if with_z:
        prior["redshift"] = tuple(map(float, model.redshift_range))
    settings = {"model": "cannon", "order": model.order, "train": model.info, "noise_level": level,
                "cells": model.info.get("cells"),
                "pixels": int(len(pixels)), "redshift_derivative": "wavelength derivative of the shifted model"}
    return Bounds({p: out[:, k] for k, p in enumerate(params)}, "cannon", prior, settings)


