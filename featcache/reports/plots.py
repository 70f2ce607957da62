"""PNG figures for `featcache compare`: R2 heatmaps and the best cell's predicted / residual vs true.

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
    left.set_title("predicted vs true", fontsize=9)
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
