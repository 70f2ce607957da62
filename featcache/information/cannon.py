"""The data-driven model of the noise-free flux: The Cannon's per-pixel polynomial in the labels (Ness et al.
2015; quadratic by default), fitted in the rest frame.

A polynomial in the labels cannot model lines that move with the radial velocity, so every train spectrum is
first moved to the rest frame with its known redshift (Catmull-Rom, shift.py); the model then gives the
rest-frame flux of any labels, and the observed flux at redshift z is that spectrum sampled at w / (1 + z).
Its derivatives follow: d/d(label) from the polynomial, d/dz from the spline's derivative along the grid.

Fitting: per pixel, least squares of the flux on the polynomial terms of the standardised labels over the
train stars that cover the pixel in the rest frame (clean flux: unweighted; noisy flux: weighted by the
inverse variance). The per-pixel scatter s (the model's own misfit; for noisy flux the residual variance
beyond the noise) is kept for the full-spectrum fit's weights, never for the bound.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError
from .shift import catmull_rom, observed_positions, to_rest_frame

RIDGE = 1e-9  # relative ridge on the normal equations (numerical safety only)


def monomials(n_labels: int, order: int) -> list[tuple[int, ...]]:
    """The polynomial's terms as tuples of label indices: (), (0,), ..., (0, 0), (0, 1), ... up to `order`."""
    terms: list[tuple[int, ...]] = [()]
    for degree in range(1, order + 1):
        terms += list(itertools.combinations_with_replacement(range(n_labels), degree))
    return terms


def design(x: np.ndarray, terms: list[tuple[int, ...]]) -> np.ndarray:
    """(n, Q) values of the terms at standardised labels x (n, L)."""
    out = np.ones((x.shape[0], len(terms)))
    for q, term in enumerate(terms):
        for i in term:
            out[:, q] *= x[:, i]
    return out


def design_gradient(x: np.ndarray, terms: list[tuple[int, ...]]) -> np.ndarray:
    """(n, L, Q): d(term q) / d(x_l)."""
    n, n_labels = x.shape
    out = np.zeros((n, n_labels, len(terms)))
    for q, term in enumerate(terms):
        for pos, i in enumerate(term):
            rest = term[:pos] + term[pos + 1:]
            value = np.ones(n)
            for j in rest:
                value = value * x[:, j]
            out[:, i, q] += value
    return out


@dataclass
class CannonModel:
    """A fitted per-pixel polynomial: rest-frame flux on `wave` as a function of `labels`."""

    labels: list[str]
    order: int
    wave: np.ndarray        # (P,) the rest-frame grid (the file's wavelength grid)
    centre: np.ndarray      # (L,) label standardisation
    scale: np.ndarray       # (L,)
    theta: np.ndarray       # (Q, P) coefficients
    scatter: np.ndarray     # (P,) the model's misfit per pixel
    low: np.ndarray         # (L,) the train labels' range: the fit's bounds
    high: np.ndarray
    redshift_range: tuple[float, float] = (0.0, 0.0)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def terms(self) -> list[tuple[int, ...]]:
        return monomials(len(self.labels), self.order)

    def standardise(self, labels: np.ndarray) -> np.ndarray:
        return (np.asarray(labels, dtype=np.float64) - self.centre) / self.scale

    def rest_flux(self, labels: np.ndarray) -> np.ndarray:
        """(n, P) rest-frame flux at labels (n, L), physical units."""
        return design(self.standardise(labels), self.terms) @ self.theta

    def rest_gradient(self, labels: np.ndarray) -> np.ndarray:
        """(n, L, P): d(rest flux) / d(label), per physical unit of each label."""
        grad = design_gradient(self.standardise(labels), self.terms) @ self.theta
        return grad / self.scale[None, :, None]

    def observed(self, labels: np.ndarray, redshift: np.ndarray, pixels: np.ndarray, jacobian: bool = True
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """The model in the observed frame on `pixels` (indices into wave): flux (n, M); with jacobian, also
        (n, L + 1, M): d/d(label) for each label, then d/dz; and the valid mask (n, M) (pixels whose rest
        wavelength falls inside the grid)."""
        pos, dpos_dz = observed_positions(self.wave, pixels, redshift)
        rest = self.rest_flux(labels)
        flux, dflux, valid = catmull_rom(rest, pos, derivative=jacobian)
        if not jacobian:
            return flux, None, valid
        grad, _, _ = catmull_rom(self.rest_gradient(labels), pos)
        jac = np.concatenate([grad, (dflux * dpos_dz)[:, None, :]], axis=1)
        return flux, jac, valid

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta = {"labels": self.labels, "order": self.order, "redshift_range": list(self.redshift_range),
                "info": self.info}
        with open(path, "wb") as handle:
            np.savez(handle, wave=self.wave, centre=self.centre, scale=self.scale, theta=self.theta,
                     scatter=self.scatter, low=self.low, high=self.high, meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> CannonModel:
        try:
            with np.load(path) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {k: data[k] for k in ("wave", "centre", "scale", "theta", "scatter", "low", "high")}
        except (OSError, KeyError, ValueError) as exc:
            raise FeatcacheError(f"{path}: not a featcache Cannon model ({exc})") from None
        return cls(meta["labels"], int(meta["order"]), redshift_range=tuple(meta["redshift_range"]),
                   info=meta.get("info") or {}, **arrays)


class CannonFitter:
    """Accumulates the normal equations block by block (train files larger than memory), then solves.

    Clean flux: every pixel covered by every star shares one Gram matrix V^T V; a pixel that some stars do
    not cover in the rest frame (the grid's ends) subtracts those stars' terms. Noisy flux with errors: every
    pixel has its own weighted Gram matrix (the Cannon's usual inverse-variance weights).
    """

    def __init__(self, labels: list[str], order: int, wave: np.ndarray, centre: np.ndarray, scale: np.ndarray,
                 weighted: bool):
        if order not in (1, 2, 3):
            raise FeatcacheError(f"--cannon-order {order}: expected 1, 2 or 3 (The Cannon is quadratic: 2)")
        self.labels, self.order, self.wave = list(labels), int(order), np.asarray(wave, dtype=np.float64)
        self.centre, self.scale, self.weighted = centre, scale, weighted
        self.terms = monomials(len(labels), order)
        q, p = len(self.terms), len(self.wave)
        self.upper = np.triu_indices(q)
        self.gram = np.zeros((q, q))
        self.rhs = np.zeros((q, p))
        self.missing: dict[int, np.ndarray] = {}  # clean: pixel -> the Gram of the stars missing there
        self.pixel_gram = np.zeros((p, len(self.upper[0]))) if weighted else None
        self.n = 0

    def add(self, labels: np.ndarray, flux: np.ndarray, redshift: np.ndarray, ivar: np.ndarray | None = None
            ) -> None:
        """One block of train stars: labels (n, L), observed flux (n, P), redshift (n,), ivar (n, P) or None."""
        rest, valid = to_rest_frame(flux, self.wave, redshift)
        w = None
        if ivar is not None:
            w, _ = to_rest_frame(ivar, self.wave, redshift)
        self.add_rest(labels, rest, valid, w)

    def add_rest(self, labels: np.ndarray, rest: np.ndarray, valid: np.ndarray, w: np.ndarray | None = None) -> None:
        """Train stars already in the rest frame: flux (n, P), the pixels they cover, weights (n, P) or None."""
        v = design((labels - self.centre) / self.scale, self.terms)
        if self.weighted:
            assert w is not None and self.pixel_gram is not None
            w = np.where(valid, np.maximum(w, 0.0), 0.0)
            pairs = v[:, self.upper[0]] * v[:, self.upper[1]]
            self.pixel_gram += w.T @ pairs
            self.rhs += v.T @ (w * rest)
        else:
            self.gram += v.T @ v
            self.rhs += v.T @ np.where(valid, rest, 0.0)
            for j in np.flatnonzero(~valid.all(axis=0)):
                out = v[~valid[:, j]]
                self.missing[int(j)] = self.missing.get(int(j), 0.0) + out.T @ out
        self.n += len(labels)

    def solve(self) -> np.ndarray:
        """theta (Q, P); a pixel with too few covering stars gets NaN (it is left out of every use)."""
        q, p = len(self.terms), len(self.wave)
        theta = np.full((q, p), np.nan)
        if self.weighted:
            assert self.pixel_gram is not None
            grams = np.zeros((p, q, q))
            grams[:, self.upper[0], self.upper[1]] = self.pixel_gram
            grams[:, self.upper[1], self.upper[0]] = self.pixel_gram
            return _solve_many(grams, self.rhs, theta)
        full = np.array([j not in self.missing for j in range(p)])
        theta[:, full] = _solve_one(self.gram, self.rhs[:, full])
        if self.missing:
            cols = np.array(sorted(self.missing))
            grams = np.stack([self.gram - self.missing[int(j)] for j in cols])
            sub = np.full((q, len(cols)), np.nan)
            theta[:, cols] = _solve_many(grams, self.rhs[:, cols], sub)
        return theta


@dataclass
class PiecewiseCannon:
    """The Cannon, piecewise: local models on the cells of a grid over the first labels (each fitted on the
    train stars of its cell widened by `margin` of the cell's width on every side), and the global model, which
    gives the full-spectrum fit its starts and covers cells with too few train stars.

    A global quadratic over the whole label space misses the synth spectra by 0.0075 rms per pixel (median;
    the full-spectrum fit's floor is then about 0.2 dex in log_g at any S/N); the 4 x 4 x 3 local quadratics
    of T_eff, log_g and [M/H] miss them by 0.001 (docs/information-bound.md)."""

    base: CannonModel
    edges: list[np.ndarray]
    cells: dict[tuple[int, ...], CannonModel]
    margin: float = 0.5

    labels = property(lambda self: self.base.labels)
    order = property(lambda self: self.base.order)
    wave = property(lambda self: self.base.wave)
    low = property(lambda self: self.base.low)
    high = property(lambda self: self.base.high)
    redshift_range = property(lambda self: self.base.redshift_range)

    @property
    def info(self) -> dict[str, Any]:
        return self.base.info

    def cell_of(self, labels: np.ndarray) -> np.ndarray:
        """(n, D) cell index per partitioned label (values outside the grid go to its edge cells)."""
        labels = np.asarray(labels, dtype=np.float64)
        cols = [np.clip(np.searchsorted(e, labels[:, d], side="right") - 1, 0, len(e) - 2)
                for d, e in enumerate(self.edges)]
        return np.stack(cols, axis=1)

    def groups(self, labels: np.ndarray) -> list[tuple[CannonModel, np.ndarray]]:
        """(model, row indices) pairs covering every row: each row's cell model, else the global one."""
        keys = self.cell_of(labels)
        out: dict[Any, list[int]] = {}
        for i, key in enumerate(map(tuple, keys)):
            out.setdefault(key if key in self.cells else None, []).append(i)
        return [(self.cells[k] if k is not None else self.base, np.array(rows)) for k, rows in out.items()]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        arrays: dict[str, Any] = {}
        models = {"base": self.base, **{"cell_" + "_".join(map(str, k)): m for k, m in self.cells.items()}}
        for prefix, model in models.items():
            for name in ("wave", "centre", "scale", "theta", "scatter", "low", "high"):
                arrays[f"{prefix}/{name}"] = getattr(model, name)
        meta = {"labels": self.labels, "order": self.order, "redshift_range": list(self.redshift_range),
                "info": self.info, "edges": [e.tolist() for e in self.edges], "margin": self.margin,
                "models": list(models)}
        with open(path, "wb") as handle:
            np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PiecewiseCannon:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            models = {}
            for prefix in meta["models"]:
                arrays = {k: data[f"{prefix}/{k}"] for k in ("wave", "centre", "scale", "theta", "scatter", "low",
                                                             "high")}
                models[prefix] = CannonModel(meta["labels"], int(meta["order"]),
                                             redshift_range=tuple(meta["redshift_range"]), info=meta["info"],
                                             **arrays)
        cells = {tuple(int(v) for v in k.split("_")[1:]): m for k, m in models.items() if k != "base"}
        return cls(models["base"], [np.array(e) for e in meta["edges"]], cells, float(meta["margin"]))


def load_model(path: str | Path) -> CannonModel | PiecewiseCannon:
    """A saved CannonModel or PiecewiseCannon."""
    try:
        with np.load(path) as data:
            piecewise = "base/theta" in data.files
    except (OSError, ValueError) as exc:
        raise FeatcacheError(f"{path}: not a featcache Cannon model ({exc})") from None
    return PiecewiseCannon.load(path) if piecewise else CannonModel.load(path)


def _solve_one(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    ridge = RIDGE * np.trace(gram) / len(gram)
    return np.linalg.solve(gram + ridge * np.eye(len(gram)), rhs)


def _solve_many(grams: np.ndarray, rhs: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per-pixel systems (p, Q, Q) theta_p = G_p^-1 b_p; pixels whose Gram is singular (too few stars) stay NaN."""
    q = grams.shape[1]
    trace = np.einsum("pii->p", grams) / q
    ok = trace > 0
    ridge = RIDGE * np.where(ok, trace, 1.0)
    regular = grams + ridge[:, None, None] * np.eye(q)[None]
    cond_ok = np.linalg.cond(regular[ok]) < 1e12 if ok.any() else np.zeros(0, bool)
    idx = np.flatnonzero(ok)[cond_ok]
    if len(idx):
        out[:, idx] = np.linalg.solve(regular[idx], rhs[:, idx].T[..., None])[..., 0].T
    return out
