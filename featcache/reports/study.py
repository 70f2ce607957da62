"""The analyses of a probing study, from a comparison's fits: label efficiency, seed and fold stability, R2
against depth, and R2 over pretraining checkpoints.

Every number here is made from fits of the cell store (cells.py) and chosen the way the main table is:
within a cell the alpha or epoch by validation, across cells (the pooling at a depth, the cell of a
checkpoint) by validation R2; test R2 is only reported. Three uncertainties are kept apart, as
torchgeo-bench does: the bootstrap interval (which test spectra were drawn), the seed std (training noise)
and the fold std (which spectra were used to train and validate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..model.taps import tap_depth
from .cells import Fit, Task
from .rows import cell_row

Identity = tuple[str, str, str, str, str, str]  # target, encoder, kind, layer, pool, head


def identity(task: Task) -> Identity:
    return (task.target, task.encoder, task.kind, task.layer, task.pool, task.head)


def _std(values: Sequence[float]) -> float:
    clean = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.std(clean, ddof=1)) if len(clean) > 1 else math.nan


def _mean(values: Sequence[float]) -> float:
    clean = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(clean)) if clean else math.nan


# -- label efficiency ---------------------------------------------------------------------------------------
def label_efficiency(groups: list[list[Task]], done: dict[str, Fit], n_boot: int) -> list[dict[str, Any]]:
    """One row per cell and training size (the full split included, as its largest size): validation and
    test metrics with the test interval, from the fits of `groups` (full-data and subset groups)."""
    rows = []
    for group in groups:
        variant = group[0].variant
        if variant is not None and variant[0] != "size":
            continue
        row, _, _ = cell_row(group, [done[t.key] for t in group], n_boot)
        n_train = variant[1] if variant is not None else group[0].source.cache.n_spectra(group[0].spec.train_split)
        rows.append({"target": row["target"], "encoder": row["encoder"], "kind": row["kind"], "layer": row["layer"],
                     "pool": row["pool"], "head": row["head"], "n_train": int(n_train), "full": variant is None,
                     "seeds": row["seeds"], "val_r2": row["val_r2"], "val_r2_std": row["val_r2_std"],
                     "test_r2": row["test_r2"], "test_r2_lo": row["test_r2_lo"], "test_r2_hi": row["test_r2_hi"],
                     "test_r2_std": row["test_r2_std"], "test_rmse": row["test_rmse"],
                     "test_sigma_mad": row["test_sigma_mad"], "n_test": row["n_test"]})
    rows.sort(key=lambda r: (r["target"], r["encoder"], r["layer"], r["pool"], r["head"], r["n_train"]))
    return rows


def _curve(rows: list[dict[str, Any]], cell: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("target", "encoder", "layer", "pool", "head")
    return sorted((r for r in rows if all(r[k] == cell[k] for k in keys)), key=lambda r: r["n_train"])


def efficiency_sentences(rows: list[dict[str, Any]], table: Any, target: str) -> list[str]:
    """Per encoder: where its best cell's test R2 curve meets the raw-flux baseline's full-data score, and
    where the two curves cross."""
    sub = table[(table["target"] == target) & table["val_r2"].notna()]
    raw = sub[(sub["kind"] == "baseline") & (sub["layer"] == "input_flux")]
    if not len(raw):
        return []
    raw_best = raw.loc[raw["val_r2"].idxmax()]
    raw_curve = _curve(rows, raw_best)
    raw_full = float(raw_best["test_r2"])
    out = []
    for encoder in dict.fromkeys(sub.loc[sub["kind"] == "encoder", "encoder"]):
        enc = sub[(sub["encoder"] == encoder) & (sub["kind"] == "encoder")]
        best = enc.loc[enc["val_r2"].idxmax()]
        curve = _curve(rows, best)
        name = f"{encoder}'s best cell ({best['head']} on {best['layer']}/{best['pool']})"
        reach = next((r for r in curve if r["test_r2"] >= raw_full), None)
        if reach is not None:
            out.append(f"- {name} reaches the raw flux's full-data test R2 ({raw_full:.3f}, {raw_best['head']}, "
                       f"n_train {int(raw_curve[-1]['n_train']) if raw_curve else '?'}) with {reach['n_train']} "
                       f"training spectra (test R2 {reach['test_r2']:.3f} [{reach['test_r2_lo']:.3f}, "
                       f"{reach['test_r2_hi']:.3f}]).")
        else:
            top = max(curve, key=lambda r: r["test_r2"]) if curve else None
            out.append(f"- {name} does not reach the raw flux's full-data test R2 ({raw_full:.3f}) at any size"
                       + (f" (its best: {top['test_r2']:.3f} with {top['n_train']} spectra)." if top else "."))
        by_size = {r["n_train"]: r["test_r2"] for r in raw_curve}
        shared = [(r["n_train"], r["test_r2"] - by_size[r["n_train"]]) for r in curve if r["n_train"] in by_size]
        crossings = [(a, b) for (a, da), (b, db) in zip(shared, shared[1:], strict=False) if da * db < 0]
        if crossings:
            (a, b), ahead = crossings[0], "the encoder" if shared[0][1] > 0 else "the raw flux"
            at = {r["n_train"]: r for r in curve}
            raw_at = {r["n_train"]: r for r in raw_curve}
            overlap = all(at[n]["test_r2_lo"] <= raw_at[n]["test_r2_hi"] and raw_at[n]["test_r2_lo"] <=
                          at[n]["test_r2_hi"] for n in (a, b))
            more = f" ({len(crossings)} crossings in all)" if len(crossings) > 1 else ""
            out.append(f"  Its curve crosses the raw flux's ({raw_best['head']}) between {a} and {b} training "
                       f"spectra{more}: {ahead} is ahead below that"
                       + (" (point estimates: the 95% intervals overlap there)." if overlap else "."))
        elif shared:
            lead = "above" if shared[0][1] > 0 else "below"
            out.append(f"  Its curve stays {lead} the raw flux's ({raw_best['head']}) at every shared size "
                       f"({', '.join(str(n) for n, _ in shared)}).")
    return out


# -- seed and fold stability ------------------------------------------------------------------------------
def fold_stats(groups: list[list[Task]], done: dict[str, Fit]) -> dict[Identity, dict[str, float]]:
    """Per cell: the mean and std over folds of validation R2 (each fold's own held-out spectra) and of the
    test R2 of each fold's model; a fold's value is its mean over seeds."""
    per_cell: dict[Identity, dict[int, list[tuple[float, float]]]] = {}
    for group in groups:
        variant = group[0].variant
        if variant is None or variant[0] != "fold":
            continue
        scores = [(done[t.key][0]["metrics"]["val"]["r2"], done[t.key][0]["metrics"]["test"]["r2"]) for t in group]
        per_cell.setdefault(identity(group[0]), {})[variant[1]] = scores
    out = {}
    for cell, folds in per_cell.items():
        val = [_mean([v for v, _ in folds[k]]) for k in sorted(folds)]
        test = [_mean([t for _, t in folds[k]]) for k in sorted(folds)]
        out[cell] = {"folds": len(folds), "fold_val_r2": _mean(val), "fold_val_r2_std": _std(val),
                     "fold_test_r2": _mean(test), "fold_test_r2_std": _std(test)}
    return out


def stability_table(table: Any, target: str) -> list[str]:
    """The three uncertainties side by side, per cell with folds."""
    sub = table[(table["target"] == target) & table["folds"].notna()] if "folds" in table else table.iloc[0:0]
    if not len(sub):
        return []
    lines = ["| encoder | layer | pooling | head | test R2 [95% bootstrap CI] | seed std | fold val R2 (mean ± std) "
             "| fold test R2 (mean ± std) |", "|---|---|---|---|---:|---:|---:|---:|"]
    for _, row in sub.iterrows():
        seed = f"{row['test_r2_std']:.3f} ({int(row['seeds'])} seeds)" if math.isfinite(row["test_r2_std"]) else "—"
        lines.append(f"| {row['encoder']} | {row['layer']} | {row['pool']} | {row['head']} | {row['test_r2']:.3f} "
                     f"[{row['test_r2_lo']:.3f}, {row['test_r2_hi']:.3f}] | {seed} | {row['fold_val_r2']:.3f} ± "
                     f"{row['fold_val_r2_std']:.3f} | {row['fold_test_r2']:.3f} ± {row['fold_test_r2_std']:.3f} |")
    return lines


# -- depth and checkpoints -------------------------------------------------------------------------------
def _num_layers(source: Any) -> int | None:
    config = dict(source.cache.metadata.encoder or {})
    return int(config["num_layers"]) if "num_layers" in config else None


def depth_rows(table: Any, sources: Sequence[Any], target: str) -> list[dict[str, Any]]:
    """Per encoder, head and depth: the pooling chosen by validation R2 at that depth and its test R2."""
    depth_of = {}
    for src in sources:
        n = _num_layers(src)
        if n is not None:
            depth_of[src.name] = n
    sub = table[(table["target"] == target) & (table["kind"] == "encoder") & table["val_r2"].notna()]
    rows = []
    for (encoder, head), cells in sub.groupby(["encoder", "head"], sort=False):
        if encoder not in depth_of:
            continue
        cells = cells.assign(depth=[tap_depth(str(layer), depth_of[encoder]) for layer in cells["layer"]])
        cells = cells[cells["depth"].notna()]
        for depth, at in cells.groupby("depth"):
            best = at.loc[at["val_r2"].idxmax()]
            rows.append({"target": target, "encoder": encoder, "head": head, "depth": int(depth),
                         "layer": best["layer"], "pool": best["pool"], "val_r2": float(best["val_r2"]),
                         "test_r2": float(best["test_r2"]), "test_r2_lo": float(best["test_r2_lo"]),
                         "test_r2_hi": float(best["test_r2_hi"])})
    return rows


def _random_init(source: Any) -> bool:
    encoder = source.cache.metadata.encoder_parts
    return encoder.get("random_init_seed") is not None


def depth_table(rows: list[dict[str, Any]]) -> list[str]:
    """The depth rows as markdown: one line per depth, one column per (encoder, head)."""
    series = list(dict.fromkeys((r["encoder"], r["head"]) for r in rows))
    at = {(r["encoder"], r["head"], r["depth"]): r for r in rows}
    lines = ["| depth | " + " | ".join(f"{e} {h}: test R2 [95% CI] (pool)" for e, h in series) + " |",
             "|---:|" + "---:|" * len(series)]
    for depth in sorted({r["depth"] for r in rows}):
        cells = []
        for e, h in series:
            r = at.get((e, h, depth))
            cells.append(f"{r['test_r2']:.3f} [{r['test_r2_lo']:.3f}, {r['test_r2_hi']:.3f}] ({r['pool']})"
                         if r else "")
        lines.append(f"| {depth} | " + " | ".join(cells) + " |")
    return lines


def checkpoint_rows(table: Any, sources: Sequence[Any], target: str) -> list[dict[str, Any]]:
    """Per head and each cache of one architecture (several checkpoints of a pretraining, in --cache order):
    the cell chosen by validation R2 and its test R2. Empty unless two or more caches share an architecture."""
    tags: dict[str, list[str]] = {}
    for src in sources:
        if _random_init(src):  # a random-init copy shares the tag but is no point of the pretraining
            continue
        tag = src.cache.metadata.encoder_tag
        if tag:
            tags.setdefault(str(tag), []).append(src.name)
    names = next((v for v in tags.values() if len(v) > 1), None)
    if not names:
        return []
    sub = table[(table["target"] == target) & (table["kind"] == "encoder") & table["val_r2"].notna()]
    rows = []
    for order, name in enumerate(names):
        for head, cells in sub[sub["encoder"] == name].groupby("head", sort=False):
            best = cells.loc[cells["val_r2"].idxmax()]
            rows.append({"target": target, "checkpoint": name, "order": order, "head": head, "layer": best["layer"],
                         "pool": best["pool"], "val_r2": float(best["val_r2"]), "test_r2": float(best["test_r2"]),
                         "test_r2_lo": float(best["test_r2_lo"]), "test_r2_hi": float(best["test_r2_hi"])})
    return rows


def study_sections(table: Any, efficiency: list[dict[str, Any]], sources: Sequence[Any], targets: list[str],
                   folds: int, train_sizes: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per target: the markdown lines and the data of each study the comparison ran."""
    out = {}
    for target in targets:
        lines: list[str] = []
        data: dict[str, Any] = {}
        if train_sizes:
            rows = [r for r in efficiency if r["target"] == target]
            data["label_efficiency"] = rows
            lines += ["### Label efficiency", "", f"Every cell refitted on nested random subsets of the train "
                      f"spectra ({', '.join(str(n) for n in train_sizes)}, the same spectra for every cell; "
                      "label_efficiency.csv), validation and test splits unchanged.", ""]
            lines += efficiency_sentences(rows, table, target) + [""]
        if folds:
            lines += ["### Stability: test sampling, training seed, data split", "",
                      f"{folds}-fold over train + validation spectra (the test split untouched): each fold's model "
                      "is chosen on its own held-out fold and scored on the one test split.", ""]
            lines += stability_table(table, target) + [""]
        depth = depth_rows(table, sources, target)
        if len({r["depth"] for r in depth}) > 2:  # a curve: three blocks or more (two taps are the table's)
            data["depth"] = depth
            lines += ["### Depth", "", "Test R2 of the pooling chosen by validation R2 at each depth "
                      "(enc_pre_latent = enc_{N-1}, enc_last = enc_N).", "", *depth_table(depth), ""]
        checkpoints = checkpoint_rows(table, sources, target)
        if checkpoints:
            data["checkpoints"] = checkpoints
            lines += ["### Over pretraining", "", "Test R2 of each checkpoint's cell chosen by validation R2: "
                      + "; ".join(f"{r['checkpoint']} {r['head']} {r['test_r2']:.3f} [{r['test_r2_lo']:.3f}, "
                                  f"{r['test_r2_hi']:.3f}]" for r in checkpoints) + ".", ""]
        if lines:
            out[target] = {"lines": [f"## Probing study: {target}", "", *lines], "data": data}
    return out


def draw_study(sections: dict[str, dict[str, Any]], out: Path) -> list[tuple[str, str, Path]]:
    """The study's PNGs: (target, caption, path) for label efficiency, depth and checkpoints."""
    from . import plots
    from .render import safe_name

    images = []
    for target, section in sections.items():
        data, stem = section["data"], safe_name(target)
        if data.get("label_efficiency"):
            path = out / f"label_efficiency_{stem}.png"
            plots.label_efficiency(data["label_efficiency"], path, target)
            images.append((target, "test R2 and sigma_MAD vs number of training spectra", path))
        if data.get("depth"):
            path = out / f"depth_{stem}.png"
            plots.series_plot(data["depth"], "depth", "encoder depth (block)", path, f"{target}: test R2 vs depth",
                              group=("encoder", "head"))
            images.append((target, "test R2 vs encoder depth", path))
        if data.get("checkpoints"):
            path = out / f"checkpoints_{stem}.png"
            plots.series_plot(data["checkpoints"], "order", "checkpoint", path,
                              f"{target}: test R2 over pretraining", group=("head",),
                              ticks=list(dict.fromkeys(r["checkpoint"] for r in data["checkpoints"])))
            images.append((target, "test R2 over pretraining checkpoints", path))
    return images
