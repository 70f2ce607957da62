"""Line profiles on the grid: sparse Gaussian rows (the OH sky lines at the instrument's resolution)."""

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
