"""The Cramer-Rao bound of one star: F = J^T diag(1/sigma^2) J over the pixels the encoder sees, and the
marginalised bound sqrt((F^-1)_kk) of every parameter (the labels and the nuisance parameters together).

Vectorised over stars: J is (n, K, P) and sigma (n, P); every star has its own noise and its own derivatives.
The inversion is Jacobi-scaled (F -> D F D with D = diag(F)^-1/2) so that parameters in K and in dex, or a
redshift of 1e-3, invert as well as unit-free ones; a parameter the pixels say nothing about (a zero column of
J) has an infinite bound, and so has every parameter it is degenerate with.
"""

from __future__ import annotations

import numpy as np

from ..common.errors import FeatcacheError

# eigenvalues of the Jacobi-scaled Fisher matrix below this (relative to its largest) count as degenerate
DEGENERATE = 1e-13


def fisher_matrix(jacobian: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """F (n, K, K) = J diag(1/sigma^2) J^T per star, in float64. jacobian (n, K, P), sigma (n, P) > 0."""
    jac = np.asarray(jacobian, dtype=np.float64)
    sig = np.asarray(sigma, dtype=np.float64)
    if jac.ndim != 3 or sig.shape != (jac.shape[0], jac.shape[2]):
        raise FeatcacheError(f"fisher_matrix: expected J (n, K, P) and sigma (n, P), got {jac.shape} and {sig.shape}")
    if not np.all(sig > 0) or not np.all(np.isfinite(sig)):
        raise FeatcacheError("fisher_matrix: sigma must be positive and finite on every pixel used (mask the "
                             "pixels whose error is zero)")
    weighted = jac / (sig * sig)[:, None, :]
    return np.matmul(weighted, np.swapaxes(jac, 1, 2))


def inverse_fisher(fisher: np.ndarray) -> np.ndarray:
    """The covariance bound F^-1 (n, K, K): Jacobi-scaled, by eigendecomposition; degenerate directions
    (a parameter the spectrum does not constrain) give infinite variances for the parameters in them."""
    f = np.asarray(fisher, dtype=np.float64)
    diag = np.einsum("nkk->nk", f)
    with np.errstate(divide="ignore"):
        scale = np.where(diag > 0, 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0)), 0.0)
    scaled = f * scale[:, :, None] * scale[:, None, :]
    values, vectors = np.linalg.eigh(scaled)
    top = values.max(axis=1, keepdims=True)
    good = values > DEGENERATE * np.maximum(top, 1e-300)
    inv_values = np.where(good, 1.0 / np.where(good, values, 1.0), 0.0)
    cov = np.einsum("nki,ni,nli->nkl", vectors, inv_values, vectors)
    cov = cov * scale[:, :, None] * scale[:, None, :]
    # a parameter with weight in a degenerate direction (or no information at all) is unconstrained
    leak = np.einsum("nki,ni->nk", vectors * vectors, (~good).astype(np.float64))
    bad = (leak > 1e-6) | (diag <= 0)
    idx = np.arange(f.shape[1])
    cov[:, idx, idx] = np.where(bad, np.inf, cov[:, idx, idx])
    return cov


def crb(jacobian: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Marginalised Cramer-Rao bounds (n, K): sqrt((F^-1)_kk) of every parameter, in its own units."""
    cov = inverse_fisher(fisher_matrix(jacobian, sigma))
    return np.sqrt(np.einsum("nkk->nk", cov))


def prior_sigma(low: float, high: float) -> float:
    """The spread of a uniform prior on [low, high]: (high - low) / sqrt(12). A bound above it is
    prior-limited: the spectrum adds less than the label's range already says."""
    return float(high - low) / float(np.sqrt(12.0))
