"""Line profiles on the grid: sparse Gaussian rows (the OH sky lines at the instrument's resolution) and the
instrument's line spread from finely sampled spectra to pixels (the stellar spectra, the telluric bands)."""

from __future__ import annotations

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


def line_spread(samples: np.ndarray, pixels: np.ndarray, resolution: float, reach: float = 5.0):
    """Sparse (pixel, sample) matrix of a Gaussian line spread of FWHM lambda / resolution, truncated at
    ``reach`` sigma, each row summing to 1; and the pixels it covers (a pixel whose truncated kernel leaves
    ``samples`` gets no row)."""
    import math

    from scipy import sparse

    sigma = pixels / (resolution * 2.0 * math.sqrt(2.0 * math.log(2.0)))
    covered = np.flatnonzero((pixels - reach * sigma >= samples[0]) & (pixels + reach * sigma <= samples[-1]))
    lo = np.searchsorted(samples, pixels[covered] - reach * sigma[covered])
    hi = np.searchsorted(samples, pixels[covered] + reach * sigma[covered], side="right")
    rows = np.repeat(covered, hi - lo)
    cols = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)]) if len(covered) else lo
    vals = np.exp(-0.5 * ((samples[cols] - pixels[rows]) / sigma[rows]) ** 2)
    vals /= np.bincount(rows, weights=vals, minlength=len(pixels))[rows]
    return sparse.csr_matrix((vals, (rows, cols)), shape=(len(pixels), len(samples))), covered
