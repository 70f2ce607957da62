"""The information bound beside every compared cell: per S/N and label bin the rms of the test stars'
Cramer-Rao bounds (what an unbiased estimator can reach at best) beside each cell's scatter, and the efficiency
sigma_bound^2 / sigma_MAD^2 (the fraction of the information the cell recovers) with its bootstrap interval.

The bound comes from the cache (featcache bounds); the intervals use the one sequence of test resamples
(heads.metrics.resamples, seed 0) that every other interval of the report uses. A bin whose bound rms lies
above the label prior's spread (range / sqrt 12) is prior-limited: there the spectrum adds less than the range
already says and no efficiency is claimed. A biased estimator (one that shrinks towards the prior's middle)
can scatter below the unbiased bound where the data say little; where a cell does, the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..heads.binning import assign_bins, bootstrap_bins, unit
from ..heads.metrics import percentile_interval, sigma_mad

BOUND_KEY = "\0bound"  # the squared bounds ride in bootstrap_bins beside the residuals (its 'bias' is their mean)


@dataclass
class BoundInfo:
    """One target's per-star bounds on a section's rows, with where they came from and the prior's spread."""

    values: np.ndarray
    source: str
    prior_sigma: float
    description: str = ""


def test_bound(cache: Any, split: str, target: str, n_rows: int) -> BoundInfo | None:
    """The preferred bound source's per-star bounds on `target` for a split's draw-0 rows, or None when the
    cache has none for it (or its rows are not the section's)."""
    from ..information.fisher import prior_sigma

    sources = cache.bound_sources(split)
    if not sources:
        return None
    source = sources[0]
    info = cache.bounds_info(split, source)
    if target not in info.get("parameters", []) or target not in (info.get("prior") or {}):
        return None
    values = cache.bounds(split, source, draw=0)[target]
    if len(values) != n_rows:
        return None
    lo, hi = info["prior"][target]
    return BoundInfo(np.asarray(values, dtype=np.float64), source, prior_sigma(lo, hi), describe_source(source, info))


def describe_source(source: str, info: dict[str, Any]) -> str:
    settings = info.get("settings") or {}
    if source == "synth":
        return (f"exact: central differences of the featcache synth generator (version "
                f"{settings.get('generator_version', '?')})")
    train = settings.get("train") or {}
    return (f"data-driven: Cannon model of order {settings.get('order', '?')} fitted on {train.get('n', '?')} "
            f"{train.get('train_on', 'flux')} spectra of {train.get('train', '?')}")


def _efficiency_draws(residuals: dict[str, np.ndarray], bound: np.ndarray, bins: np.ndarray, n_bins: int,
                      n_boot: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per member (n_boot, n_bins) draws of bound_rms^2 / sigma_MAD^2, and the bound rms draws."""
    draws = bootstrap_bins({**residuals, BOUND_KEY: bound * bound}, bins, n_bins, n_boot=n_boot)
    mean_sq = draws[BOUND_KEY]["bias"]
    with np.errstate(invalid="ignore", divide="ignore"):
        eff = {k: mean_sq / draws[k]["sigma_mad"] ** 2 for k in residuals}
    return eff, np.sqrt(mean_sq)


def bin_rows(members: list[Any], values: np.ndarray, edges: np.ndarray, bound: BoundInfo, n_boot: int
             ) -> list[dict[str, Any]]:
    """Per bin: n, bound rms [CI], prior-limited stars, and per member sigma_MAD, efficiency [CI]."""
    bins = assign_bins(values, edges)
    n_bins = len(edges) - 1
    residuals = {m.label: m.residual for m in members}
    eff_draws, rms_draws = _efficiency_draws(residuals, bound.values, bins, n_bins, n_boot)
    with np.errstate(invalid="ignore"):
        rms_lo, rms_hi = percentile_interval(rms_draws, 0.95)
    rows = []
    for k in range(n_bins):
        keep = bins == k
        b = bound.values[keep]
        rms = float(np.sqrt(np.mean(b * b))) if keep.any() else math.nan
        row: dict[str, Any] = {"bin": k, "lo": float(edges[k]), "hi": float(edges[k + 1]), "n": int(keep.sum()),
                               "bound_rms": rms, "bound_rms_lo": float(rms_lo[k]), "bound_rms_hi": float(rms_hi[k]),
                               "prior_limited": bool(rms > bound.prior_sigma),
                               "n_prior_limited": int((b > bound.prior_sigma).sum()), "members": {}}
        for m in members:
            scatter = float(sigma_mad(m.residual[keep])) if keep.any() else math.nan
            with np.errstate(invalid="ignore"):
                lo, hi = percentile_interval(eff_draws[m.label][:, k:k + 1], 0.95)
            row["members"][m.label] = {"sigma_mad": scatter,
                                       "efficiency": rms * rms / scatter ** 2 if scatter > 0 else math.nan,
                                       "efficiency_lo": float(lo[0]), "efficiency_hi": float(hi[0])}
        rows.append(row)
    return rows


def overall(members: list[Any], bound: BoundInfo, n_boot: int) -> dict[str, dict[str, float]]:
    """Per member: the efficiency over the test stars whose bound is below the prior's spread, with its
    interval, and how many stars that is."""
    keep = bound.values <= bound.prior_sigma
    bins = np.where(keep, 0, -1)
    residuals = {m.label: m.residual for m in members}
    eff_draws, _ = _efficiency_draws(residuals, bound.values, bins, 1, n_boot)
    out = {}
    b = bound.values[keep]
    for m in members:
        scatter = float(sigma_mad(m.residual[keep])) if keep.any() else math.nan
        with np.errstate(invalid="ignore"):
            lo, hi = percentile_interval(eff_draws[m.label], 0.95)
        out[m.label] = {"n": int(keep.sum()), "bound_rms": float(np.sqrt(np.mean(b * b))) if keep.any() else math.nan,
                        "sigma_mad": scatter,
                        "efficiency": float(np.mean(b * b)) / scatter ** 2 if scatter > 0 else math.nan,
                        "efficiency_lo": float(lo[0]), "efficiency_hi": float(hi[0])}
    return out


def _eff_text(entry: dict[str, float]) -> str:
    e, lo, hi = entry["efficiency"], entry["efficiency_lo"], entry["efficiency_hi"]
    return "—" if not math.isfinite(e) else f"{e:.2f} [{lo:.2f}, {hi:.2f}]"


def bound_table(axis: str, rows: list[dict[str, Any]], members: list[Any], target: str) -> list[str]:
    """Markdown: per bin, the bound rms beside each member's sigma_MAD and efficiency."""
    au, tu = unit(axis), unit(target)
    name = f"{axis} ({au})" if au else axis
    header = [f"{name} bin", "n", f"bound rms ({tu or 'target units'}) [95% CI]", "prior-limited stars"]
    for m in members:
        header += [f"{m.label} sigma_MAD", f"{m.label} efficiency [95% CI]"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        bound = f"{row['bound_rms']:.3g} [{row['bound_rms_lo']:.3g}, {row['bound_rms_hi']:.3g}]"
        if row["prior_limited"]:
            bound += " (prior-limited)"
        cells = [f"{row['lo']:.4g} - {row['hi']:.4g}", str(row["n"]), bound, str(row["n_prior_limited"])]
        for m in members:
            entry = row["members"][m.label]
            eff = "prior-limited" if row["prior_limited"] else _eff_text(entry)
            cells += [f"{entry['sigma_mad']:.3f}", eff]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def sentences(target: str, axes: dict[str, list[dict[str, Any]]], totals: dict[str, dict[str, float]],
              members: list[Any], bound: BoundInfo) -> list[str]:
    """The findings: each member's fraction of the information overall and where it is highest and lowest,
    and every bin where a member scatters below the bound (a biased estimator)."""
    tu = unit(target)
    out = []
    limited = len(bound.values) - next(iter(totals.values()))["n"] if totals else 0
    for m in members:
        entry = totals[m.label]
        if not math.isfinite(entry["efficiency"]):
            continue
        text = (f"- {m.label} recovers {entry['efficiency']:.0%} [{entry['efficiency_lo']:.0%}, "
                f"{entry['efficiency_hi']:.0%}] of the {target} information the test spectra hold "
                f"(sigma_bound^2 / sigma_MAD^2 over the {entry['n']} test stars whose bound is below the prior's "
                f"spread, bound rms {entry['bound_rms']:.3g} {tu})")
        snr = next((rows for axis, rows in axes.items() if axis != target), None)
        if snr:
            usable = [r for r in snr if not r["prior_limited"] and math.isfinite(r["members"][m.label]["efficiency"])]
            if len(usable) > 1:
                best = max(usable, key=lambda r: r["members"][m.label]["efficiency"])
                worst = min(usable, key=lambda r: r["members"][m.label]["efficiency"])
                axis = next(a for a in axes if a != target)
                text += (f"; most at {axis} {best['lo']:.3g}-{best['hi']:.3g} "
                         f"({best['members'][m.label]['efficiency']:.0%}), least at {worst['lo']:.3g}-"
                         f"{worst['hi']:.3g} ({worst['members'][m.label]['efficiency']:.0%})")
        if entry["efficiency_lo"] > 1:
            text += ("; above 100%: no unbiased estimator can do that, so this one is biased (its errors pulled in "
                     "where the spectrum says little, e.g. by the label range), and the fraction is not an efficiency")
        out.append(text + ".")
    for axis, rows in axes.items():
        for row in rows:
            for m in members:
                entry = row["members"][m.label]
                if not row["prior_limited"] and entry["efficiency_lo"] > 1.0:
                    out.append(f"- {m.label} scatters below the bound at {axis} {row['lo']:.3g}-{row['hi']:.3g} "
                               f"(efficiency {_eff_text(entry)}): a biased estimator can (it pulls towards the "
                               "labels it was trained on where the spectrum says little); the bound holds for "
                               "unbiased ones.")
    if limited:
        out.append(f"- {limited} of {len(bound.values)} test stars have a {target} bound above the prior's spread "
                   f"({bound.prior_sigma:.3g} {tu}, range / sqrt 12): prior-limited, left out of the fractions above.")
    return out


def section_lines(target: str, members: list[Any], axis_values: dict[str, tuple[np.ndarray, np.ndarray]],
                  bound: BoundInfo, n_boot: int) -> tuple[list[str], dict[str, Any]]:
    """The bound part of a per-population section: a table per axis (the target and S/N), the findings, and
    the data for compare.json and the plot."""
    axes = {axis: bin_rows(members, values, edges, bound, n_boot) for axis, (values, edges) in axis_values.items()}
    totals = overall(members, bound, n_boot)
    lines = [f"#### {target}: scatter beside the information bound", "",
             f"Bound: the rms over a bin's test stars of each star's Cramer-Rao bound on {target} (marginalised over "
             f"the other labels and the radial velocity; {bound.description}); efficiency = bound rms^2 / "
             "sigma_MAD^2, the fraction of the information a cell recovers (1 = an efficient unbiased estimator), "
             f"with its 95% bootstrap interval. Prior-limited: bound rms above the prior's spread "
             f"{bound.prior_sigma:.3g} {unit(target)} (range / sqrt 12).", ""]
    for axis, rows in axes.items():
        lines += bound_table(axis, rows, members, target) + [""]
    lines += sentences(target, axes, totals, members, bound) + [""]
    data = {"source": bound.source, "description": bound.description, "prior_sigma": bound.prior_sigma,
            "axes": axes, "overall": totals}
    return lines, data


@dataclass
class _Scored:
    """What overall() needs of a table row: a label and its test residuals."""

    label: str
    residual: np.ndarray


def efficiency_columns(table: Any, predictions: list[tuple[np.ndarray, np.ndarray]], caches: dict[str, Any],
                       targets: list[str], test_split: str, n_boot: int) -> None:
    """Every table row whose cache holds bounds for its target gets `test_bound_rms`, `test_efficiency` and its
    95% interval (over the test stars below the prior's spread; one bootstrap for all rows of a target) and
    `bound_source`; other rows get NaN. Changes `table` in place."""
    for column in ("test_bound_rms", "test_efficiency", "test_efficiency_lo", "test_efficiency_hi"):
        table[column] = np.nan
    table["bound_source"] = ""
    for target in targets:
        rows = [i for i in table.index[table["target"] == target] if table.loc[i, "kind"] != "run"]
        by_cache: dict[str, list[int]] = {}
        for i in rows:
            by_cache.setdefault(str(table.loc[i, "source"]), []).append(i)
        for path, members in by_cache.items():
            if path not in caches:
                continue
            bound = test_bound(caches[path], test_split, target, len(predictions[members[0]][0]))
            if bound is None:
                continue
            scored = [_Scored(str(i), np.asarray(predictions[i][1], np.float64) - np.asarray(predictions[i][0],
                                                                                             np.float64))
                      for i in members if len(predictions[i][0]) == len(bound.values)]
            if not scored:
                continue
            for key, entry in overall(scored, bound, n_boot).items():
                i = int(key)
                table.loc[i, ["test_bound_rms", "test_efficiency", "test_efficiency_lo", "test_efficiency_hi"]] = [
                    entry["bound_rms"], entry["efficiency"], entry["efficiency_lo"], entry["efficiency_hi"]]
                table.loc[i, "bound_source"] = bound.source
