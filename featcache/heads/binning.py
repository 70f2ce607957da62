"""Where a head does well: residual statistics in bins of S/N and of each stellar label, per population.

Stellar-parameter work judges a method by its robust scatter (sigma_MAD, in dex for log_g and [M/H], K for
T_eff) and bias as functions of S/N and of the labels, separately for giants and dwarfs. This module bins
one split's residuals (pred - true) that way (`binned_table`, what binned.csv holds) and compares two
predictions of the same rows bin by bin with a paired bootstrap (`paired_bin_differences`), reusing the one
sequence of test resamples of heads.metrics.resamples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError
from .metrics import MAD_TO_SIGMA, OUTLIER_SIGMAS, percentile_interval, resamples, sigma_mad

UNITS = {"log_g": "dex", "M_H": "dex", "a_M": "dex", "C_M": "dex", "T_eff": "K", "snr": "", "mag": "mag"}
# how plots and reports name a label (the params column's name is what options and files use)
NAMES = {"log_g": "log g", "M_H": "[M/H]", "a_M": "[alpha/M]", "C_M": "[C/M]", "T_eff": "T_eff", "snr": "S/N",
         "mag": "magnitude", "redshift": "radial velocity"}
# a column plots and report tables show in other units than it is stored in (binned.csv keeps the stored
# units): redshift z = v / c, shown as the radial velocity v in km/s
SHOWN_AS = {"redshift": ("km/s", 299_792.458)}
GIANT_LOGG = 3.5  # giants: log_g below this (dex); dwarfs at or above
MIN_PER_BIN = 50
MAX_BINS = 8
SNR_COLUMNS = ("snr", "mag")  # the S/N axis: the file's snr column, else its magnitude
SKIPPED_COLUMNS = ("random_seed", "index", "seed")


@dataclass(frozen=True)
class Binning:
    """How residuals are binned: given edges for some axes (quantile edges for the rest) and the log_g that
    splits giants from dwarfs. Every report of one run or comparison uses one Binning."""

    edges: dict[str, tuple[float, ...]] = field(default_factory=dict)
    giant_logg: float = GIANT_LOGG
    min_count: int = MIN_PER_BIN

    def __post_init__(self) -> None:
        if not math.isfinite(self.giant_logg):
            raise FeatcacheError(f"--giant-logg {self.giant_logg}: expected a finite log_g in dex (default "
                                 f"{GIANT_LOGG})")
        for axis, cuts in self.edges.items():
            if len(cuts) < 2 or not all(math.isfinite(c) for c in cuts) or any(
                    b <= a for a, b in zip(cuts, cuts[1:], strict=False)):
                raise FeatcacheError(f"--bins {axis}={','.join(f'{c:g}' for c in cuts)}: expected at least two "
                                     "finite, strictly increasing edges")

    @classmethod
    def parse(cls, specs: Iterable[str] = (), giant_logg: float = GIANT_LOGG) -> Binning:
        """From --bins AXIS=E1,E2,... options (repeatable, one axis each) and --giant-logg."""
        edges: dict[str, tuple[float, ...]] = {}
        for spec in specs:
            axis, sep, text = spec.partition("=")
            axis = axis.strip()
            if not sep or not axis or not text.strip():
                raise FeatcacheError(f"--bins {spec}: expected AXIS=E1,E2,... (e.g. snr=0,3,10,100 or "
                                     "log_g=0,2,3.5,5)")
            if axis in edges:
                raise FeatcacheError(f"--bins {spec}: edges for '{axis}' were already given")
            try:
                edges[axis] = tuple(float(v) for v in text.split(","))
            except ValueError:
                raise FeatcacheError(f"--bins {spec}: the edges must be numbers separated by commas") from None
        return cls(edges, giant_logg)

    def check_axes(self, available: Iterable[str]) -> None:
        """Refuse edges for an axis the rows do not have (a typo would silently fall back to quantiles)."""
        available = sorted(set(available))
        for axis in self.edges:
            if axis not in available:
                raise FeatcacheError(f"--bins {axis}=...: no label '{axis}' to bin by; choose from: "
                                     f"{', '.join(available)}")

    def edges_for(self, axis: str, values: np.ndarray) -> np.ndarray:
        """The given edges of this axis, else equal-count quantile edges of the values."""
        if axis in self.edges:
            return np.asarray(self.edges[axis], dtype=np.float64)
        return quantile_edges(values, self.min_count)

    def describe(self) -> dict[str, Any]:
        return {"edges": {k: list(v) for k, v in self.edges.items()}, "giant_logg": self.giant_logg,
                "min_count": self.min_count}


def unit(label: str) -> str:
    """The label's unit as a report prints it ('' for dimensionless)."""
    return UNITS.get(label, "")


def display_name(label: str) -> str:
    """The label as astronomers write it ([M/H], log g, radial velocity); unknown columns as they are."""
    return NAMES.get(label, label)


def display_unit(label: str) -> str:
    """The unit a plot or report table shows the label in (redshift: km/s)."""
    return SHOWN_AS[label][0] if label in SHOWN_AS else unit(label)


def display_scale(label: str) -> float:
    """The factor from the stored column to the shown values (redshift -> km/s), 1 for the others."""
    return SHOWN_AS[label][1] if label in SHOWN_AS else 1.0


def axis_label(label: str, what: str = "") -> str:
    """An axis title: the label's name, what is shown of it, and its unit: '[M/H] sigma_MAD (dex)'."""
    text = f"{display_name(label)} {what}".strip()
    return f"{text} ({display_unit(label)})" if display_unit(label) else text


def quantile_edges(values: np.ndarray, min_count: int = MIN_PER_BIN, max_bins: int = MAX_BINS) -> np.ndarray:
    """Equal-count bin edges with at least min_count rows a bin: the most quantile bins (up to max_bins)
    whose counts all reach min_count (tied values can leave a quantile bin short; then fewer bins)."""
    values = np.asarray(values, dtype=np.float64)
    for n_bins in range(max(1, min(max_bins, len(values) // max(min_count, 1))), 0, -1):
        edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)))
        if len(edges) < 2:
            break
        if np.bincount(assign_bins(values, edges), minlength=len(edges) - 1).min() >= min(min_count, len(values)):
            return edges
    return np.array([values.min(), values.max()])


def assign_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value: [edge_k, edge_k+1), the last bin closed, so every row between the ends has one;
    rows outside the edges get -1."""
    values = np.asarray(values, dtype=np.float64)
    bins = np.searchsorted(edges, values, side="right") - 1
    bins[values == edges[-1]] = len(edges) - 2
    bins[(values < edges[0]) | (values > edges[-1])] = -1
    return bins


def populations(labels: dict[str, np.ndarray], giant_logg: float = GIANT_LOGG) -> dict[str, np.ndarray]:
    """{'all', 'giants' (log_g < giant_logg), 'dwarfs'} row masks; just 'all' without a log_g label."""
    n = len(next(iter(labels.values()))) if labels else 0
    out = {"all": np.ones(n, dtype=bool)}
    if "log_g" in labels:
        logg = np.asarray(labels["log_g"], dtype=np.float64)
        out["giants"], out["dwarfs"] = logg < giant_logg, logg >= giant_logg
    return out


def binning_axes(target: str, labels: dict[str, np.ndarray], binning: Binning | None = None) -> list[str]:
    """What to bin a target's residuals by: its own true value, the S/N column, every other varying label,
    and every label the Binning gives edges for."""
    axes = [target]
    for name in SNR_COLUMNS:
        if name in labels and name not in axes and _varies(labels[name]):
            axes.append(name)
            break
    for name, values in labels.items():
        if name not in axes and name not in SKIPPED_COLUMNS and name not in SNR_COLUMNS and _varies(values):
            axes.append(name)
    axes += [name for name in (binning.edges if binning else {}) if name in labels and name not in axes]
    return axes


def _varies(values: np.ndarray) -> bool:
    values = np.asarray(values, dtype=np.float64)
    return bool(np.isfinite(values).all() and np.ptp(values) > 0)


def residual_stats(residual: np.ndarray) -> dict[str, float]:
    """n, bias, rmse, sigma_mad, outlier fraction and median of some residuals (NaN when there are none)."""
    if residual.size == 0:
        return {"n": 0, "bias": math.nan, "rmse": math.nan, "sigma_mad": math.nan, "outlier_fraction": math.nan,
                "median": math.nan}
    centre = float(np.median(residual))
    scatter = float(sigma_mad(residual))
    outliers = float(np.mean(np.abs(residual - centre) > OUTLIER_SIGMAS * scatter))
    return {"n": int(residual.size), "bias": float(residual.mean()), "rmse": float(np.sqrt(np.mean(residual ** 2))),
            "sigma_mad": scatter, "outlier_fraction": outliers, "median": centre}


def binned_table(truth: dict[str, np.ndarray], pred: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                 binning: Binning | None = None) -> list[dict[str, Any]]:
    """Rows of binned.csv: per population x target x axis x bin, the residual statistics. Within a
    population and axis the bins partition the rows (their counts add up to the population's size). Edges
    come from the whole split (so the populations share them): quantiles by default, or the Binning's."""
    binning = binning or Binning()
    rows: list[dict[str, Any]] = []
    pops = populations(labels, binning.giant_logg)
    for target, y_true in truth.items():
        residual = np.asarray(pred[target], dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
        values_of = {**labels, target: np.asarray(y_true, dtype=np.float64)}
        for axis in binning_axes(target, values_of, binning):
            values = np.asarray(values_of[axis], dtype=np.float64)
            cuts = binning.edges_for(axis, values)
            bins = assign_bins(values, cuts)
            spans = [(k, float(cuts[k]), float(cuts[k + 1])) for k in range(len(cuts) - 1)]
            if (bins < 0).any():  # given edges that do not span the rows: the rest is its own row
                spans.append((-1, math.nan, math.nan))
            for pop, keep in pops.items():
                for k, lo, hi in spans:
                    rows.append({"population": pop, "target": target, "unit": unit(target), "by": axis,
                                 "by_unit": unit(axis), "bin": k, "lo": lo, "hi": hi,
                                 **residual_stats(residual[keep & (bins == k)])})
    return rows


def bootstrap_bins(residuals: dict[str, np.ndarray], bins: np.ndarray, n_bins: int, *, n_boot: int = 1000,
                   seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """sigma_MAD and bias of each named residual vector in every bin, on each of the n_boot resamples of the
    rows (heads.metrics.resamples: the same resampled rows for every name, so differences are paired):
    {name: {'sigma_mad': (n_boot, n_bins), 'bias': (n_boot, n_bins)}}; NaN where a resample leaves a bin empty.

    Vectorised over resamples and names: per bin, each resample's rows of that bin are gathered into one
    NaN-padded matrix and the medians read off its sorted rows (the same values np.median gives)."""
    names = list(residuals)
    stacked = np.stack([np.asarray(residuals[k], dtype=np.float64) for k in names])  # (names, n)
    sigma = np.full((len(names), n_boot, n_bins), np.nan)
    bias = np.full((len(names), n_boot, n_bins), np.nan)
    for start, stop, idx in resamples(len(bins), n_boot, seed):
        picked = bins[idx]
        for k in range(n_bins):
            inside = picked == k
            counts = inside.sum(axis=1)
            width = int(counts.max(initial=0))
            if not width:
                continue
            # each resample's rows of bin k first, in their drawn order, then padding
            order = np.argsort(~inside, axis=1, kind="stable")[:, :width]
            values = stacked[:, np.take_along_axis(idx, order, axis=1)]          # (names, resamples, width)
            values[:, np.arange(width)[None, :] >= counts[:, None]] = np.nan
            filled = counts > 0
            sigma[:, start:stop, k] = np.where(filled, _padded_sigma_mad(values, counts), np.nan)
            with np.errstate(invalid="ignore", divide="ignore"):
                bias[:, start:stop, k] = np.nansum(values, axis=2) / np.where(filled, counts, np.nan)
    return {name: {"sigma_mad": sigma[i], "bias": bias[i]} for i, name in enumerate(names)}


def _padded_median(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Median over the last axis of the first counts[j] values of row j (NaN padding sorts last)."""
    ordered = np.sort(values, axis=-1)
    rows = np.arange(len(counts))
    lo, hi = np.maximum(counts - 1, 0) // 2, counts // 2
    return 0.5 * (ordered[..., rows, lo] + ordered[..., rows, np.minimum(hi, values.shape[-1] - 1)])


def _padded_sigma_mad(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """metrics.sigma_mad of each padded row (see _padded_median)."""
    centre = _padded_median(values, counts)
    return MAD_TO_SIGMA * _padded_median(np.abs(values - centre[..., None]), counts)


@dataclass
class BinDifference:
    """sigma_MAD of two predictions of the same rows in one bin, their difference a - b and its interval."""

    bin: int
    lo: float
    hi: float
    n: int
    a: float
    b: float
    difference: float
    ci_lo: float
    ci_hi: float


def paired_bin_differences(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, by: np.ndarray,
                           edges: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                           level: float = 0.95) -> list[BinDifference]:
    """sigma_MAD(a) - sigma_MAD(b) per bin of `by`, with a paired percentile interval: each resample of the
    rows scores both predictions on the same resampled rows of the bin, so what the two share (which stars
    are in the test set) cancels."""
    y_true = np.asarray(y_true, dtype=np.float64)
    ra, rb = np.asarray(pred_a, dtype=np.float64) - y_true, np.asarray(pred_b, dtype=np.float64) - y_true
    bins = assign_bins(by, edges)
    n_bins = len(edges) - 1
    draws = bootstrap_bins({"a": ra, "b": rb}, bins, n_bins, n_boot=n_boot, seed=seed)
    with np.errstate(invalid="ignore"):
        lo, hi = percentile_interval(draws["a"]["sigma_mad"] - draws["b"]["sigma_mad"], level)
    out = []
    for k in range(n_bins):
        keep = bins == k
        a, b = (float(sigma_mad(r[keep])) if keep.any() else math.nan for r in (ra, rb))
        out.append(BinDifference(k, float(edges[k]), float(edges[k + 1]), int(keep.sum()), a, b, a - b,
                                 float(lo[k]), float(hi[k])))
    return out
