"""Line profiles on the grid: sparse Gaussian rows, the Voigt function, and the tabulated curves of growth
(equivalent width from optical depth and damping) that every atomic line's strength is read from."""

from __future__ import annotations

import functools

import numpy as np


def gauss_rows(centres: np.ndarray, sigmas: np.ndarray, wave0: float, step: float, n_pix: int,
                half: int, weights: np.ndarray | None = None):
    """Sparse (n_lines, n_pix) matrix of unit-area Gaussians sampled on a linear grid (1/A)."""
    from scipy import sparse

    pos = (centres - wave0) / step
    first = np.floor(pos).astype(np.int64) - half + 1
    cols = first[:, None] + np.arange(2 * half)[None, :]
    dx = cols * step + wave0 - centres[:, None]
    vals = np.exp(-0.5 * (dx / sigmas[:, None]) ** 2) / (np.sqrt(2 * np.pi) * sigmas[:, None])
    if weights is not None:
        vals = vals * weights[:, None]
    keep = (cols >= 0) & (cols < n_pix)
    rows = np.broadcast_to(np.arange(len(centres))[:, None], cols.shape)
    return sparse.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(len(centres), n_pix))


def _voigt_h(a: float, v: np.ndarray) -> np.ndarray:
    from scipy.special import voigt_profile

    return np.sqrt(np.pi) * voigt_profile(v, 1.0 / np.sqrt(2.0), a)


@functools.lru_cache(maxsize=1)
def _curve_of_growth() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log10 (W / Doppler width) on a (log tau0, log a) grid: W = int (1 - exp(-tau0 H(a, v))) dv."""
    log_tau = np.arange(-4.0, 9.0001, 0.1)
    log_a = np.arange(-4.5, 1.0001, 0.25)
    v = np.concatenate([np.linspace(0.0, 8.0, 1601)[:-1], np.geomspace(8.0, 3e6, 2400)])
    table = np.empty((len(log_tau), len(log_a)))
    tau0 = 10.0 ** log_tau[:, None]
    for j, la in enumerate(log_a):
        h = _voigt_h(10.0 ** la, v)[None, :]
        absorb = -np.expm1(-tau0 * h)
        table[:, j] = np.log10(2.0 * np.trapezoid(absorb, v, axis=1))
    return log_tau, log_a, table


@functools.lru_cache(maxsize=1)
def _wing_integral() -> tuple[np.ndarray, np.ndarray]:
    """log10 h(u), h(u) = int (1 - exp(-u / (x^2 + 1))) dx: the rendered wing's equivalent width / b."""
    log_u = np.arange(-5.0, 12.0001, 0.05)
    x = np.concatenate([np.linspace(0.0, 10.0, 2001)[:-1], np.geomspace(10.0, 1e7, 3000)])
    out = np.empty(len(log_u))
    for k, lu in enumerate(log_u):
        out[k] = np.log10(2.0 * np.trapezoid(-np.expm1(-(10.0 ** lu) / (x * x + 1.0)), x))
    return log_u, out


def interp_cog(log_tau: np.ndarray, log_a: np.ndarray) -> np.ndarray:
    """Bilinear interpolation in the curve-of-growth table (linear regime below, sqrt regime above)."""
    grid_t, grid_a, table = _curve_of_growth()
    flat = _cog_flat32()
    na = len(grid_a)
    f32 = np.float32
    ft = (np.clip(log_tau, grid_t[0], grid_t[-1]) - f32(grid_t[0])) * f32(1.0 / (grid_t[1] - grid_t[0]))
    fa = (np.clip(log_a, grid_a[0], grid_a[-1]) - f32(grid_a[0])) * f32(1.0 / (grid_a[1] - grid_a[0]))
    it = np.minimum(ft.astype(np.int32), len(grid_t) - 2)
    ia = np.minimum(fa.astype(np.int32), na - 2)
    tt, ta = ft - it, fa - ia
    idx = it * na + ia
    v00, v01, v10, v11 = (flat.take(idx + d) for d in (0, 1, na, na + 1))
    top = v00 + (v01 - v00) * ta
    out = top + (v10 + (v11 - v10) * ta - top) * tt
    out = np.where(log_tau < grid_t[0], f32(np.log10(np.sqrt(np.pi))) + log_tau, out)
    return np.where(log_tau > grid_t[-1], out + f32(0.5) * (log_tau - f32(grid_t[-1])), out)


@functools.lru_cache(maxsize=1)
def _cog_flat32() -> np.ndarray:
    return _curve_of_growth()[2].astype(np.float32).ravel()


def interp_wing(log_u: np.ndarray) -> np.ndarray:
    grid, table = _wing_integral()
    return np.interp(log_u, grid, table)
