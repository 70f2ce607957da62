"""Doppler shifts on a wavelength grid: fractional pixel positions and Catmull-Rom cubic interpolation with
its derivative (the generator shifts its spectra with the same spline).

A spectrum in the observed frame at redshift z holds, at observed wavelength w, the rest-frame flux at
w / (1 + z). Moving a train spectrum to the rest frame samples it at w_rest * (1 + z); evaluating a rest-frame
model in the observed frame samples it at w_obs / (1 + z), and the model's derivative with respect to z is
its derivative along the grid times d(position)/dz.
"""

from __future__ import annotations

import numpy as np


def positions(wave: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Fractional index into the (increasing) grid `wave` of each target wavelength (any shape); linear
    between grid points, so a non-uniform grid works as well as a linear one."""
    return np.interp(targets, wave, np.arange(len(wave), dtype=np.float64), left=-np.inf, right=np.inf)


def index_slope(wave: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """d(fractional index) / d(wavelength) at the targets (1 / the local pixel width)."""
    return np.interp(targets, wave, 1.0 / np.gradient(np.asarray(wave, dtype=np.float64)))


def spline_weights(pos: np.ndarray, n_pix: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For fractional positions (any shape): the left neighbour i0 (the spline reads i0-1 .. i0+2), the four
    Catmull-Rom weights (4, ...) and their derivatives along the position (4, ...). Positions outside
    [1, n_pix - 2) get zero weights (and i0 = 1, a safe index)."""
    pos = np.asarray(pos, dtype=np.float64)
    valid = (pos >= 1.0) & (pos < n_pix - 2.0)
    safe = np.where(valid, pos, 1.0)
    i0 = safe.astype(np.int64)
    t = safe - i0
    t2 = t * t
    t3 = t2 * t
    on = valid.astype(np.float64)
    weights = np.empty((4, *pos.shape))
    slopes = np.empty((4, *pos.shape))
    weights[0] = (-0.5 * t3 + t2 - 0.5 * t) * on
    weights[1] = (1.5 * t3 - 2.5 * t2 + 1.0) * on
    weights[2] = (-1.5 * t3 + 2.0 * t2 + 0.5 * t) * on
    weights[3] = (0.5 * t3 - 0.5 * t2) * on
    slopes[0] = (-1.5 * t2 + 2.0 * t - 0.5) * on
    slopes[1] = (4.5 * t2 - 5.0 * t) * on
    slopes[2] = (-4.5 * t2 + 4.0 * t + 0.5) * on
    slopes[3] = (1.5 * t2 - t) * on
    return i0, weights, slopes


def catmull_rom(values: np.ndarray, pos: np.ndarray, derivative: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Sample rows of `values` (n, ..., P) at fractional positions `pos` (n, M): returns the samples
    (n, ..., M), their derivative with respect to the position (or None) and a validity mask (n, M) (the
    spline needs the neighbours i-1 .. i+2, so positions in [1, P - 2) are valid; the rest are 0)."""
    values = np.asarray(values)
    n_pix = values.shape[-1]
    pos = np.asarray(pos, dtype=np.float64)
    valid = (pos >= 1.0) & (pos < n_pix - 2.0)
    i0, weights, slopes = spline_weights(pos, n_pix)
    n, m = pos.shape
    flat = values.reshape(n, -1, n_pix)
    mid = flat.shape[1]
    # one flat gather per neighbour: row r, middle axis c, pixel i -> (r * mid + c) * P + i
    base = (np.arange(n)[:, None, None] * mid + np.arange(mid)[None, :, None]) * n_pix + i0[:, None, :]
    source = flat.reshape(-1)
    out = np.zeros((n, mid, m))
    deriv = np.zeros((n, mid, m)) if derivative else None
    for k in range(4):
        gathered = source.take(base + (k - 1))
        out += weights[k][:, None, :] * gathered
        if deriv is not None:
            deriv += slopes[k][:, None, :] * gathered
    shape = (n, m) if values.ndim == 2 else (*values.shape[:-1], m)
    return out.reshape(shape), None if deriv is None else deriv.reshape(shape), valid


def to_rest_frame(flux: np.ndarray, wave: np.ndarray, redshift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observed-frame spectra (n, P) on `wave` resampled onto the same grid in the rest frame:
    rest[j] = observed at wave[j] * (1 + z). Returns (rest flux, valid) where valid marks the rest pixels the
    observed spectrum covers."""
    targets = np.asarray(wave, dtype=np.float64)[None, :] * (1.0 + np.asarray(redshift, dtype=np.float64))[:, None]
    rest, _, valid = catmull_rom(flux, positions(wave, targets))
    return rest, valid


def observed_positions(wave: np.ndarray, pixels: np.ndarray, redshift: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Positions on the rest grid of the observed pixels `pixels` (indices into wave) at each redshift
    (n, M), and d(position)/dz there."""
    obs = np.asarray(wave, dtype=np.float64)[pixels]
    one_z = 1.0 + np.asarray(redshift, dtype=np.float64)[:, None]
    rest = obs[None, :] / one_z
    pos = positions(wave, rest)
    dpos_dz = -index_slope(wave, rest) * obs[None, :] / (one_z * one_z)
    return pos, dpos_dz
