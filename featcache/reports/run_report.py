"""`featcache report`: re-draw the astronomer's view of finished runs without refitting anything.

A fit or finetune run directory holds its test predictions and the labels of those rows
(predictions.npz), so its binned.csv, the sigma_MAD / bias curves per S/N and per label, the Kiel diagram
and report.md are drawn from it alone. A compare directory is re-drawn by running the comparison again
with fit=False: every cell comes from OUT/cells, none is fitted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError
from ..common.files import write_text
from ..heads.binning import Binning, display_name, unit
from ..heads.recipe import TrainRecipe
from ..heads.runs import role_labels, write_binned
from .html import write_html
from .plots import best_cell
from .populations import Member, draw, section
from .rows import read_run, run_targets


def report(paths: list[Path], binning: Binning | None = None) -> list[Path]:
    """Re-draw each path: a run directory (metrics.json + predictions.npz) or a compare directory. Every
    path (and the binning's axes against its labels) is checked before any is drawn."""
    binning = binning or Binning()
    kinds = []
    for path in map(Path, paths):
        if (path / "compare.json").exists():
            kinds.append((path, report_compare))
        elif (path / "metrics.json").exists() and (path / "predictions.npz").exists():
            kinds.append((path, report_run))
        else:
            raise FeatcacheError(f"{path}: neither a run directory (metrics.json, predictions.npz) nor a compare "
                                 "directory (compare.json)")
    for path, draw_one in kinds:
        try:
            binning.check_axes(_label_names(path, draw_one is report_compare))
        except FeatcacheError as exc:
            raise FeatcacheError(f"{path}: {exc}") from None
    written: list[Path] = []
    for path, draw_one in kinds:
        written += draw_one(path, binning)
    return written


def _label_names(path: Path, is_compare: bool) -> list[str]:
    """The labels (and targets) a run's test predictions or a comparison's test split carry."""
    if not is_compare:
        arrays = read_run(path, flag="").arrays
        targets = [str(t) for t in np.atleast_1d(arrays["targets"])] if "targets" in arrays else []
        return [*role_labels(arrays, "test"), *targets]
    from ..cache.reader import open_cache

    summary = read_summary(path)
    names = list(summary["targets"])
    for entry in summary["caches"]:
        names += open_cache(entry["path"]).label_names(summary["splits"]["test"])
    return names


def read_summary(folder: Path) -> dict[str, Any]:
    """compare.json, checked for the keys `featcache report` redraws from (a damaged or foreign file is a
    one-line error)."""
    try:
        summary = json.loads((folder / "compare.json").read_text())
        if not isinstance(summary, dict):
            raise TypeError("not a JSON object")
        for key, kind in (("targets", list), ("caches", list), ("splits", dict), ("recipe", dict), ("heads", list),
                          ("runs", list), ("seeds", int), ("n_boot", int)):
            if not isinstance(summary.get(key), kind):
                raise TypeError(f"'{key}' missing or not a {kind.__name__}")
        for entry in summary["caches"]:
            if not isinstance(entry, dict) or not {"name", "path"} <= set(entry):
                raise TypeError("a 'caches' entry without name and path")
        TrainRecipe(**summary["recipe"])
        _ = [summary["splits"][role] for role in ("train", "val", "test")], [r["path"] for r in summary["runs"]]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError) as exc:
        raise FeatcacheError(f"{folder / 'compare.json'}: not a comparison featcache compare wrote "
                             f"({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None
    return summary


def report_run(run: Path, binning: Binning | None = None) -> list[Path]:
    """binned.csv, the per-axis curves, the Kiel diagram, predicted vs true and report.md of one run."""
    loaded = read_run(run, flag="")
    metrics, data = loaded.metrics, loaded.arrays
    targets = run_targets(loaded)
    labels = role_labels(data, "test")
    truth = data["test_true"].reshape(len(data["test_true"]), -1)
    pred = data["test_pred"].reshape(len(truth), -1)
    files = [write_binned(run / "binned.csv", {"true": truth, "pred": pred,
                                               **{f"label_{k}": v for k, v in labels.items()}}, targets, binning)]
    name = f"{metrics.get('head', 'head')} on {'+'.join(metrics.get('features') or [])}"
    lines = [f"# {run.name}: {name}", ""]
    images = []
    for j, target in enumerate(targets):
        member = Member(name, truth[:, j], pred[:, j], labels)
        section_lines, _, results = section([member], target, None, binning=binning)
        lines += section_lines
        path = run / f"report_best_{target}.png"
        test_name = next((name for name, entry in (metrics.get("splits") or {}).items()
                          if isinstance(entry, dict) and entry.get("role") == "test"), "test")
        split = f"'{test_name}' (N = {len(truth)} spectra)"
        best_cell([(name, truth[:, j], pred[:, j])], path=path, title=f"{display_name(target)} on {split}",
                  target=target)
        images += [(f"{target}: predicted and residual vs true", path)]
        images += draw(results, [member], target, run, f"report_{target}",
                       title=f"{display_name(target)} residuals of {name} on {split}; bands: 95% bootstrap intervals")
    lines += ["", "# Plots", ""] + [f"![{caption}]({p.name})\n" for caption, p in images]
    files += [p for _, p in images]
    test = _test_entry(metrics)
    if test:
        lines.insert(2, "Test: " + "; ".join(
            f"{t} R2 {m['r2']:.3f}, sigma_MAD {m.get('sigma_mad', float('nan')):.3f} {unit(t)}, bias "
            f"{m['bias']:+.3f} (n={m['n']})" for t, m in test.items()) + "\n")
    files.append(write_text(run / "report.md", "\n".join(lines) + "\n"))
    files.append(write_html(run / "report.html", "\n".join(lines) + "\n", run, run_header(run, metrics, truth)))
    return files


def run_header(run: Path, metrics: dict[str, Any], truth: Any) -> dict[str, Any]:
    """report.html's header for a run folder: the command that made the run, featcache's version, the date and
    the data sizes of its splits."""
    from datetime import UTC, datetime

    from .._version import __version__

    sizes = [f"{entry.get('role', split)} '{split}' {entry.get('n_spectra', entry.get('n'))}"
             for split, entry in (metrics.get("splits") or {}).items() if isinstance(entry, dict)]
    return {"title": f"featcache run {run.name}", "command": f"`{metrics.get('command')}`" if metrics.get("command")
            else None, "version": __version__, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "data": (", ".join(sizes) + " spectra") if sizes else f"test {len(truth)} spectra"}


def _test_entry(metrics: dict[str, Any]) -> dict[str, Any]:
    for entry in (metrics.get("splits") or {}).values():
        if isinstance(entry, dict) and entry.get("role") == "test":
            return entry.get("targets") or {}
    return {}


def report_compare(folder: Path, binning: Binning | None = None) -> list[Path]:
    """The comparison again from its cells (none fitted): compare.md/.csv/.json, plots, report.md."""
    from .comparison import compare

    summary = read_summary(folder)
    request = summary.get("request") or {}
    cells = summary.get("cells") or []
    caches = [(c["name"], c["path"]) for c in summary["caches"]]
    recipe = TrainRecipe(**summary["recipe"])
    splits = summary["splits"]
    from .fullspec import HEAD as FULL_SPECTRUM_HEAD

    heads = [h for h in summary["heads"] if h != FULL_SPECTRUM_HEAD]  # the baseline's column is not a head
    result = compare(caches, summary["targets"], heads=heads,
                     layers=request.get("layers") or sorted({c["layer"] for c in cells
                                                                       if c["kind"] not in ("run", "full_spectrum")}),
                     pools=request.get("pools"), seeds=summary["seeds"], recipe=recipe, hidden=summary["hidden"],
                     dropout=summary["dropout"], alphas=summary["alphas"], runs=[r["path"] for r in summary["runs"]],
                     out=folder, baselines=request.get("baselines", True), device=request.get("device", "auto"),
                     train_split=splits["train"], val_split=splits["val"], test_split=splits["test"],
                     n_boot=summary["n_boot"], show_progress=False, fit=False, binning=binning,
                     train_sizes=request.get("train_sizes") or (), folds=request.get("folds") or 0,
                     subset_seed=request.get("subset_seed") or 0, sweep_values=request.get("sweep") or None,
                     full_spectrum=bool(request.get("full_spectrum")), cannon_order=request.get("cannon_order", 2),
                     cannon_cells=request.get("cannon_cells", "auto"),
                     command=f"featcache report {folder} (re-drawn from the cells of a comparison)")
    return result.files
