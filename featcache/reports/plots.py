"""PNG figures for the reports: R2 heatmaps, predicted / residual vs true, sigma_MAD and bias per bin of S/N
or of a label (one line per compared cell, with its bootstrap band), and the Kiel diagram of the residuals.

matplotlib is imported inside the functions (so `featcache --help` stays fast) and used through its
object-oriented API on an Agg canvas: no pyplot, no global backend switch, nothing left open.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def r2_heatmap(cells: Any, path: Path, title: str = "") -> Path:
    """One panel per encoder label: layers down, poolings across, test R2 colour and value in each cell.

    cells: rows of the compare table for one head and target (columns encoder, layer, pool, test_r2, best).
    The colour scale is shared by the panels and floored at -1 so a useless baseline does not wash out the rest.
    """
    encoders = list(dict.fromkeys(cells["encoder"]))
    values = cells["test_r2"].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    vmax = float(finite.max()) if finite.size else 1.0
    vmin = max(float(finite.min()), -1.0) if finite.size else 0.0
    if vmax - vmin < 1e-6:
        vmin, vmax = vmin - 0.05, vmax + 0.05
    panels = []
    for encoder in encoders:
        sub = cells[cells["encoder"] == encoder]
        layers, pools = list(dict.fromkeys(sub["layer"])), list(dict.fromkeys(sub["pool"]))
        grid = np.full((len(layers), len(pools)), np.nan)
        best = None
        for _, row in sub.iterrows():
            i, j = layers.index(row["layer"]), pools.index(row["pool"])
            grid[i, j] = row["test_r2"]
            if bool(row.get("best", False)):
                best = (i, j)
        panels.append((encoder, layers, pools, grid, best))
    width = sum(1.6 + 1.1 * len(p[2]) for p in panels) + 1.0
    height = 1.4 + 0.55 * max(len(p[1]) for p in panels)
    fig = _figure(min(width, 30.0), min(max(height, 2.6), 20.0))
    axes = fig.subplots(1, len(panels), squeeze=False,
                        gridspec_kw={"width_ratios": [max(len(p[2]), 1) for p in panels]})[0]
    image = None
    for ax, (encoder, layers, pools, grid, best) in zip(axes, panels, strict=True):
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(pools)), pools, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(layers)), layers, fontsize=8)
        ax.set_title(str(encoder), fontsize=9)
        for i in range(len(layers)):
            for j in range(len(pools)):
                value = grid[i, j]
                if math.isfinite(value):
                    shade = (min(max(value, vmin), vmax) - vmin) / (vmax - vmin)
                    ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                            color="black" if shade > 0.6 else "white")
        if best is not None:
            from matplotlib.patches import Rectangle

            ax.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.9, label="test R2")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    return path


def best_cell(y_true: np.ndarray, y_pred: np.ndarray, path: Path, title: str = "", target: str = "") -> Path:
    """Predicted vs true and residual (predicted - true) vs true, as hexbin densities."""
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    resid = y_pred - y_true
    gridsize = int(np.clip(np.sqrt(len(y_true)) / 1.5, 8, 60))
    fig = _figure(9.0, 4.0)
    left, right = fig.subplots(1, 2)
    lo = float(min(y_true.min(), y_pred.min()))
    hi = float(max(y_true.max(), y_pred.max()))
    hb = left.hexbin(y_true, y_pred, gridsize=gridsize, mincnt=1, cmap="viridis",
                     extent=(lo, hi, lo, hi) if hi > lo else None)
    left.plot([lo, hi], [lo, hi], color="red", lw=1)
    left.set_xlabel(f"true {target}".strip())
    left.set_ylabel(f"predicted {target}".strip())
    from ..heads.binning import unit
    from ..heads.metrics import sigma_mad

    dex = unit(target)
    left.set_title(f"predicted vs true (sigma_MAD {float(sigma_mad(resid)):.3g}{' ' + dex if dex else ''} about "
                   "the 1:1 line)", fontsize=9)
    fig.colorbar(hb, ax=left, label="spectra")
    hb2 = right.hexbin(y_true, resid, gridsize=gridsize, mincnt=1, cmap="viridis")
    right.axhline(0.0, color="red", lw=1)
    right.set_xlabel(f"true {target}".strip())
    right.set_ylabel("predicted - true")
    right.set_title(f"residual vs true (rms {np.sqrt(np.mean(resid ** 2)):.3g}, bias {resid.mean():.3g})",
                    fontsize=9)
    fig.colorbar(hb2, ax=right, label="spectra")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    return path


def calibration(y_true: np.ndarray, mean: np.ndarray, sigma: np.ndarray, path: Path, title: str = "",
                target: str = "") -> Path:
    """An uncertainty head's calibration: observed vs expected coverage of its central Gaussian intervals
    (a calibrated head follows the diagonal), and |residual| vs predicted sigma with the RMS residual in
    equal-count sigma bins (a calibrated head follows the 1:1 line)."""
    from ..heads.metrics import coverage_curve

    y_true, mean, sigma = (np.asarray(a, dtype=float).ravel() for a in (y_true, mean, sigma))
    expected, observed = coverage_curve(y_true, mean, sigma)
    resid = np.abs(mean - y_true)
    fig = _figure(9.0, 4.0)
    left, right = fig.subplots(1, 2)
    left.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="ideal")
    left.plot(expected, observed, marker="o", ms=3, color="C0", label="test spectra")
    left.set_xlabel("expected coverage (central Gaussian interval)")
    left.set_ylabel("observed coverage")
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    left.legend(fontsize=8)
    z = (mean - y_true) / sigma
    left.set_title(f"within 1 sigma {np.mean(np.abs(z) <= 1):.3f} (ideal 0.683), std(z) {np.std(z):.3f}",
                   fontsize=9)
    right.scatter(sigma, resid, s=3, alpha=0.4, color="C0", lw=0)
    bins = min(10, max(1, len(sigma) // 50))
    edges = np.quantile(sigma, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, sigma, side="right") - 1, 0, bins - 1)
    centres = [float(np.median(sigma[which == b])) for b in range(bins) if np.any(which == b)]
    rms = [float(np.sqrt(np.mean(resid[which == b] ** 2))) for b in range(bins) if np.any(which == b)]
    right.plot(centres, rms, marker="s", color="C1", label="RMS residual per sigma bin")
    top = float(max(sigma.max(), max(rms) if rms else 0.0))
    right.plot([0, top], [0, top], color="grey", lw=1, ls="--", label="1:1")
    from ..heads.binning import unit

    dex = unit(target)
    right.set_xlabel(f"predicted sigma{' (' + dex + ')' if dex else ''}")
    right.set_ylabel(f"|predicted - true|{' (' + dex + ')' if dex else ''}")
    right.legend(fontsize=8)
    right.set_title("residual vs predicted sigma", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    return path


def binned_curves(curves: list[Any], axis: str, axis_unit: str, target: str, target_unit: str, path: Path,
                  title: str = "") -> Path:
    """sigma_MAD (left) and bias (right) of the residuals per bin of `axis`, one line per curve with its 95%
    bootstrap band; x at the bin's middle, the bins' edges as faint ticks."""
    fig = _figure(10.0, 3.8)
    left, right = fig.subplots(1, 2)
    for curve in curves:
        x = 0.5 * (np.asarray(curve.lo) + np.asarray(curve.hi))
        for ax, key in ((left, "sigma_mad"), (right, "bias")):
            y = np.asarray(getattr(curve, key), dtype=float)
            lo = np.asarray(getattr(curve, f"{key}_lo"), dtype=float)
            hi = np.asarray(getattr(curve, f"{key}_hi"), dtype=float)
            line = ax.plot(x, y, marker="o", ms=3, lw=1.2, label=curve.label)[0]
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    suffix = f" ({target_unit})" if target_unit else ""
    for ax, name in ((left, "sigma_MAD"), (right, "bias (pred - true)")):
        ax.set_xlabel(f"{axis} ({axis_unit})" if axis_unit else axis)
        ax.set_ylabel(f"{target} {name}{suffix}")
        ax.grid(alpha=0.3)
    right.axhline(0.0, color="grey", lw=0.8)
    left.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    return path


def bound_curves(curves: list[Any], rows: list[dict[str, Any]], bound: dict[str, Any], axis: str, target: str,
                 path: Path, title: str = "") -> Path:
    """sigma_MAD per bin of `axis` (S/N) for every compared cell with its 95% band, the information bound (rms
    of the stars' Cramer-Rao bounds per bin) as a black curve with its band, and the prior's spread dashed;
    log scales. Left: sigma; right: the efficiency bound^2 / sigma^2 of each cell."""
    from ..heads.binning import unit

    fig = _figure(10.5, 4.0)
    left, right = fig.subplots(1, 2)
    x = np.array([0.5 * (r["lo"] + r["hi"]) for r in rows], dtype=float)
    for curve in curves:
        y = np.asarray(curve.sigma_mad, dtype=float)
        line = left.plot(x, y, marker="o", ms=3, lw=1.2, label=curve.label)[0]
        left.fill_between(x, np.asarray(curve.sigma_mad_lo, dtype=float), np.asarray(curve.sigma_mad_hi, dtype=float),
                          color=line.get_color(), alpha=0.18, lw=0)
        eff = np.array([r["members"].get(curve.label, {}).get("efficiency", np.nan) for r in rows], dtype=float)
        lo = np.array([r["members"].get(curve.label, {}).get("efficiency_lo", np.nan) for r in rows], dtype=float)
        hi = np.array([r["members"].get(curve.label, {}).get("efficiency_hi", np.nan) for r in rows], dtype=float)
        limited = np.array([r["prior_limited"] for r in rows], dtype=bool)
        eff[limited] = lo[limited] = hi[limited] = np.nan
        right.plot(x, eff, marker="o", ms=3, lw=1.2, color=line.get_color(), label=curve.label)
        right.fill_between(x, lo, hi, color=line.get_color(), alpha=0.18, lw=0)
    rms = np.array([r["bound_rms"] for r in rows], dtype=float)
    left.plot(x, rms, color="black", lw=2.0, label=f"information bound ({bound['source']})")
    left.fill_between(x, [r["bound_rms_lo"] for r in rows], [r["bound_rms_hi"] for r in rows], color="black",
                      alpha=0.15, lw=0)
    left.axhline(bound["prior_sigma"], color="grey", ls="--", lw=1, label="prior spread (range / sqrt 12)")
    right.axhline(1.0, color="black", lw=1.0, label="efficient (at the bound)")
    tu = unit(target)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{axis} ({unit(axis)})" if unit(axis) else axis)
        ax.grid(alpha=0.3, which="both")
    left.set_ylabel(f"{target} sigma_MAD{' (' + tu + ')' if tu else ''}")
    right.set_ylabel("efficiency bound^2 / sigma_MAD^2")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle(title or f"{target}: scatter of each compared cell beside the information bound", fontsize=10)
    fig.savefig(path)
    return path


def kiel_diagram(teff: np.ndarray, logg: np.ndarray, residual: np.ndarray, path: Path, title: str = "",
                 target: str = "log_g", target_unit: str = "dex") -> Path:
    """The Kiel diagram of kiel_figure, saved as PNG."""
    kiel_figure(teff, logg, residual, title, target, target_unit).savefig(path)
    return path


def kiel_figure(teff: np.ndarray, logg: np.ndarray, residual: np.ndarray, title: str = "", target: str = "log_g",
                target_unit: str = "dex") -> Any:
    """T_eff vs log_g as astronomers draw it (both axes inverted: hot stars left, giants up), hexbins coloured
    by the median residual of the stars in them."""
    teff, logg, residual = (np.asarray(v, dtype=float).ravel() for v in (teff, logg, residual))
    fig = _figure(5.6, 4.6)
    ax = fig.subplots()
    limit = float(np.nanpercentile(np.abs(residual), 95)) or 1.0
    gridsize = int(np.clip(np.sqrt(len(teff)) / 2.0, 6, 40))
    hb = ax.hexbin(teff, logg, C=residual, reduce_C_function=np.median, gridsize=gridsize, cmap="coolwarm",
                   vmin=-limit, vmax=limit, mincnt=1)
    ax.invert_xaxis()
    ax.invert_yaxis()
    ax.set_xlabel("T_eff (K)")
    ax.set_ylabel("log g (dex)")
    fig.colorbar(hb, ax=ax, label=f"median {target} residual ({target_unit})" if target_unit else "median residual")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def label_efficiency(rows: list[dict[str, Any]], path: Path, target: str) -> Path:
    """Test R2 (left, with its 95% band) and sigma_MAD (right) vs the number of training spectra on a log
    axis: per encoder and head the cell with the best full-data validation R2 (every cell is in
    label_efficiency.csv; thirty lines would hide each other); raw-input cells dashed."""
    from ..heads.binning import unit

    fig = _figure(11.0, 4.6)
    left, right = fig.subplots(1, 2)
    cells: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["encoder"], row["layer"], row["pool"], row["head"], row["kind"]), []).append(row)
    best: dict[tuple[str, str], tuple[str, ...]] = {}
    for cell, points in cells.items():
        full = [r for r in points if r["full"] and np.isfinite(r["val_r2"])]
        key = (cell[0], cell[3])
        if full and (key not in best or full[0]["val_r2"] > next(r for r in cells[best[key]] if r["full"])["val_r2"]):
            best[key] = cell
    for encoder, layer, pool, head, kind in best.values():
        points = cells[(encoder, layer, pool, head, kind)]
        points = sorted(points, key=lambda r: r["n_train"])
        x = np.array([r["n_train"] for r in points], dtype=float)
        style = "--" if kind == "baseline" else "-"
        line = left.plot(x, [r["test_r2"] for r in points], style, marker="o", ms=3, lw=1.2,
                         label=f"{encoder} {layer}/{pool} {head}")[0]
        left.fill_between(x, [r["test_r2_lo"] for r in points], [r["test_r2_hi"] for r in points],
                          color=line.get_color(), alpha=0.15, lw=0)
        right.plot(x, [r["test_sigma_mad"] for r in points], style, marker="o", ms=3, lw=1.2,
                   color=line.get_color())
    tu = unit(target)
    for ax, name in ((left, "test R2"), (right, f"test sigma_MAD{' (' + tu + ')' if tu else ''}")):
        ax.set_xscale("log")
        ax.set_xlabel("training spectra")
        ax.set_ylabel(f"{target} {name}")
        ax.grid(alpha=0.3, which="both")
    fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(f"{target}: label efficiency (nested subsets of the train split; per encoder and head its cell "
                 "best on validation)", fontsize=9)
    fig.savefig(path)
    return path


def series_plot(rows: list[dict[str, Any]], x_key: str, x_label: str, path: Path, title: str,
                group: tuple[str, ...], ticks: list[str] | None = None) -> Path:
    """Test R2 with its 95% band against x_key, one line per group (depth per encoder and head, or
    checkpoints per head)."""
    fig = _figure(6.5, 4.0)
    ax = fig.subplots()
    lines: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        lines.setdefault(tuple(row[k] for k in group), []).append(row)
    for label, points in lines.items():
        points = sorted(points, key=lambda r: r[x_key])
        x = np.array([r[x_key] for r in points], dtype=float)
        line = ax.plot(x, [r["test_r2"] for r in points], marker="o", ms=3, lw=1.2, label=" ".join(map(str, label)))[0]
        ax.fill_between(x, [r["test_r2_lo"] for r in points], [r["test_r2_hi"] for r in points],
                        color=line.get_color(), alpha=0.15, lw=0)
    if ticks:
        ax.set_xticks(range(len(ticks)), ticks, rotation=30, fontsize=7)
    ax.set_xlabel(x_label)
    ax.set_ylabel("test R2 (cell chosen by validation R2)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.savefig(path)
    return path
