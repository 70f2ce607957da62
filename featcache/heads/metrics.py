"""Regression metrics for heads: per-target R2, RMSE, MAE, bias, the robust scatter and outlier fraction that
stellar-parameter work quotes (sigma_MAD in the label's units, dex for log_g), and bootstrap intervals.

Everything is computed in float64 on NumPy arrays. A 1-D input gives floats; a 2-D input (rows x targets)
gives one value per target, so several stellar parameters can be scored in one call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..common.errors import FeatcacheError

# Bootstrap draws are gathered in blocks of about this many elements, so memory stays bounded for any n.
_BOOT_BLOCK_ELEMENTS = 4_000_000


def _prepare(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """Both as (n, T) float64; the flag says the caller passed 1-D arrays (and wants floats back)."""
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_pred, dtype=np.float64)
    one_d = yt.ndim == 1
    if yt.ndim == 1:
        yt = yt[:, None]
    if yp.ndim == 1:
        yp = yp[:, None]
    if yt.ndim != 2 or yp.ndim != 2:
        raise FeatcacheError(f"metrics need 1-D or 2-D arrays, got shapes {np.shape(y_true)} and "
                             f"{np.shape(y_pred)}")
    if yt.shape != yp.shape:
        raise FeatcacheError(f"true and predicted values differ in shape: {yt.shape} vs {yp.shape}")
    if yt.shape[0] == 0:
        raise FeatcacheError("metrics need at least one row")
    return yt, yp, one_d


def _out(values: np.ndarray, one_d: bool) -> np.ndarray | float:
    return float(values[0]) if one_d else values


def _r2_columns(yt: np.ndarray, yp: np.ndarray) -> np.ndarray:
    sse = np.sum((yt - yp) ** 2, axis=0)
    sst = np.sum((yt - yt.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)


def r2(y_true: Any, y_pred: Any) -> np.ndarray | float:
    """Coefficient of determination per target (1 - SSE/SST); NaN where the true values are constant."""
    yt, yp, one_d = _prepare(y_true, y_pred)
    return _out(_r2_columns(yt, yp), one_d)


def rmse(y_true: Any, y_pred: Any) -> np.ndarray | float:
    """Root mean squared error per target, in the target's units."""
    yt, yp, one_d = _prepare(y_true, y_pred)
    return _out(np.sqrt(np.mean((yp - yt) ** 2, axis=0)), one_d)


def mae(y_true: Any, y_pred: Any) -> np.ndarray | float:
    """Mean absolute error per target."""
    yt, yp, one_d = _prepare(y_true, y_pred)
    return _out(np.mean(np.abs(yp - yt), axis=0), one_d)


def bias(y_true: Any, y_pred: Any) -> np.ndarray | float:
    """Mean of (pred - true) per target: positive means the head over-predicts on average."""
    yt, yp, one_d = _prepare(y_true, y_pred)
    return _out(np.mean(yp - yt, axis=0), one_d)


MAD_TO_SIGMA = 1.4826  # sigma of a Gaussian per median absolute deviation
OUTLIER_SIGMAS = 3.0


def sigma_mad(residual: Any, axis: int = 0) -> np.ndarray:
    """1.4826 x median |r - median(r)|: the scatter of the residuals, robust to a few wild ones."""
    r = np.asarray(residual, dtype=np.float64)
    centre = np.median(r, axis=axis, keepdims=True)
    return MAD_TO_SIGMA * np.median(np.abs(r - centre), axis=axis)


def outlier_fraction(residual: Any, axis: int = 0, k: float = OUTLIER_SIGMAS) -> np.ndarray:
    """Share of residuals farther than k sigma_MAD from their median (k = 3)."""
    r = np.asarray(residual, dtype=np.float64)
    centre = np.median(r, axis=axis, keepdims=True)
    scatter = np.expand_dims(sigma_mad(r, axis=axis), axis)
    return np.mean(np.abs(r - centre) > k * scatter, axis=axis)


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """{'n', 'r2', 'rmse', 'mae', 'bias', 'sigma_mad', 'outlier_fraction'} of residuals r = pred - true:
    floats for 1-D input; for 2-D input lists (one value per target) plus 'r2_mean', the mean R2 across
    targets (what model selection uses)."""
    yt, yp, one_d = _prepare(y_true, y_pred)
    err = yp - yt
    values = {
        "r2": _r2_columns(yt, yp),
        "rmse": np.sqrt(np.mean(err ** 2, axis=0)),
        "mae": np.mean(np.abs(err), axis=0),
        "bias": np.mean(err, axis=0),
        "sigma_mad": sigma_mad(err, axis=0),
        "outlier_fraction": outlier_fraction(err, axis=0),
    }
    out: dict[str, Any] = {"n": int(yt.shape[0])}
    for key, val in values.items():
        out[key] = float(val[0]) if one_d else [float(v) for v in val]
    if not one_d:
        out["r2_mean"] = float(np.mean(values["r2"]))
    return out


def resamples(n: int, n_boot: int, seed: int = 0, width: int = 1) -> Any:
    """Blocks (start, stop, idx) of bootstrap row indices, idx of shape (stop - start, n): the one sequence
    of resamples every statistic of a test set is computed on (so their intervals and paired differences
    all refer to the same resampled test sets). `width` (values per row) only sizes the blocks."""
    if n_boot < 1:
        raise FeatcacheError(f"n_boot must be at least 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    block = max(1, _BOOT_BLOCK_ELEMENTS // (n * width))
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        yield start, stop, rng.integers(0, n, size=(stop - start, n))


def bootstrap_r2(y_true: Any, y_pred: Any, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """R2 on n_boot resamples of the rows (with replacement), shape (n_boot, T). Deterministic given seed.

    Vectorised: each block of draws is an index matrix gathered at once; blocks bound the memory.
    """
    return bootstrap_metrics(y_true, y_pred, n_boot, seed, stats=("r2",))["r2"]


def bootstrap_metrics(y_true: Any, y_pred: Any, n_boot: int = 1000, seed: int = 0,
                      stats: tuple[str, ...] = ("r2", "rmse", "sigma_mad")) -> dict[str, np.ndarray]:
    """R2, RMSE and sigma_MAD (those named) on the same n_boot resamples of the rows, each (n_boot, T)."""
    yt, yp, _ = _prepare(y_true, y_pred)
    n, t = yt.shape
    err = yp - yt
    err2 = err ** 2
    out = {name: np.empty((n_boot, t), dtype=np.float64) for name in stats}
    for start, stop, idx in resamples(n, n_boot, seed, width=t):
        if "r2" in out:
            yb = yt[idx]                                        # (b, n, T)
            sst = np.sum((yb - yb.mean(axis=1, keepdims=True)) ** 2, axis=1)
            sse = np.sum(err2[idx], axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                out["r2"][start:stop] = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)
        if "rmse" in out:
            out["rmse"][start:stop] = np.sqrt(np.mean(err2[idx], axis=1))
        if "sigma_mad" in out:
            out["sigma_mad"][start:stop] = sigma_mad(err[idx], axis=1)
    return out


def bootstrap_r2_ci(y_true: Any, y_pred: Any, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95) -> tuple[Any, Any]:
    """Percentile bootstrap interval (lo, hi) for R2, resampling test rows; floats for 1-D input, arrays
    (one per target) for 2-D. Draws whose resample has constant truth are ignored."""
    one_d = np.asarray(y_true).ndim == 1
    lo, hi = percentile_interval(bootstrap_r2(y_true, y_pred, n_boot=n_boot, seed=seed), level)
    if one_d:
        return float(lo[0]), float(hi[0])
    return lo, hi


def paired_r2_difference_ci(y_true: Any, pred_a: Any, pred_b: Any, n_boot: int = 1000, seed: int = 0,
                            level: float = 0.95) -> tuple[float, float, float]:
    """R2(a) - R2(b) on the same test rows and its percentile bootstrap interval, each resample scoring both
    predictions (paired: the spread of the test sample that both share cancels, so the interval is much
    narrower than the two separate intervals suggest). 1-D inputs; returns (difference, lo, hi)."""
    yt = np.asarray(y_true, dtype=np.float64).ravel()
    pa, pb = np.asarray(pred_a, dtype=np.float64).ravel(), np.asarray(pred_b, dtype=np.float64).ravel()
    if not yt.shape == pa.shape == pb.shape:
        raise FeatcacheError(f"paired predictions need one shape: truth {yt.shape}, a {pa.shape}, b {pb.shape}")
    draws = bootstrap_r2(yt, pa, n_boot, seed) - bootstrap_r2(yt, pb, n_boot, seed)  # the same resamples
    lo, hi = percentile_interval(draws, level)
    return float(r2(yt, pa) - r2(yt, pb)), float(lo[0]), float(hi[0])


def percentile_interval(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-column percentile interval of bootstrap draws (n_boot, T); NaN draws (constant resamples) ignored."""
    if not 0.0 < level < 1.0:
        raise FeatcacheError(f"level must be between 0 and 1, got {level}")
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.nanpercentile(draws, [tail, 100.0 - tail], axis=0)
    return lo, hi



# Calibration of uncertainty heads: the share of residuals within 1 and 2 sigma (ideal 0.683 / 0.954 for a
# Gaussian), the std of z = r / sigma (ideal 1) and the mean negative log-likelihood (in the target's units).
CALIBRATION = ("coverage_1sigma", "coverage_2sigma", "z_std", "nll")
IDEAL = {"coverage_1sigma": 0.682689, "coverage_2sigma": 0.954500, "z_std": 1.0}
LOG_2PI = float(np.log(2.0 * np.pi))


def gaussian_nll(y_true: Any, mean: Any, sigma: Any) -> np.ndarray:
    """Per-row 0.5 log(2 pi sigma^2) + 0.5 ((y - mean) / sigma)^2, float64 (heads.gaussian trains on the same)."""
    y, mu, sd = (np.asarray(a, dtype=np.float64) for a in (y_true, mean, sigma))
    if np.any(~(sd > 0)):
        raise FeatcacheError("sigma must be positive and finite for the Gaussian NLL")
    z = (y - mu) / sd
    return 0.5 * LOG_2PI + np.log(sd) + 0.5 * z * z


def _calibration_columns(z: np.ndarray, nll: np.ndarray, axis: int) -> dict[str, np.ndarray]:
    return {"coverage_1sigma": np.mean(np.abs(z) <= 1.0, axis=axis),
            "coverage_2sigma": np.mean(np.abs(z) <= 2.0, axis=axis),
            "z_std": np.std(z, axis=axis), "nll": np.mean(nll, axis=axis)}


def calibration_metrics(y_true: Any, mean: Any, sigma: Any) -> dict[str, float]:
    """Coverage within 1 and 2 sigma, std(z) and mean NLL of one target's rows."""
    y, mu, sd = (np.asarray(a, dtype=np.float64).ravel() for a in (y_true, mean, sigma))
    values = _calibration_columns((y - mu) / sd, gaussian_nll(y, mu, sd), axis=0)
    return {k: float(v) for k, v in values.items()}


def bootstrap_calibration(y_true: Any, mean: Any, sigma: Any, n_boot: int = 1000, seed: int = 0
                          ) -> dict[str, np.ndarray]:
    """The calibration metrics on the same resamples of the rows as bootstrap_metrics (seed 0: the same test
    sets as the R2 interval), each (n_boot,)."""
    y, mu, sd = (np.asarray(a, dtype=np.float64).ravel() for a in (y_true, mean, sigma))
    z, nll = (y - mu) / sd, gaussian_nll(y, mu, sd)
    out = {name: np.empty(n_boot) for name in CALIBRATION}
    for start, stop, idx in resamples(len(y), n_boot, seed):
        for name, values in _calibration_columns(z[idx], nll[idx], axis=1).items():
            out[name][start:stop] = values
    return out


def coverage_curve(y_true: Any, mean: Any, sigma: Any, levels: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(expected, observed) coverage of central Gaussian intervals: the share of |z| within the interval of
    each expected level (a calibrated head lies on the diagonal)."""
    from statistics import NormalDist

    levels = np.linspace(0.05, 0.95, 19) if levels is None else np.asarray(levels, dtype=np.float64)
    y, mu, sd = (np.asarray(a, dtype=np.float64).ravel() for a in (y_true, mean, sigma))
    z = np.abs((y - mu) / sd)
    half = np.array([NormalDist().inv_cdf(0.5 + p / 2.0) for p in levels])
    return levels, np.mean(z[:, None] <= half[None, :], axis=0)


def split_metrics(split: str, role: str, y_true: np.ndarray, y_pred: np.ndarray, targets: list[str], *,
                  n_spectra: int | None = None, n_boot: int = 1000, sigma: np.ndarray | None = None
                  ) -> dict[str, Any]:
    """A split's entry of metrics.json: its role and size, and per target the regression metrics (with the
    bootstrap interval of R2 on the test role, resampling its rows with seed 0); with `sigma` (uncertainty
    heads) also the calibration metrics, their intervals from the same resamples."""
    y_true = np.asarray(y_true).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred).reshape(len(y_pred), -1)
    sigma = None if sigma is None else np.asarray(sigma).reshape(len(y_pred), -1)
    entry: dict[str, Any] = {"split": split, "role": role, "n": int(len(y_true)),
                             "n_spectra": int(len(y_true) if n_spectra is None else n_spectra), "targets": {}}
    for j, target in enumerate(targets):
        m = regression_metrics(y_true[:, j], y_pred[:, j])
        if role == "test":  # one bootstrap of the test rows for every interval
            draws = bootstrap_metrics(y_true[:, j], y_pred[:, j], n_boot=n_boot, seed=0)
            for name, values in draws.items():
                lo, hi = percentile_interval(values, 0.95)
                m[f"{name}_ci95"] = [float(lo[0]), float(hi[0])]
        if sigma is not None:
            m.update(calibration_metrics(y_true[:, j], y_pred[:, j], sigma[:, j]))
            if role == "test":
                for name, values in bootstrap_calibration(y_true[:, j], y_pred[:, j], sigma[:, j], n_boot).items():
                    lo, hi = percentile_interval(values[:, None], 0.95)
                    m[f"{name}_ci95"] = [float(lo[0]), float(hi[0])]
        entry["targets"][target] = m
    return entry
