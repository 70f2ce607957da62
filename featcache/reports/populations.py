"""Where an encoder helps: robust scatter per S/N bin, per bin of the target and per population, for the
cells a report compares, with paired bootstrap differences against the raw spectrum.

One bootstrap of the test rows (heads.metrics.resamples, 1000 resamples, seed 0) serves every curve and
every difference of a section, so "the encoder beats raw flux for S/N < 3 by 0.05 dex [0.02, 0.08]" is a
statement about the same resampled test sets for both cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..heads.binning import (
    GIANT_LOGG,
    SNR_COLUMNS,
    Binning,
    assign_bins,
    binning_axes,
    bootstrap_bins,
    populations,
    unit,
)
from ..heads.metrics import percentile_interval, sigma_mad
from .options import N_BOOT


@dataclass
class Curve:
    """One cell's residual statistics per bin of an axis, with 95% bootstrap intervals."""

    label: str
    lo: list[float]
    hi: list[float]
    n: list[int]
    sigma_mad: list[float]
    sigma_mad_lo: list[float]
    sigma_mad_hi: list[float]
    bias: list[float]
    bias_lo: list[float]
    bias_hi: list[float]


@dataclass
class Member:
    """A compared prediction of one split's rows: its label, truth, prediction and the rows' labels."""

    label: str
    truth: np.ndarray
    pred: np.ndarray
    labels: dict[str, np.ndarray]
    index: np.ndarray | None = None
    cell: str = ""  # which cell it is (head on layer/pooling), when the label names only the encoder

    @property
    def residual(self) -> np.ndarray:
        return np.asarray(self.pred, dtype=np.float64) - np.asarray(self.truth, dtype=np.float64)


@dataclass
class AxisResult:
    """The curves of every member on one axis, and each member's paired difference against the reference."""

    axis: str
    edges: np.ndarray
    curves: list[Curve]
    differences: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)  # label: (d, lo, hi)


def axis_result(members: list[Member], axis: str, target: str, reference: str | None, n_boot: int = N_BOOT,
                binning: Binning | None = None) -> AxisResult:
    """Bin every member's residuals by `axis` (the target's true value or a label of the rows; edges from the
    first member's rows, which all members share) and compare each with the reference member."""
    values = _axis_values(members[0], axis, target)
    edges = (binning or Binning()).edges_for(axis, values)
    bins = assign_bins(values, edges)
    n_bins = len(edges) - 1
    draws = bootstrap_bins({m.label: m.residual for m in members}, bins, n_bins, n_boot=n_boot)
    curves = []
    for m in members:
        r = m.residual
        stats = {"sigma_mad": [], "bias": []}
        for k in range(n_bins):
            keep = bins == k
            stats["sigma_mad"].append(float(sigma_mad(r[keep])) if keep.any() else math.nan)
            stats["bias"].append(float(r[keep].mean()) if keep.any() else math.nan)
        with np.errstate(invalid="ignore"):
            s_lo, s_hi = percentile_interval(draws[m.label]["sigma_mad"], 0.95)
            b_lo, b_hi = percentile_interval(draws[m.label]["bias"], 0.95)
        curves.append(Curve(m.label, edges[:-1].tolist(), edges[1:].tolist(),
                            [int((bins == k).sum()) for k in range(n_bins)], stats["sigma_mad"], s_lo.tolist(),
                            s_hi.tolist(), stats["bias"], b_lo.tolist(), b_hi.tolist()))
    result = AxisResult(axis, edges, curves)
    if reference is not None:
        ref = next(c for c in curves if c.label == reference)
        for m, curve in zip(members, curves, strict=True):
            if m.label == reference:
                continue
            with np.errstate(invalid="ignore"):
                lo, hi = percentile_interval(draws[m.label]["sigma_mad"] - draws[reference]["sigma_mad"], 0.95)
            result.differences[m.label] = [(a - b, float(x), float(y)) for a, b, x, y in
                                           zip(curve.sigma_mad, ref.sigma_mad, lo, hi, strict=True)]
    return result


def _axis_values(member: Member, axis: str, target: str) -> np.ndarray:
    return np.asarray(member.truth if axis == target else member.labels[axis], dtype=np.float64)


def population_rows(members: list[Member], giant_logg: float = GIANT_LOGG, n_boot: int = N_BOOT,
                    reference: str | None = None) -> list[dict[str, Any]]:
    """sigma_MAD per population (giants, dwarfs) per member, with its 95% interval, and the paired
    difference from the reference member (same resamples) with its interval."""
    pops = populations(members[0].labels, giant_logg)
    names = list(pops)
    bins = np.full(len(members[0].truth), -1)
    rows = []
    for k, name in enumerate(names[1:] or names):  # giants and dwarfs partition the rows
        bins[pops[name]] = k
    split = names[1:] or names
    draws = bootstrap_bins({m.label: m.residual for m in members}, bins, len(split), n_boot=n_boot)
    ref = next((m for m in members if m.label == reference), None)
    for m in members:
        with np.errstate(invalid="ignore"):
            lo, hi = percentile_interval(draws[m.label]["sigma_mad"], 0.95)
            if ref is not None:
                d_lo, d_hi = percentile_interval(draws[m.label]["sigma_mad"] - draws[ref.label]["sigma_mad"], 0.95)
        for k, name in enumerate(split):
            keep = pops[name]
            row = {"member": m.label, "population": name, "n": int(keep.sum()),
                   "sigma_mad": float(sigma_mad(m.residual[keep])) if keep.any() else math.nan,
                   "lo": float(lo[k]), "hi": float(hi[k])}
            if ref is not None and m is not ref:
                own = row["sigma_mad"]
                theirs = float(sigma_mad(ref.residual[keep])) if keep.any() else math.nan
                row.update(difference=own - theirs, difference_lo=float(d_lo[k]), difference_hi=float(d_hi[k]))
            rows.append(row)
    return rows


def _population_table(rows: list[dict[str, Any]], members: list[Member], reference: str | None,
                      giant_logg: float) -> list[str]:
    names = list(dict.fromkeys(row["population"] for row in rows))
    others = [m.label for m in members if m.label != reference] if reference else []
    header = ["population", "n", *[f"{m.label} sigma_MAD [95% CI]" for m in members],
              *[f"{label} - {reference} [95% CI]" for label in others]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name in names:
        of = {row["member"]: row for row in rows if row["population"] == name}
        title = {"giants": f"giants (log_g < {giant_logg:g})", "dwarfs": f"dwarfs (log_g >= {giant_logg:g})"}
        cells = [title.get(name, name), str(next(iter(of.values()))["n"])]
        cells += [f"{of[m.label]['sigma_mad']:.3f} [{of[m.label]['lo']:.3f}, {of[m.label]['hi']:.3f}]"
                  for m in members]
        cells += [f"{of[label]['difference']:+.3f} [{of[label]['difference_lo']:+.3f}, "
                  f"{of[label]['difference_hi']:+.3f}]" for label in others]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def section(members: list[Member], target: str, reference: str | None, n_boot: int = N_BOOT,
            binning: Binning | None = None, bound: Any = None) -> tuple[list[str], dict[str, Any], list[AxisResult]]:
    """The markdown of a per-population section for one target, its data (compare.json), and every axis's
    result (for the plots): S/N, the target and the axes given edges in tables, every varying label in the
    data. With `bound` (reports.bounds.BoundInfo on the same rows), each cell's scatter beside the
    information bound per bin of the target and of S/N, and the fraction of the information it recovers."""
    binning = binning or Binning()
    giant_logg = binning.giant_logg
    first = members[0]
    axes = binning_axes(target, {**first.labels, target: first.truth}, binning)
    results = [axis_result(members, axis, target, reference, n_boot, binning) for axis in axes]
    tu = unit(target)
    lines = [f"### {target}: where each cell's scatter lies (sigma_MAD of pred - true, {tu or 'target units'})", ""]
    cells = [f"{m.label} = {m.cell}" for m in members if m.cell]
    if cells:
        lines += ["Cells (each encoder's best by validation R2" + (f"; {reference} is the reference" if reference
                  else "") + "): " + "; ".join(cells) + ".", ""]
    shown = [r for r in results if r.axis == target or r.axis in SNR_COLUMNS or r.axis in binning.edges]
    for result in shown:
        lines += _axis_table(result, target, reference) + [""]
    pop = population_rows(members, giant_logg, n_boot, reference)
    if len({row["population"] for row in pop}) > 1:
        lines += _population_table(pop, members, reference, giant_logg) + [""]
    lines += summary_sentences(results, target, reference) + [""]
    data = {"target": target, "reference": reference, "binning": binning.describe(), "populations": pop,
            "axes": [{"axis": r.axis, "unit": unit(r.axis), "edges": r.edges.tolist(),
                      "curves": [c.__dict__ for c in r.curves], "differences": r.differences} for r in results]}
    if bound is not None:
        from .bounds import section_lines

        axis_values = {r.axis: (_axis_values(first, r.axis, target), r.edges) for r in results
                       if r.axis == target or r.axis in SNR_COLUMNS}
        bound_lines, data["bound"] = section_lines(target, members, axis_values, bound, n_boot)
        lines += bound_lines
    return lines, data, results


def _axis_table(result: AxisResult, target: str, reference: str | None) -> list[str]:
    au = unit(result.axis)
    name = f"{result.axis} ({au})" if au else result.axis
    header = [f"{name} bin", "n", *[f"{c.label} sigma_MAD [95% CI]" for c in result.curves]]
    header += [f"{label} - {reference} [95% CI]" for label in result.differences]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for k in range(len(result.edges) - 1):
        cells = [f"{result.edges[k]:.4g} - {result.edges[k + 1]:.4g}", str(result.curves[0].n[k])]
        for c in result.curves:
            cells.append(f"{c.sigma_mad[k]:.3f} [{c.sigma_mad_lo[k]:.3f}, {c.sigma_mad_hi[k]:.3f}]")
        for diffs in result.differences.values():
            d, lo, hi = diffs[k]
            cells.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary_sentences(results: list[AxisResult], target: str, reference: str | None) -> list[str]:
    """Per compared cell and axis: the bins where it beats the reference (interval below zero), or the bin
    where it comes closest."""
    if reference is None:
        return []
    tu = unit(target)
    out = []
    for result in results:
        if result.axis != target and result.axis not in SNR_COLUMNS:
            continue
        au = unit(result.axis)
        for label, diffs in result.differences.items():
            span = [f"{result.edges[k]:.3g}-{result.edges[k + 1]:.3g}{' ' + au if au else ''}"
                    for k, (_, _, hi) in enumerate(diffs) if hi < 0]
            if span:
                out.append(f"- {label} has a lower {target} scatter than {reference} for {result.axis} in "
                           f"{', '.join(span)} (paired interval below zero).")
                continue
            k = int(np.nanargmin([d for d, _, _ in diffs]))
            d, lo, hi = diffs[k]
            out.append(f"- {label} comes closest to {reference} for {result.axis} {result.edges[k]:.3g}-"
                       f"{result.edges[k + 1]:.3g}{' ' + au if au else ''}: {d:+.3f} {tu} [{lo:+.3f}, {hi:+.3f}] "
                       "in sigma_MAD; no bin's paired interval lies below zero.")
    return out


def draw(results: list[AxisResult], members: list[Member], target: str, out: Path, stem: str,
         title: str = "", bound: dict[str, Any] | None = None) -> list[tuple[str, Path]]:
    """The binned curves per axis, the scatter against S/N beside the information bound (with `bound`, a
    section's data["bound"]) and the Kiel diagram of the first member: (caption, path) pairs."""
    from .plots import binned_curves, bound_curves, kiel_diagram

    images = []
    for result in results:
        if bound and result.axis in bound["axes"] and result.axis in SNR_COLUMNS:
            path = out / f"{stem}_bound_by_{_safe(result.axis)}.png"
            bound_curves(result.curves, bound["axes"][result.axis], bound, result.axis, target, path, title)
            images.append((f"{target}: scatter against {result.axis} beside the information bound", path))
    for result in results:
        path = out / f"{stem}_by_{_safe(result.axis)}.png"
        binned_curves(result.curves, result.axis, unit(result.axis), target, unit(target), path, title)
        images.append((f"{target}: sigma_MAD and bias vs {result.axis}", path))
    best = members[0]
    if {"T_eff", "log_g"} <= set(best.labels) | {target}:
        teff = best.labels.get("T_eff", best.truth if target == "T_eff" else None)
        logg = best.labels.get("log_g", best.truth if target == "log_g" else None)
        path = out / f"{stem}_kiel.png"
        kiel_diagram(teff, logg, best.residual, path, title=f"{best.label}: {target} residual across the Kiel "
                     "diagram", target=target, target_unit=unit(target))
        images.append((f"{target}: median residual across the Kiel diagram ({best.label})", path))
    return images


def _safe(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def compared_members(table: Any, predictions: list[tuple[np.ndarray, np.ndarray]], labels_of: Any, target: str,
                     rows_key: Any = None) -> tuple[list[Member], str | None, list[str]]:
    """The members of a comparison's section: the best cell (by validation R2) of each encoder, then the best
    raw-flux baseline cell, which is the reference. labels_of(row) gives the labels of a row's test rows;
    rows_key(row) says which test spectra it scored: members are paired row by row, so only those that scored
    the first member's spectra take part, and the labels of the others come back as the third value."""
    sub = table[(table["target"] == target) & table["val_r2"].notna()]
    picks = []
    for encoder in dict.fromkeys(sub.loc[sub["kind"] == "encoder", "encoder"]):
        rows = sub[(sub["encoder"] == encoder) & (sub["kind"] == "encoder")]
        picks.append(int(rows["val_r2"].idxmax()))
    raw = sub[(sub["kind"] == "baseline") & (sub["layer"] == "input_flux")]
    reference = None
    if len(raw):
        picks.append(int(raw["val_r2"].idxmax()))
    full = sub[sub["kind"] == "full_spectrum"]  # the full-spectrum baseline (reports.fullspec)
    if len(full):
        picks.append(int(full["val_r2"].idxmax()))
    members, unpaired, first_key = [], [], None
    for i in picks:
        row = table.loc[i]
        truth, pred = predictions[i]
        label = str(row["encoder"])  # one cell per encoder (and one raw-input cell): the name says which
        key = rows_key(row) if rows_key is not None else len(truth)
        first_key = key if first_key is None else first_key
        if key != first_key or (members and len(truth) != len(members[0].truth)):
            unpaired.append(label)  # other test spectra: their rows cannot be paired with the first member's
            continue
        cell = (f"{row['head']} on {row['layer']}/{row['pool']}" if row["kind"] != "full_spectrum" else
                f"Cannon model ({row['pool'].replace('order', 'order ')}) fitted to every spectrum by weighted "
                "least squares")
        members.append(Member(label, truth, pred, labels_of(row), cell=cell))
        if row["kind"] == "baseline":
            reference = label
    if len(members) < 2:
        reference = None
    return members, reference, unpaired


def population_sections(table: Any, predictions: list[tuple[np.ndarray, np.ndarray]], sources: list[Any],
                         targets: list[str], test_split: str, n_boot: int, binning: Binning
                         ) -> dict[str, Any]:
    """Per target: the best cell of each encoder, the raw-flux baseline and the full-spectrum fit, binned by S/N
    and the target, with paired differences (section) and, where the caches hold bounds, the information bound
    (compare's per-population section)."""
    from .bounds import test_bound
    from .sources import test_rows_key

    by_path = {str(s.path): s for s in sources}
    cached: dict[str, dict[str, np.ndarray]] = {}
    keys = {str(s.path): test_rows_key(s.cache, test_split) for s in sources}

    def labels_of(row: Any) -> dict[str, np.ndarray]:
        path = str(row["source"])
        if path not in cached:
            cache = by_path[path].cache
            cached[path] = {n: cache.labels(test_split, n, draw=0) for n in cache.label_names(test_split)}
        return cached[path]

    out = {}
    for target in targets:
        members, reference, unpaired = compared_members(table, predictions, labels_of, target,
                                                        lambda row: keys[str(row["source"])])
        if members:
            paths = [p for p in table.loc[(table["target"] == target) & (table["kind"] != "run"), "source"]
                     if p in by_path]
            bound = test_bound(by_path[paths[0]].cache, test_split, target, len(members[0].truth)) if paths else None
            lines, data, results = section(members, target, reference, n_boot, binning, bound)
            if unpaired:
                note = (f"Not paired: {', '.join(unpaired)} scored other test spectra than {members[0].label} (another "
                        "file, other rows or other noise), so their rows cannot be paired with its; they are left out "
                        "of this section (the table above scores each on its own test rows).")
                lines = lines[:2] + [note, ""] + lines[2:]
                data["unpaired"] = unpaired
            out[target] = {"lines": lines, "data": data, "results": results, "members": members}
    return out
