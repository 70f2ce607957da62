"""Exact, streaming ridge regression: every alpha from one eigendecomposition, memory independent of N (or,
with fewer train rows than features, of D: the dual form).

Rows are seen once, in chunks (e.g. straight from the Zarr cache): `StreamingStats` accumulates n, the
column sums and the cross-product matrices X^T X, X^T y, y^T y in float64. From those alone `RidgeHead`

* standardises the features on train (population std, as scikit-learn's StandardScaler; a zero-variance
  feature keeps scale 1 and gets coefficient 0),
* fits an intercept (centring), eigendecomposes the standardised train Gram once and gets the
  coefficients for every alpha,
* scores each alpha by validation R2 computed from the validation statistics expressed in the train
  standardisation: SSE_val(alpha) = y^T y - 2 w^T X^T y + w^T X^T X w, without reading rows again.

The result is the same as scikit-learn's `Ridge(alpha)` on `StandardScaler`-ed features (float64).
Long because the statistics, the primal and dual forms and the head's registry entry are kept whole here.

With fewer train rows than features (N < D: a `--pool none` map of a few dozen spectra) the D x D Gram is
the wrong matrix to build (13,920 features: 1.5 GB each, minutes of eigendecomposition); `RidgeHead.fit`
then solves the same problem through the N x N kernel of the standardised rows (the dual form, as
scikit-learn's Ridge does for wide data): the same coefficients, alphas and validation R2.

Alpha scaling: grid values are *relative* and are multiplied by n_train (default). With standardised
features the Gram is n_train times the correlation matrix (trace = n_train per non-constant feature), so the
relative alpha compares directly with its eigenvalues, whose mean is 1: 1e-4 is nearly least squares and
1e6 shrinks every coefficient to about zero, whatever N is. `alphas_`/`alpha_` hold the *effective* alphas,
the ones that give the same fit in scikit-learn's `Ridge`.

Multi-target: one alpha is shared by all targets, chosen by the mean validation R2 across targets (the
per-target curves are kept in `val_r2_per_alpha_`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..common.errors import FeatcacheError
from .entry import FitRows, HeadEntry, register
from .standardise import is_constant, target_name

DEFAULT_ALPHA_GRID: tuple[float, float, int] = (1e-4, 1e6, 21)
DEFAULT_CHUNK_ROWS = 32_768


class StreamingStats:
    """Running float64 sufficient statistics of (X, y) over row chunks.

    Sums are kept about a shift (the first chunk's mean), which avoids the cancellation of the textbook
    X^T X - n m m^T when features have a large mean compared with their spread.
    """

    def __init__(self) -> None:
        self.n = 0
        self.y_1d: bool | None = None
        self.shift_x: np.ndarray | None = None
        self.shift_y: np.ndarray | None = None
        self.sx: np.ndarray | None = None     # sum (x - shift_x)            (D,)
        self.sy: np.ndarray | None = None     # sum (y - shift_y)            (T,)
        self.sxx: np.ndarray | None = None    # sum (x - cx)(x - cx)^T       (D, D)
        self.sxy: np.ndarray | None = None    # sum (x - cx)(y - cy)^T       (D, T)
        self.syy: np.ndarray | None = None    # sum (y - cy)(y - cy)^T       (T, T)

    @property
    def n_features(self) -> int:
        return 0 if self.sx is None else int(self.sx.shape[0])

    @property
    def n_targets(self) -> int:
        return 0 if self.sy is None else int(self.sy.shape[0])

    def update(self, X_chunk: Any, y_chunk: Any) -> StreamingStats:
        """Add a chunk of rows (X: (m, D), y: (m,) or (m, T)); returns self so calls can chain."""
        X = np.asarray(X_chunk)
        y = np.asarray(y_chunk)
        y_1d = y.ndim == 1
        if y_1d:
            y = y[:, None]
        if X.ndim != 2 or y.ndim != 2 or X.shape[0] != y.shape[0]:
            raise FeatcacheError(f"features and targets do not match: shapes {X.shape} and "
                                 f"{np.shape(y_chunk)}")
        if X.shape[0] == 0:
            return self
        X = X.astype(np.float64)  # always a fresh array: the in-place shift below must not touch the input
        y = y.astype(np.float64)
        if self.sx is None:
            self.y_1d = y_1d
            self.shift_x = X.mean(axis=0)
            self.shift_y = y.mean(axis=0)
            d, t = X.shape[1], y.shape[1]
            self.sx, self.sy = np.zeros(d), np.zeros(t)
            self.sxx, self.sxy, self.syy = np.zeros((d, d)), np.zeros((d, t)), np.zeros((t, t))
        elif X.shape[1] != self.n_features or y.shape[1] != self.n_targets:
            raise FeatcacheError(f"chunk has {X.shape[1]} features and {y.shape[1]} targets; earlier chunks "
                                 f"had {self.n_features} and {self.n_targets}")
        X -= self.shift_x
        y -= self.shift_y
        self.n += X.shape[0]
        self.sx += X.sum(axis=0)
        self.sy += y.sum(axis=0)
        self.sxx += X.T @ X  # NumPy routes A.T @ A to BLAS syrk (half the work of a general product)
        self.sxy += X.T @ y
        self.syy += y.T @ y
        return self

    @classmethod
    def from_arrays(cls, X: Any, y: Any, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> StreamingStats:
        """Stream any row-sliceable arrays (NumPy, Zarr, h5py) through `update` in chunks."""
        stats = cls()
        n = len(X)
        if len(y) != n:
            raise FeatcacheError(f"features have {n} rows but targets have {len(y)}")
        for start in range(0, n, max(1, int(chunk_rows))):
            stop = min(n, start + chunk_rows)
            stats.update(X[start:stop], y[start:stop])
        return stats

    def _require(self, what: str) -> None:
        if self.n == 0:
            raise FeatcacheError(f"no rows in the {what} statistics")

    @property
    def mean_x(self) -> np.ndarray:
        self._require("feature")
        return self.shift_x + self.sx / self.n

    @property
    def mean_y(self) -> np.ndarray:
        self._require("target")
        return self.shift_y + self.sy / self.n

    def moments_about(self, mx: np.ndarray, my: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sum (x-mx)(x-mx)^T, sum (x-mx)(y-my)^T, sum (y-my)(y-my)^T) about arbitrary centres."""
        self._require("moment")
        dx = self.shift_x - np.asarray(mx, dtype=np.float64)
        dy = self.shift_y - np.asarray(my, dtype=np.float64)
        n = self.n
        xx = self.sxx + np.outer(self.sx, dx) + np.outer(dx, self.sx) + n * np.outer(dx, dx)
        xy = self.sxy + np.outer(self.sx, dy) + np.outer(dx, self.sy) + n * np.outer(dx, dy)
        yy = self.syy + np.outer(self.sy, dy) + np.outer(dy, self.sy) + n * np.outer(dy, dy)
        return xx, xy, yy

    def centred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Moments about this split's own means (scatter matrices)."""
        return self.moments_about(self.mean_x, self.mean_y)

    def standardisation(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, scale, constant-mask) of the features: population std, scale 1 for constant columns."""
        mean = self.mean_x
        xx, _, _ = self.centred()
        std = np.sqrt(np.clip(np.diag(xx) / self.n, 0.0, None))
        const = is_constant(std, mean)
        return mean, np.where(const, 1.0, std), const

    def standardised(self, mean: np.ndarray, scale: np.ndarray, y_centre: np.ndarray,
                     const: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gram Z^T Z, cross Z^T y', y'^T y' with z = (x - mean)/scale and y' = y - y_centre, i.e. this
        split's statistics seen through another split's standardisation (the validation case)."""
        xx, xy, yy = self.moments_about(mean, y_centre)
        zz = xx / np.outer(scale, scale)
        zy = xy / scale[:, None]
        if const is not None and const.any():
            zz[const, :] = 0.0
            zz[:, const] = 0.0
            zy[const, :] = 0.0
        return zz, zy, yy

    def check_finite(self, split: str) -> None:
        """NaN/inf anywhere in the rows reaches the sums, so one O(D^2) check covers every row."""
        self._require(split)
        if not (np.isfinite(self.sx).all() and np.isfinite(self.sxx).all()):
            raise FeatcacheError(f"features contain NaN or inf values on the {split} split; "
                                 "check the cache (or the spectra it was built from)")
        if not (np.isfinite(self.sy).all() and np.isfinite(self.syy).all()):
            raise FeatcacheError(f"targets contain NaN or inf values on the {split} split; "
                                 "drop or fill those rows")


def _eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric eigendecomposition on one BLAS thread: a D x D (D ~ 384) problem gains nothing from
    threads, and multithreaded OpenBLAS LAPACK on a busy 2-core machine was measured 100x slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return np.linalg.eigh(a)
    with threadpool_limits(1, user_api="blas"):
        return np.linalg.eigh(a)


PRIMAL_GRAM_COPIES = 6  # D x D float64 matrices the primal form holds at once (sums, moments, Gram, vectors, ...)
CHUNK_BYTES = 256 << 20  # a chunk of rows read at once, as float64


def _chunk_rows(d: int, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> int:
    """Rows per chunk: chunk_rows, fewer for wide features (a 13,920-wide chunk of 32,768 rows is 3.6 GB)."""
    return max(1, min(int(chunk_rows), CHUNK_BYTES // (8 * max(d, 1))))


def ridge_memory(n: int, d: int, n_val: int = 0) -> tuple[str, int]:
    """The form ridge takes for n train rows of d features ('dual' when n < d, else 'primal') and about the
    bytes it holds: the dual form its n x d standardised rows, n x n kernel and vectors and a chunk's kernel
    rows; the primal form its d x d matrices; both one chunk of rows as float64."""
    chunk = _chunk_rows(d)
    if n < d:
        return "dual", 8 * (n * d + 3 * n * n + min(chunk, max(n_val, 1)) * (d + 2 * n))
    return "primal", 8 * (PRIMAL_GRAM_COPIES * d * d + min(chunk, max(n, n_val, 1)) * d)


def _check_finite(x: np.ndarray, y: np.ndarray | None, split: str) -> None:
    """StreamingStats.check_finite's refusals, for rows held in memory."""
    if not np.isfinite(x).all():
        raise FeatcacheError(f"features contain NaN or inf values on the {split} split; "
                             "check the cache (or the spectra it was built from)")
    if y is not None and not np.isfinite(y).all():
        raise FeatcacheError(f"targets contain NaN or inf values on the {split} split; drop or fill those rows")


def alpha_grid(lo: float = 1e-4, hi: float = 1e6, num: int = 21) -> np.ndarray:
    """Log-spaced relative alphas, both ends included."""
    if not (lo > 0 and hi >= lo and int(num) >= 1):
        raise FeatcacheError(f"bad alpha grid ({lo}, {hi}, {num}): need 0 < lo <= hi and num >= 1")
    return np.logspace(np.log10(lo), np.log10(hi), int(num))


class RidgeHead:
    """Ridge with intercept on train-standardised features; alpha chosen by validation R2 (never test).

    alphas: explicit (relative, see module doc) alphas, or None for `alpha_grid`. scale_alphas=False
    takes them as effective alphas (scikit-learn's units on standardised features).
    """

    def __init__(self, alphas: Sequence[float] | None = None,
                 alpha_grid: tuple[float, float, int] = DEFAULT_ALPHA_GRID,
                 scale_alphas: bool = True) -> None:
        self.alphas = None if alphas is None else [float(a) for a in alphas]
        self.alpha_grid = tuple(alpha_grid)
        self.scale_alphas = bool(scale_alphas)
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | float | None = None
        self.alpha_: float | None = None
        self.alphas_: np.ndarray | None = None
        self.val_r2_per_alpha_: np.ndarray | None = None
        self.val_r2_: float | None = None
        self.x_mean_: np.ndarray | None = None
        self.x_scale_: np.ndarray | None = None
        self.n_train_: int | None = None
        self._y_1d = True

    def relative_alphas(self) -> np.ndarray:
        rel = alpha_grid(*self.alpha_grid) if self.alphas is None else np.asarray(self.alphas, np.float64)
        if rel.ndim != 1 or rel.size == 0 or not np.all(np.isfinite(rel)) or np.any(rel <= 0):
            raise FeatcacheError(f"alphas must be positive finite numbers, got {rel.tolist()}")
        return np.sort(rel)

    def _fit_alphas(self, n: int, y_std: np.ndarray, my: np.ndarray, target_names: Sequence[str] | None, *,
                    has_val: bool) -> np.ndarray:
        """The alphas a fit tries (scaled by N unless told otherwise), after the checks the primal and the dual
        form share: no constant target, and a validation split whenever there is a choice to make."""
        for j in np.flatnonzero(is_constant(y_std, my)):
            raise FeatcacheError(f"target '{target_name(target_names, j)}' is constant on the train split "
                                 f"(every value is {my[j]:.6g}); nothing to fit")
        rel = self.relative_alphas()
        alphas = rel * n if self.scale_alphas else rel
        if not has_val and alphas.size > 1:
            raise FeatcacheError("choosing alpha needs a validation split (alpha is never chosen on test); "
                                 "give validation rows or a single alpha")
        return alphas

    def _choose_alpha(self, r2: np.ndarray | None, y_1d: bool) -> int:
        """The alpha with the best mean validation R2 (the first, smallest, on ties; the only one without
        validation), recording the R2 of every alpha and whether the targets came as one 1-D array."""
        self._y_1d = y_1d
        if r2 is None:
            self.val_r2_per_alpha_ = self.val_r2_ = None
            return 0
        best = int(np.argmax(r2.mean(axis=1)))                 # first (smallest) alpha on ties
        self.val_r2_per_alpha_ = r2[:, 0] if y_1d else r2
        self.val_r2_ = float(r2[best].mean())
        return best

    def _set_solution(self, w: np.ndarray, moments: tuple, alphas: np.ndarray, best: int, n: int) -> RidgeHead:
        """Coefficients in the caller's units from w, the (D, T) solution in standardised units, for either
        form; moments = (x mean, x scale, constant columns, y mean)."""
        mx, scale, const, my = moments
        coef = w / scale[:, None]
        coef[const, :] = 0.0
        intercept = my - mx @ coef
        self.coef_ = coef[:, 0] if self._y_1d else coef
        self.intercept_ = float(intercept[0]) if self._y_1d else intercept
        self.alphas_ = alphas
        self.alpha_ = float(alphas[best])
        self.x_mean_, self.x_scale_, self.n_train_ = mx, scale, n
        return self

    def fit_stats(self, train: StreamingStats, val: StreamingStats | None = None,
                  target_names: Sequence[str] | None = None) -> RidgeHead:
        """Fit from accumulated statistics; val is required when there is more than one alpha."""
        train.check_finite("train")
        if train.n < 2:
            raise FeatcacheError(f"ridge needs at least 2 train rows, got {train.n}")
        n, t = train.n, train.n_targets
        mx, scale, const = train.standardisation()
        my = train.mean_y
        zz, zy, yy = train.standardised(mx, scale, my, const)
        y_std = np.sqrt(np.clip(np.diag(yy) / n, 0.0, None))
        alphas = self._fit_alphas(n, y_std, my, target_names, has_val=val is not None)

        lam, vecs = _eigh(zz)
        lam = np.clip(lam, 0.0, None)
        proj = vecs.T @ zy                                        # (D, T) in the eigenbasis
        coefs_eig = proj[None, :, :] / (lam[None, :, None] + alphas[:, None, None])   # (A, D, T)

        if val is not None:
            val.check_finite("validation")
            if val.n_features != train.n_features or val.n_targets != t:
                raise FeatcacheError(f"validation has {val.n_features} features and {val.n_targets} targets; "
                                     f"train has {train.n_features} and {t}")
            vzz, vzy, vyy = val.standardised(mx, scale, my, const)
            _, _, vyy_own = val.centred()
            sst = np.diag(vyy_own)
            vy_std = np.sqrt(np.clip(sst / val.n, 0.0, None))
            for j in np.flatnonzero(is_constant(vy_std, val.mean_y)):
                raise FeatcacheError(f"target '{target_name(target_names, j)}' is constant on the validation "
                                     "split; validation R2 is undefined")
            g = vecs.T @ vzz @ vecs                                # validation Gram in the eigenbasis
            c = vecs.T @ vzy
            quad = np.einsum("adt,adt->at", np.einsum("de,aet->adt", g, coefs_eig), coefs_eig)
            sse = np.diag(vyy)[None, :] - 2.0 * np.einsum("adt,dt->at", coefs_eig, c) + quad
            r2 = 1.0 - np.clip(sse, 0.0, None) / sst[None, :]     # (A, T)
        else:
            r2 = None
        best = self._choose_alpha(r2, bool(train.y_1d))
        return self._set_solution(vecs @ coefs_eig[best], (mx, scale, const, my), alphas, best, n)

    def fit(self, X_train: Any, y_train: Any, X_val: Any = None, y_val: Any = None,
            chunk_rows: int = DEFAULT_CHUNK_ROWS, target_names: Sequence[str] | None = None,
            max_memory: int | str | None = None) -> RidgeHead:
        """Fit on row-sliceable arrays (NumPy, Zarr, h5py, a cache's FeatureMatrix), read in chunks.

        With fewer train rows than features (N < D) the dual form solves it: the N x N kernel of the
        standardised rows instead of the D x D Gram (as scikit-learn's Ridge switches), the same solution; else
        the primal form from streamed statistics (`fit_stats`). max_memory (bytes, '1GB', '25%'; None: half the
        available RAM) refuses a fit whose form would hold more than that, before it reads a row."""
        from .streaming import format_bytes, parse_memory

        n, d = len(X_train), int(X_train.shape[1])
        form, need = ridge_memory(n, d, 0 if X_val is None else len(X_val))
        budget = parse_memory(max_memory)
        if need > budget:
            held = "its N x D standardised rows and N x N kernel" if form == "dual" else "its D x D Gram matrices"
            raise FeatcacheError(f"ridge on {n} train rows x {d} features needs about {format_bytes(need)} for {held}, "
                                 f"over the {format_bytes(budget)} memory budget (--max-memory); give a larger "
                                 "--max-memory or a narrower feature (another --pool)")
        rows = _chunk_rows(d, chunk_rows)
        if form == "dual":
            return self._fit_dual(X_train, y_train, X_val, y_val, rows, target_names)
        train = StreamingStats.from_arrays(X_train, y_train, rows)
        val = None if X_val is None else StreamingStats.from_arrays(X_val, y_val, rows)
        return self.fit_stats(train, val, target_names=target_names)

    def _fit_dual(self, X_train: Any, y_train: Any, X_val: Any, y_val: Any, chunk_rows: int,
                  target_names: Sequence[str] | None) -> RidgeHead:
        """Ridge through the N x N kernel K = Z Z^T of the standardised train rows Z (N < D): with K = U S U^T,
        the coefficients w(alpha) = Z^T U (S + alpha)^-1 U^T y' for every alpha from one eigendecomposition, and
        validation predictions Z_val w(alpha) = (Z_val Z^T U) (S + alpha)^-1 U^T y', chunk by chunk. The
        standardisation, alphas, validation R2 and choice are the primal form's (`fit_stats`)."""
        n, d = len(X_train), int(X_train.shape[1])
        x = np.empty((n, d), dtype=np.float64)
        for start in range(0, n, chunk_rows):
            x[start:start + chunk_rows] = np.asarray(X_train[start:start + chunk_rows], dtype=np.float64)
        y = np.asarray(y_train, dtype=np.float64)
        y_1d = y.ndim == 1
        y = y[:, None] if y_1d else y
        if y.ndim != 2 or len(y) != n:
            raise FeatcacheError(f"features have {n} rows but targets have {len(y)}")
        if n < 2:
            raise FeatcacheError(f"ridge needs at least 2 train rows, got {n}")
        _check_finite(x, y, "train")
        mx = x.mean(axis=0)
        std = np.sqrt(np.mean((x - mx) ** 2, axis=0))
        const = is_constant(std, mx)
        scale = np.where(const, 1.0, std)
        x -= mx
        x /= scale
        x[:, const] = 0.0                                          # z: the standardised rows, in place
        my = y.mean(axis=0)
        y_std = y.std(axis=0)
        alphas = self._fit_alphas(n, y_std, my, target_names, has_val=X_val is not None)
        lam, vecs = _eigh(x @ x.T)
        lam = np.clip(lam, 0.0, None)
        proj = vecs.T @ (y - my)                                   # (N, T) in the kernel's eigenbasis
        dual_eig = proj[None, :, :] / (lam[None, :, None] + alphas[:, None, None])   # (A, N, T)
        if X_val is not None:
            r2 = self._dual_val_r2(x, vecs, dual_eig, (mx, scale, const, my), X_val, y_val, chunk_rows,
                                   target_names)
        else:
            r2 = None
        best = self._choose_alpha(r2, bool(y_1d))
        return self._set_solution(x.T @ (vecs @ dual_eig[best]), (mx, scale, const, my), alphas, best, n)

    @staticmethod
    def _dual_val_r2(z: np.ndarray, vecs: np.ndarray, dual_eig: np.ndarray, train: tuple[Any, ...], X_val: Any,
                     y_val: Any, chunk_rows: int, target_names: Sequence[str] | None) -> np.ndarray:
        """(A, T) validation R2 of every alpha, the validation rows read in chunks through the train
        standardisation (their residuals about the train target mean, their spread about their own)."""
        mx, scale, const, my = train
        yv = np.asarray(y_val, dtype=np.float64)
        yv = yv[:, None] if yv.ndim == 1 else yv
        if len(yv) != len(X_val) or yv.shape[1] != dual_eig.shape[2] or int(X_val.shape[1]) != z.shape[1]:
            raise FeatcacheError(f"validation has {int(X_val.shape[1])} features and {yv.shape[1]} targets for "
                                 f"{len(X_val)} rows; train has {z.shape[1]} features and {dual_eig.shape[2]} targets")
        if not np.isfinite(yv).all():
            raise FeatcacheError("targets contain NaN or inf values on the validation split; drop or fill those rows")
        vy_std = yv.std(axis=0)
        for j in np.flatnonzero(is_constant(vy_std, yv.mean(axis=0))):
            raise FeatcacheError(f"target '{target_name(target_names, j)}' is constant on the validation "
                                 "split; validation R2 is undefined")
        sse = np.zeros((dual_eig.shape[0], dual_eig.shape[2]))
        for start in range(0, len(yv), chunk_rows):
            zv = np.asarray(X_val[start:start + chunk_rows], dtype=np.float64)
            _check_finite(zv, None, "validation")
            zv = (zv - mx) / scale
            zv[:, const] = 0.0
            basis = (zv @ z.T) @ vecs                              # (m, N): validation rows in the eigenbasis
            pred = np.einsum("mn,ant->amt", basis, dual_eig)       # (A, m, T)
            residual = (yv[start:start + chunk_rows] - my)[None] - pred
            sse += (residual ** 2).sum(axis=1)
        sst = ((yv - yv.mean(axis=0)) ** 2).sum(axis=0)
        return 1.0 - sse / sst[None, :]

    def _check_fitted(self) -> None:
        if self.coef_ is None:
            raise FeatcacheError("the ridge head is not fitted yet")

    def predict(self, X: Any, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
        """Predictions in the target's units (float64); chunked so float32 inputs are not copied whole."""
        self._check_fitted()
        coef = np.asarray(self.coef_, dtype=np.float64)
        n = len(X)
        out = np.empty((n,) + coef.shape[1:], dtype=np.float64)
        for start in range(0, n, chunk_rows):
            stop = min(n, start + chunk_rows)
            out[start:stop] = np.asarray(X[start:stop], dtype=np.float64) @ coef + self.intercept_
        return out

    def score(self, X: Any, y: Any) -> float:
        """Mean R2 across targets."""
        from .metrics import r2

        return float(np.mean(r2(y, self.predict(X))))

    def to_state(self) -> dict[str, Any]:
        """Plain tensors and numbers, loadable with torch.load(weights_only=True)."""
        self._check_fitted()

        def tensor(a: Any) -> torch.Tensor | None:
            return None if a is None else torch.as_tensor(np.asarray(a, dtype=np.float64))

        return {
            "kind": "ridge",
            "coef": tensor(self.coef_),
            "intercept": tensor(self.intercept_),
            "alpha": self.alpha_,
            "alphas": tensor(self.alphas_),
            "val_r2_per_alpha": tensor(self.val_r2_per_alpha_),
            "val_r2": self.val_r2_,
            "x_mean": tensor(self.x_mean_),
            "x_scale": tensor(self.x_scale_),
            "n_train": self.n_train_,
            "y_1d": self._y_1d,
            "relative_alphas": None if self.alphas is None else list(self.alphas),
            "alpha_grid": list(self.alpha_grid),
            "scale_alphas": self.scale_alphas,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RidgeHead:
        if state.get("kind") != "ridge":
            raise FeatcacheError(f"not a ridge head state (kind {state.get('kind')!r})")

        def array(v: Any) -> np.ndarray | None:
            return None if v is None else torch.as_tensor(v).double().numpy()

        head = cls(alphas=state.get("relative_alphas"), alpha_grid=tuple(state["alpha_grid"]),
                   scale_alphas=bool(state["scale_alphas"]))
        head._y_1d = bool(state["y_1d"])
        head.coef_ = array(state["coef"])
        intercept = array(state["intercept"])
        head.intercept_ = float(intercept) if head._y_1d else intercept
        head.alpha_ = state["alpha"]
        head.alphas_ = array(state["alphas"])
        head.val_r2_per_alpha_ = array(state["val_r2_per_alpha"])
        head.val_r2_ = state["val_r2"]
        head.x_mean_ = array(state["x_mean"])
        head.x_scale_ = array(state["x_scale"])
        head.n_train_ = state["n_train"]
        return head


class RidgeEntry(HeadEntry):
    """`ridge`: closed form from streamed statistics, alpha chosen by validation R2 (FitSpec.alphas)."""

    name = "ridge"
    description = "closed-form ridge on standardised features, alpha chosen by validation R2"

    def build(self, in_dim: int, out_dim: int, hidden: int, dropout: float, **kwargs: Any) -> RidgeHead:
        return RidgeHead(**kwargs)

    def fit(self, rows: FitRows) -> tuple[RidgeHead, list[dict[str, Any]]]:
        head = self.build(rows.in_dim, len(rows.targets), 0, 0.0, alphas=rows.spec.alphas)
        ridge = head.fit(rows.x["train"], rows.y["train"], rows.x.get("val"), rows.y.get("val"),
                         target_names=rows.targets, max_memory=rows.spec.max_memory)  # primal or dual form
        history: list[dict[str, Any]] = []
        if ridge.val_r2_per_alpha_ is not None:
            curve = np.asarray(ridge.val_r2_per_alpha_).reshape(len(ridge.alphas_), -1)
            history = [{"alpha": float(a), **{f"val_r2_{t}": float(curve[i, j]) for j, t in enumerate(rows.targets)}}
                       for i, a in enumerate(ridge.alphas_)]
        return ridge, history

    def chosen(self, predictor: RidgeHead) -> dict[str, Any]:
        return {"alpha": predictor.alpha_}

    def from_state(self, saved: dict[str, Any]) -> RidgeHead:
        return RidgeHead.from_state(saved["state"])

    def estimated_flop(self, n_train: int, n_eval: int, width: int, spec: Any, batched: bool = False) -> float:
        if n_train < width:  # the dual form: the N x N kernel
            return n_train * n_train * width + 10.0 * n_train ** 3 + 2.0 * n_eval * n_train * width
        return n_train * width * width + 10.0 * width ** 3 + 2.0 * n_eval * width  # Gram, eigh, scoring


register(RidgeEntry())
