"""compare.md and report.md: the table per target, the best cell, the data and caches, then the plots."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError
from ..common.files import write_text
from ..heads.recipe import TrainRecipe
from ..heads.registry import head_info
from .rows import BOOT_SEED, CI_LEVEL, RunRows, run_split
from .sources import Source


def source_info(src: Source, splits: list[str]) -> dict[str, Any]:
    sizes = {split: {"spectra": src.cache.n_spectra(split), "rows": src.cache.n_rows(split)} for split in splits}
    return {"name": src.name, "path": str(src.path), "fingerprint": src.cache.fingerprint,
            "encoder": src.cache.metadata.encoder_source, "sizes": sizes}


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _test_text(row: Mapping[str, Any]) -> str:
    spread = f" ± {_fmt(row['test_r2_std'])}" if row["seeds"] > 1 and math.isfinite(row["test_r2_std"]) else ""
    return f"{_fmt(row['test_r2'])}{spread} [{_fmt(row['test_r2_lo'])}, {_fmt(row['test_r2_hi'])}]"


def _val_text(row: Mapping[str, Any]) -> str:
    spread = f" ± {_fmt(row['val_r2_std'])}" if row["seeds"] > 1 and math.isfinite(row["val_r2_std"]) else ""
    return f"{_fmt(row['val_r2'])}{spread}"


def cell_label(row: Mapping[str, Any]) -> str:
    feature = f"{row['layer']}/{row['pool']}" if row["pool"] else str(row["layer"])
    return f"{row['head']} on {row['encoder']} {feature}"


def markdown_table(table: Any, target: str, heads: list[str]) -> str:
    """Rows (encoder, layer, pooling, width); per head: test R2 [95% CI] and validation R2; the best in bold."""
    sub = table[table["target"] == target]
    header = ["encoder", "layer", "pooling", "D"]
    for head in heads:
        header += [f"{head} test R2 [95% CI]", f"{head} val R2"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (2 * len(heads))) + "|"]
    row_keys = list(dict.fromkeys(zip(sub["encoder"], sub["layer"], sub["pool"], sub["width"], strict=True)))
    for encoder, layer, pool, width in row_keys:
        cells = sub[(sub["encoder"] == encoder) & (sub["layer"] == layer) & (sub["pool"] == pool)
                    & (sub["width"] == width)]
        texts = [str(encoder), str(layer), str(pool) or "—", str(width) if width >= 0 else "—"]
        for head in heads:
            match = cells[cells["head"] == head]
            if not len(match):
                texts += ["—", "—"]
                continue
            row = match.iloc[0]
            test, val = _test_text(row), _val_text(row)
            if row["best"]:
                test, val = f"**{test}**", f"**{val}**"
            texts += [test, val]
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines)


def _interval_text(row: Mapping[str, Any], name: str) -> str:
    lo, hi = row[f"test_{name}_lo"], row[f"test_{name}_hi"]
    spread = row[f"test_{name}_std"]
    text = _fmt(row[f"test_{name}"])
    if row["seeds"] > 1 and math.isfinite(spread):
        text += f" ± {_fmt(spread)}"
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{_fmt(lo)}, {_fmt(hi)}]"
    return text


def calibration_table(table: Any, target: str) -> list[str]:
    """The uncertainty heads' calibration on test (coverage within 1 and 2 sigma, std(z), mean NLL, each with
    its 95% interval) beside validation NLL; empty when the table has no uncertainty head."""
    if "test_coverage_1sigma" not in table:
        return []
    sub = table[(table["target"] == target) & table["test_coverage_1sigma"].notna()]
    if not len(sub):
        return []
    lines = ["Calibration of the uncertainty heads on test (ideal: 0.683 within 1 sigma, 0.954 within 2 sigma, "
             "std(z) 1 for z = residual / sigma; NLL per spectrum in the target's units, lower is better):", "",
             "| head | encoder | layer | pooling | within 1 sigma [95% CI] | within 2 sigma [95% CI] | "
             "std(z) [95% CI] | test NLL [95% CI] | val NLL |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for _, row in sub.iterrows():
        lines.append(f"| {row['head']} | {row['encoder']} | {row['layer']} | {row['pool'] or '—'} | "
                     + " | ".join(_interval_text(row, n) for n in ("coverage_1sigma", "coverage_2sigma", "z_std",
                                                                   "nll"))
                     + f" | {_fmt(row['val_nll'])} |")
    return [*lines, ""]


def render_markdown(table: Any, targets: list[str], context: dict[str, Any]) -> str:
    """compare.md: a section per target with its table, the best cell, per-encoder bests, data and caches."""
    sources: list[Source] = context["sources"]
    heads: list[str] = context["heads"]
    seeds, n_boot = context["seeds"], context["n_boot"]
    train_split, val_split, test_split = context["splits"]
    recipe: TrainRecipe = context["recipe"]
    lines = ["# featcache compare", ""]
    for target in targets:
        sub = table[table["target"] == target]
        lines += [f"## {target}", "", markdown_table(table, target, heads), ""]
        chosen = sub[sub["best"]]
        if len(chosen):
            row = chosen.iloc[0]
            lines.append(f"Best by validation R2 (bold; test never used to choose): {cell_label(row)} "
                         f"(D={row['width']}): val R2 {_val_text(row)}, test R2 {_test_text(row)}.")
        per_encoder = []
        for encoder in dict.fromkeys(sub["encoder"]):
            enc = sub[(sub["encoder"] == encoder) & sub["val_r2"].notna()]
            if len(enc):
                row = enc.loc[enc["val_r2"].idxmax()]
                per_encoder.append(f"{encoder} {_fmt(row['test_r2'])} ({row['head']}, {row['layer']}/{row['pool']})")
        if len(per_encoder) > 1:
            lines.append("Test R2 of each encoder's best cell by validation R2: " + "; ".join(per_encoder) + ".")
        lines.append("")
        lines += calibration_table(table, target)
    trainable = [h for h in heads if _is_trainable(h) and (table["head"] == h).any()]
    lines.append(f"Test R2: {int(CI_LEVEL * 100)}% percentile bootstrap interval, {n_boot} resamples of the "
                 f"'{test_split}' spectra (draw 0, seed {BOOT_SEED}); validation R2 on '{val_split}' (draw 0) "
                 "chooses alpha / epochs and the bold cell.")
    if trainable:
        seed_text = (f"mean ± std over seeds {recipe.seed}..{recipe.seed + seeds - 1}, interval of that mean "
                     "(each resample scores every seed)" if seeds > 1 else f"seed {recipe.seed}")
        lines.append(f"{', '.join(trainable)}: {seed_text}; recipe lr {recipe.lr:g}, batch {recipe.batch_size}, "
                     f"at most {recipe.max_epochs} epochs, patience {recipe.patience}. Each target has its own head.")
    sizes = [_sizes_text(src, train_split, val_split, test_split) for src in sources]
    if len(set(sizes)) == 1:
        lines.append(f"Data: {sizes[0]}.")
    worlds = data_worlds(sources)
    if worlds:
        lines.append(f"Synthetic spectra: written by {', '.join(worlds)} (a synthetic world, not observed stars; "
                     "data/README.md says what that generator's physics is).")
    lines.append("")
    lines.append("Caches:")
    for src, size in zip(sources, sizes, strict=True):
        extra = f"; {size}" if len(set(sizes)) > 1 else ""
        lines.append(f"- `{src.name}`: {src.path}, fingerprint {src.cache.fingerprint}, encoder "
                     f"{src.cache.metadata.encoder_source or '?'}{extra}")
    baseline_names = [s.baseline_name for s in sources if s.baseline_name]
    if baseline_names and (table["kind"] == "baseline").any():
        owners = ", ".join(f"{s.baseline_name} from `{s.name}`" for s in sources if s.baseline_name)
        lines.append(f"- raw input rows (input_flux: noisy flux; input_error: the error vector alone, a leak "
                     f"detector): {owners}")
    if (table["kind"] == "full_spectrum").any():
        lines.append("- full-spectrum fit: a Cannon model (per-pixel polynomial in the labels, rest frame) fitted on "
                     f"'{train_split}''s clean flux; each '{val_split}' and '{test_split}' spectrum's labels, radial "
                     "velocity and flux scale fitted to its noisy flux (draw 0, the encoder's mask) by bounded "
                     "weighted least squares (docs/information-bound.md)")
    for run in context["runs"]:
        origin = (f"cache fingerprint {run.metrics['cache_fingerprint']}" if run.metrics.get("cache_fingerprint")
                  else f"encoder from {run.metrics.get('source_ckpt', '?')}")
        lines.append(f"- run `{run.name}`: {run.path} ({_run_setting(run)}), {_run_sizes(run)}, {origin}")
    return "\n".join(lines) + "\n"


def _run_setting(run: RunRows) -> str:
    """What kind of run a --run row is, in words (fine-tuning: what trained, on which noise, how long)."""
    m = run.metrics
    if m.get("kind") != "finetune":
        return str(m.get("kind") or "fit")
    noise = m.get("noise") or {}
    mode = noise.get("mode", "?") if isinstance(noise, dict) else noise
    trained = "encoder frozen" if m.get("unfreeze") == "none" else f"unfreeze {m.get('unfreeze')}, encoder lr " \
        f"{m.get('encoder_lr'):g}"
    chosen = m.get("chosen") if isinstance(m.get("chosen"), dict) else {}
    epochs = m.get("epochs_run") or chosen.get("epochs_run")
    return f"finetune: {trained}, {mode} noise" + (f", {epochs} epochs" if epochs else "")


def _run_sizes(run: RunRows) -> str:
    parts = []
    for role in ("train", "val", "test"):
        n = run_split(run, role).get("n")
        if n is not None:
            parts.append(f"{role} {int(n)}")
    return (" / ".join(parts) + " spectra") if parts else "sizes unknown"


def _is_trainable(head: str) -> bool:
    try:
        return head_info(head).trainable
    except FeatcacheError:
        return False


def data_worlds(sources: list[Source]) -> list[str]:
    """Which synthetic generators wrote the caches' spectra ("featcache.synth v2"), from each split's file
    identity; empty when none says (the user's own pfsspec files)."""
    found: dict[str, None] = {}
    for src in sources:
        for split in src.cache.splits:
            world = (src.cache.split_info(split).identity or {}).get("generator")
            if world:
                found[str(world)] = None
    return list(found)


def _sizes_text(src: Source, train_split: str, val_split: str, test_split: str) -> str:
    cache = src.cache
    n, rows = cache.n_spectra(train_split), cache.n_rows(train_split)
    train = f"{train_split} {n} spectra" + (f" x {rows // n} draws = {rows} rows" if n and rows != n else "")
    return (f"{train}, {val_split} {cache.n_spectra(val_split)} spectra, "
            f"{test_split} {cache.n_spectra(test_split)} spectra")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def write_plots(table: Any, targets: list[str], heads: list[str], best: dict[str, dict[str, Any]],
                 best_pred: dict[str, list[tuple[str, np.ndarray, np.ndarray]]], out: Path, markdown: str,
                 populations: dict[str, Any] | None = None, study: list[tuple[str, str, Path]] | None = None,
                 calibration: dict[str, tuple[str, np.ndarray, np.ndarray, np.ndarray]] | None = None,
                 header: dict[str, Any] | None = None, test_split: str = "test") -> list[Path]:
    """Heatmaps per head and target, the best cells' predicted/residual vs true (each encoder's best beside the
    raw input's), the calibration of the best uncertainty cell (by validation NLL), the per-population curves
    and Kiel diagram, the probing study's figures (drawn by study.draw_study), report.md and report.html
    (one file, images inlined, under a header: command, version, date, data sizes)."""
    from ..heads.binning import display_name
    from . import plots
    from .populations import draw

    files: list[Path] = []
    images: dict[str, list[tuple[str, Path]]] = {}
    for target in targets:
        sub = table[(table["target"] == target) & ~table["kind"].isin(["run", "full_spectrum"])]
        for head in heads:
            cells = sub[sub["head"] == head]
            if not len(cells):
                continue
            path = out / f"heatmap_{safe_name(head)}_{safe_name(target)}.png"
            n_test = _n_test(cells)
            plots.r2_heatmap(cells, path, title=f"{display_name(target)}: {head} test R2 per layer x pooling on "
                                                f"'{test_split}'{n_test}")
            images.setdefault(target, []).append((f"{head} test R2 heatmap", path))
        if target in best:
            panels = best_pred[target]
            path = out / f"best_{safe_name(target)}.png"
            plots.best_cell(panels, path=path, target=target,
                            title=f"{display_name(target)} on '{test_split}' (N = {len(panels[0][1])} spectra): "
                                  + " vs ".join(label for label, _, _ in panels))
            images.setdefault(target, []).append(("best cells: predicted and residual vs true", path))
        if calibration and target in calibration:
            label, truth, mean, sigma = calibration[target]
            path = out / f"calibration_{safe_name(target)}.png"
            plots.calibration(truth, mean, sigma, path, title=f"{target}: {label}", target=target)
            images.setdefault(target, []).append(("calibration: observed vs expected coverage, residual vs sigma",
                                                  path))
        if populations and target in populations:
            pop = populations[target]
            n = len(pop["members"][0].truth) if pop["members"] else 0
            images.setdefault(target, []).extend(draw(pop["results"], pop["members"], target, out,
                                                      f"population_{safe_name(target)}",
                                                      title=f"{display_name(target)} residuals on '{test_split}' "
                                                            f"(N = {n} spectra); bands: 95% bootstrap intervals",
                                                      bound=pop["data"].get("bound")))
    for target, caption, path in study or []:
        images.setdefault(target, []).append((caption, path))
    for pictures in images.values():
        files += [p for _, p in pictures]
    report = [markdown.rstrip(), "", "# Plots", ""]
    for target, pictures in images.items():
        report += [f"## {target}", ""]
        report += [f"![{caption}]({path.name})\n" for caption, path in pictures]
    write_text(out / "report.md", "\n".join(report) + "\n")
    from .html import write_html

    write_html(out / "report.html", "\n".join(report) + "\n", out, header or {})
    return [*files, out / "report.md", out / "report.html"]


def _n_test(cells: Any) -> str:
    """', N = 1000' when the cells' test rows are counted in the table (n_test), else ''."""
    if "n_test" in cells and cells["n_test"].notna().any():
        return f", N = {int(cells['n_test'].dropna().iloc[0])} spectra"
    return ""


def best_panels(table: Any, predictions: list[tuple[np.ndarray, np.ndarray]], target: str
                ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """What best_<target>.png draws, one row each: every encoder's best cell by validation R2, then the best
    raw-input baseline (or, with no encoder, the best cell of the table): (label, truth, prediction)."""
    sub = table[(table["target"] == target) & table["val_r2"].notna()]
    picks = []
    for encoder in dict.fromkeys(sub.loc[sub["kind"] == "encoder", "encoder"]):
        rows = sub[(sub["kind"] == "encoder") & (sub["encoder"] == encoder)]
        picks.append(int(rows["val_r2"].idxmax()))
    raw = sub[(sub["kind"] == "baseline") & (sub["layer"] == "input_flux")]
    if len(raw):
        picks.append(int(raw["val_r2"].idxmax()))
    if not picks:
        picks = [int(table[(table["target"] == target) & table["best"]].index[0])]
    return [(cell_label(table.loc[i]), *predictions[i]) for i in picks[:4]]  # at most four rows: one figure
