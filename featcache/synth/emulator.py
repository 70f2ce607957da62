"""The rest-frame stellar spectrum as a smooth function of the labels, interpolated from the reference grid.

The reference grid (featcache/data/korg/grid.npz, built by benchmarks/make_korg_grid.py) holds Korg
spectra of MARCS model atmospheres, 6 T_eff x 6 log g x 3 [M/H] nodes, sampled monochromatically at 1 A
(air wavelengths). Per wavelength sample the generator interpolates x = log(tau + eps), tau = -ln(flux /
continuum), with a tensor product of natural cubic splines in T_eff, log g and [M/H] (linear beyond the end
nodes), and ln(continuum) the same way. Held-out nodes chose this form (data/README.md, "Physics"): log
optical depth follows the line strengths' exponential dependence on temperature and abundance, and cubic
splines beat linear interpolation at every held-out node.

The grid has [alpha/M] = [C/M] = 0. The generator keeps both labels meaningful as local metallicity
offsets: pixels of the line table's alpha-element lines (O, Mg, Si, S, Ca, Ti) and of the TiO bands take
their optical depth from [M/H] + [alpha/M]; pixels of C I lines from [M/H] + [C/M]; pixels of the CN bands
from [M/H] + [C/M] / 2 (CN ~ C x N). Everywhere else [alpha/M] and [C/M] have no effect.

Every operation is row-wise with a fixed order of summation (no BLAS reductions), so a spectrum does not
depend on the other rows of its block.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.errors import FeatcacheError
from ..common.resources import embedded, missing_message

GRID_NPZ = embedded("korg", "grid.npz")
ALPHA_ELEMENTS = ("O", "Mg", "Si", "S", "Ca", "Ti")


class SplineAxis:
    """Natural cubic spline weights on fixed nodes, extended linearly beyond the end nodes.

    ``weights(x)`` is the (n, K) matrix W with s(x) = W @ y for the spline s through (nodes, y), for any
    data y: the interpolant is linear in the data, so one W serves every wavelength sample.
    """

    def __init__(self, nodes: np.ndarray):
        self.nodes = np.asarray(nodes, dtype=float)
        k = len(self.nodes)
        if k < 2 or np.any(np.diff(self.nodes) <= 0):
            raise ValueError("spline nodes must be at least two and increasing")
        h = np.diff(self.nodes)
        # second derivatives M = S y with M_0 = M_{K-1} = 0 (natural end conditions)
        self.second = np.zeros((k, k))
        if k > 2:
            a = np.zeros((k - 2, k - 2))
            b = np.zeros((k - 2, k))
            for i in range(1, k - 1):
                r = i - 1
                a[r, r] = (h[i - 1] + h[i]) / 3.0
                if r > 0:
                    a[r, r - 1] = h[i - 1] / 6.0
                if r < k - 3:
                    a[r, r + 1] = h[i] / 6.0
                b[r, i - 1] += 1.0 / h[i - 1]
                b[r, i] -= 1.0 / h[i - 1] + 1.0 / h[i]
                b[r, i + 1] += 1.0 / h[i]
            self.second[1:-1] = np.linalg.solve(a, b)
        eye = np.eye(k)
        # end values and slopes as weight rows, for the linear extension
        self.lo_value, self.hi_value = eye[0], eye[-1]
        self.lo_slope = (eye[1] - eye[0]) / h[0] - h[0] / 6.0 * (2.0 * self.second[0] + self.second[1])
        self.hi_slope = (eye[-1] - eye[-2]) / h[-1] + h[-1] / 6.0 * (self.second[-2] + 2.0 * self.second[-1])

    def weights(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float).reshape(-1)
        nodes, k = self.nodes, len(self.nodes)
        i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, k - 2)
        h = nodes[i + 1] - nodes[i]
        b = np.clip((x - nodes[i]) / h, 0.0, 1.0)
        a = 1.0 - b
        out = np.zeros((len(x), k))
        rows = np.arange(len(x))
        out[rows, i] += a
        out[rows, i + 1] += b
        out += (((a ** 3 - a) * h * h / 6.0)[:, None] * self.second[i]
                + ((b ** 3 - b) * h * h / 6.0)[:, None] * self.second[i + 1])
        below, above = x < nodes[0], x > nodes[-1]
        if below.any():
            out[below] = self.lo_value + (x[below] - nodes[0])[:, None] * self.lo_slope
        if above.any():
            out[above] = self.hi_value + (x[above] - nodes[-1])[:, None] * self.hi_slope
        return out


@dataclass(frozen=True)
class ReferenceGrid:
    """The reference grid as stored: air wavelengths (W,), nodes, log(tau + eps) and ln(continuum)."""

    wave: np.ndarray
    teff: np.ndarray
    logg: np.ndarray
    mh: np.ndarray
    log_tau: np.ndarray   # (T, G, M, W) float32
    log_cont: np.ndarray  # (T, G, M, W) float32
    eps: float
    source: str

    def without(self, axis: str, values: tuple[float, ...]) -> ReferenceGrid:
        """The grid with the nodes at ``values`` of ``axis`` (teff, logg or mh) removed: held-out checks."""
        nodes = getattr(self, axis)
        keep = ~np.isin(nodes, values)
        index = ("teff", "logg", "mh").index(axis)
        take = {"axis": index}
        return ReferenceGrid(
            wave=self.wave, **{name: (getattr(self, name)[keep] if name == axis else getattr(self, name))
                               for name in ("teff", "logg", "mh")},
            log_tau=np.compress(keep, self.log_tau, **take), log_cont=np.compress(keep, self.log_cont, **take),
            eps=self.eps, source=f"{self.source}, without {axis} {list(values)}")

    def node_flux(self, teff: float, logg: float, mh: float) -> np.ndarray:
        """The normalised flux of one node at its monochromatic samples (float64)."""
        index = []
        for axis, value in (("teff", teff), ("logg", logg), ("mh", mh)):
            hits = np.flatnonzero(getattr(self, axis) == value)
            if not hits.size:
                raise ValueError(f"{axis} = {value} is not a node of the reference grid ({getattr(self, axis)})")
            index.append(int(hits[0]))
        i, j, k = index
        return np.exp(-(np.exp(self.log_tau[i, j, k].astype(float)) - self.eps))


@functools.lru_cache(maxsize=2)
def load_grid(path: str | None = None) -> ReferenceGrid:
    """The embedded reference grid (or another file of the same layout)."""
    file = Path(path) if path is not None else GRID_NPZ
    if not file.exists():
        raise FeatcacheError(missing_message(file, "the synthetic benchmark's reference grid")
                             if path is None else f"{file}: reference grid not found")
    with np.load(file) as z:
        try:
            grid = ReferenceGrid(wave=z["wave_air"], teff=z["teff"], logg=z["logg"], mh=z["mh"],
                                 log_tau=z["log_tau"].astype(np.float32), log_cont=z["log_cont"].astype(np.float32),
                                 eps=float(z["eps"]), source=str(z["source"]))
        except KeyError as exc:
            raise FeatcacheError(f"{file}: not a reference grid (missing {exc})") from None
    shape = (len(grid.teff), len(grid.logg), len(grid.mh), len(grid.wave))
    if grid.log_tau.shape != shape or grid.log_cont.shape != shape:
        raise FeatcacheError(f"{file}: arrays do not match the nodes {shape}")
    return grid


def _taper(wave: np.ndarray, lo: float, hi: float, edge: float) -> np.ndarray:
    """1 inside [lo, hi], falling to 0 over ``edge`` A on both sides as cos^2 (smooth in the labels' sense:
    the weights do not depend on the labels at all)."""
    d = np.maximum(lo - wave, wave - hi)
    t = np.clip(d / edge, 0.0, 1.0)
    return np.cos(0.5 * np.pi * t) ** 2


def abundance_maps(wave: np.ndarray, table) -> dict[str, np.ndarray]:
    """Per-sample weights in [0, 1] of the three abundance offsets: ``alpha`` ([M/H] + [alpha/M]), ``carbon``
    ([M/H] + [C/M]) and ``cn`` ([M/H] + [C/M] / 2). Rules in the module docstring; windows: strong Ca II
    lines +-12 A, other strong lines +-3 A, weak lines +-0.6 A; bands from the head over three e-folding
    lengths; every window tapered over 1 A."""
    maps = {name: np.zeros(len(wave)) for name in ("alpha", "carbon", "cn")}
    for row in table.itertuples(index=False):
        centre = float(row.wavelength)
        if row.damping == "band":
            name = "alpha" if row.species == "TiO" else "cn"
            window = _taper(wave, centre, centre + 3.0 * float(row.length_A), 1.0)
        else:
            if row.element in ALPHA_ELEMENTS:
                name = "alpha"
            elif row.element == "C":
                name = "carbon"
            else:
                continue
            half = 12.0 if (row.damping == "strong" and row.species == "Ca II") else (
                3.0 if row.damping == "strong" else 0.6)
            window = _taper(wave, centre - half, centre + half, 1.0)
        np.maximum(maps[name], window, out=maps[name])
    total = maps["alpha"] + maps["carbon"] + maps["cn"]
    over = total > 1.0
    for name in maps:  # overlapping windows share the pixel
        maps[name][over] /= total[over]
    return maps


class GridEmulator:
    """Monochromatic rest-frame flux and continuum at the grid's wavelength samples for any labels."""

    def __init__(self, grid: ReferenceGrid, table):
        self.grid = grid
        self.axes = (SplineAxis(grid.teff), SplineAxis(grid.logg), SplineAxis(grid.mh))
        n_t, n_g, n_m, n_w = grid.log_tau.shape
        # (T*G, M, W): the temperature-gravity contraction is done once per row for all M nodes
        self.log_tau = np.ascontiguousarray(grid.log_tau.reshape(n_t * n_g, n_m, n_w))
        self.log_cont = np.ascontiguousarray(grid.log_cont.reshape(n_t * n_g, n_m, n_w))
        maps = abundance_maps(grid.wave, table)
        self.offsets = []  # (name, columns, weights) of each abundance offset that touches any sample
        for name, weights in maps.items():
            cols = np.flatnonzero(weights > 0)
            if cols.size:
                self.offsets.append((name, cols, weights[cols].astype(np.float32)))
        self.eps = np.float32(grid.eps)

    @staticmethod
    def _contract(weights: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """sum_k weights[:, k] * nodes[k] in a fixed order of k (row-wise, no BLAS): (n, ...) float32."""
        out = np.zeros((weights.shape[0], *nodes.shape[1:]), dtype=np.float32)
        tmp = np.empty_like(out)
        w32 = weights.astype(np.float32)
        for k in range(weights.shape[1]):
            np.multiply(w32[:, k].reshape(-1, *([1] * (nodes.ndim - 1))), nodes[k][None], out=tmp)
            out += tmp
        return out

    def evaluate(self, teff: np.ndarray, logg: np.ndarray, mh: np.ndarray, a_m: np.ndarray,
                 c_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(normalised flux, ln continuum) at the grid's samples, (n, W) float32 each."""
        ax_t, ax_g, ax_m = self.axes
        w_t, w_g = ax_t.weights(teff), ax_g.weights(logg)
        w_tg = (w_t[:, :, None] * w_g[:, None, :]).reshape(len(w_t), -1)
        per_m = self._contract(w_tg, self.log_tau)     # (n, M, W)
        x = self._contract_m(ax_m.weights(mh), per_m)
        shifts = {"alpha": a_m, "carbon": c_m, "cn": 0.5 * np.asarray(c_m, dtype=float)}
        for name, cols, weights in self.offsets:
            shifted = self._contract_m(ax_m.weights(np.asarray(mh, dtype=float) + shifts[name]), per_m[:, :, cols])
            x[:, cols] += weights[None, :] * (shifted - x[:, cols])
        np.exp(x, out=x)
        x -= self.eps
        np.maximum(x, 0.0, out=x)
        np.negative(x, out=x)
        np.exp(x, out=x)
        cont = self._contract_m(ax_m.weights(mh), self._contract(w_tg, self.log_cont))
        return x, cont

    @staticmethod
    def _contract_m(w_m: np.ndarray, per_m: np.ndarray) -> np.ndarray:
        out = np.zeros((per_m.shape[0], per_m.shape[2]), dtype=np.float32)
        w32 = w_m.astype(np.float32)
        for k in range(per_m.shape[1]):
            out += w32[:, k:k + 1] * per_m[:, k]
        return out
