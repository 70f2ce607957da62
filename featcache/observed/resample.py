"""Flux-conserving resampling of a flux density between pixel grids, with its covariance propagated.

Each target pixel takes the overlap-weighted mean of the source pixels it covers:
F_j = sum_i W_ji f_i, W_ji = |pixel_i and bin_j| / |bin_j| (edges in one unit). So the integral of the density
over any span the source covers is kept (sum_j F_j |bin_j| = sum_i f_i |pixel_i|), a constant stays that
constant, and the covariance of F is W C W^T, with C the source's banded covariance (the products' COVAR planes:
plane k, element i = Cov(i, i+k)).
"""

from __future__ import annotations

import numpy as np

from ..common.errors import FeatcacheError


def rebin_matrix(source_edges: np.ndarray, target_edges: np.ndarray):
    """W (n_target, n_source), scipy CSR: W[j, i] = overlap(source pixel i, target bin j) / width of bin j."""
    from scipy import sparse

    src = np.asarray(source_edges, dtype=np.float64)
    dst = np.asarray(target_edges, dtype=np.float64)
    for name, e in (("source", src), ("target", dst)):
        if e.ndim != 1 or e.size < 2 or not (np.diff(e) > 0).all():
            raise FeatcacheError(f"{name} pixel edges must be strictly increasing")
    cuts = np.union1d(src, dst)
    lo, hi = cuts[:-1], cuts[1:]
    mid = 0.5 * (lo + hi)
    i = np.searchsorted(src, mid, side="right") - 1
    j = np.searchsorted(dst, mid, side="right") - 1
    keep = (i >= 0) & (i < src.size - 1) & (j >= 0) & (j < dst.size - 1)
    width = np.diff(dst)
    values = (hi - lo)[keep] / width[j[keep]]
    return sparse.coo_matrix((values, (j[keep], i[keep])), shape=(dst.size - 1, src.size - 1)).tocsr()


def banded_covariance(planes: np.ndarray):
    """The symmetric sparse covariance of a pixel vector from its planes (plane k, element i = Cov(i, i+k);
    the last k elements of plane k are padding)."""
    from scipy import sparse

    planes = np.atleast_2d(np.asarray(planes, dtype=np.float64))
    n = planes.shape[1]
    diagonals, offsets = [planes[0]], [0]
    for k in range(1, min(planes.shape[0], n)):
        band = planes[k, : n - k]
        if not np.any(band):
            continue
        diagonals += [band, band]
        offsets += [k, -k]
    return sparse.diags(diagonals, offsets, shape=(n, n), format="csr")


def resample(flux: np.ndarray, covariance_planes: np.ndarray, weights, n_planes: int = 1
             ) -> tuple[np.ndarray, np.ndarray]:
    """(F, planes of Cov(F)): F = W f and the first n_planes diagonals of W C W^T (plane 0: the variance)."""
    f = np.asarray(flux, dtype=np.float64)
    out = weights @ f
    cov = weights @ banded_covariance(covariance_planes) @ weights.T
    n = out.size
    planes = np.zeros((n_planes, n))
    for k in range(min(n_planes, n)):
        planes[k, : n - k] = cov.diagonal(k)
    return out, planes
