"""`featcache compare` in Python: the layer x pooling x head table, with baselines, intervals and plots.

Why this shape:

* A *fit* (one cache, one feature, one head, one target, one seed) is the unit of work and of storage (the
  cell store, cells.py): a re-run refits nothing, a changed recipe refits only the cells it affects.
* A *cell* of the table (encoder, layer, pooling, head, target) aggregates its seeds (rows.py). Each target
  gets its own head, as in the reference experiment. Ridge is deterministic: one fit whatever --seeds says.
* The best cell of each target, in bold, is the one with the highest validation R2 over the whole table
  (encoder rows, baselines and --run rows alike); test R2 never takes part in the choice.
* Baselines (sources.py): raw-input rows from the caches' pseudo-layers, a random-init cache as another
  --cache, and --run rows from fit / finetune run directories.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError, choices_message
from ..common.files import atomic_write, check_not_inside_store, write_json, write_text
from ..common.progress import progress, status
from ..common.serialise import plain
from ..heads.binning import Binning
from ..heads.fit import FitSpec, check_roles
from ..heads.recipe import TrainRecipe
from ..heads.registry import head_info
from ..heads.selection import RowSelection
from ..model.taps import PSEUDO_LAYERS
from . import sweep
from .bounds import efficiency_columns
from .cells import CellStore, Fit, Task, cell_key, earlier_keys, run_fits
from .fullspec import full_spectrum_rows
from .options import CacheArgs, CompareOptions, check_shard
from .populations import population_sections
from .render import best_panels, cell_label, render_markdown, source_info, write_plots
from .rows import BOOT_SEED, CI_LEVEL, RunRows, cell_row, read_run, run_row, run_targets
from .sources import Source, open_sources
from .study import draw_study, fold_stats, identity, label_efficiency, study_sections


@dataclass
class CompareResult:
    """The table (one row per cell: target x encoder x layer x pooling x head), the best cells, the files."""

    table: Any  # pandas.DataFrame; None for a --shard run (its fits only, no table)
    best: dict[str, dict[str, Any]]
    markdown: str
    out: Path
    fitted: int
    reused: int
    files: list[Path] = field(default_factory=list)


@dataclass
class CompareRequest:
    """What to compare, validated: the sources, the runs, the grid's settings."""

    sources: list[Source]
    runs: list[RunRows]
    targets: list[str]
    heads: list[str]
    seeds: int
    recipe: TrainRecipe
    splits: list[str]
    n_boot: int
    train_sizes: list[int] = field(default_factory=list)  # nested subsets of the train spectra
    folds: int = 0  # K-fold over train + val
    subset_seed: int = 0  # draws the subsets and the folds
    sweep: dict[str, list[float]] = field(default_factory=dict)  # swept hyper-parameters (sweep.py)


def _check_labels(sources: list[Source], targets: list[str], splits: list[str]) -> None:
    if not targets:
        raise FeatcacheError("give at least one --target")
    for src in sources:
        check_roles(src.cache, *splits)
        for split in splits:
            if split not in src.cache.splits:
                raise FeatcacheError(f"{src.path}: no split '{split}'; the cache has: {', '.join(src.cache.splits)}")
            names = src.cache.label_names(split)
            for target in targets:
                if target not in names:
                    raise FeatcacheError(f"{src.path}: unknown label '{target}' in split '{split}'; available: "
                                         + (", ".join(names) or "(none)"))


def _grid(sources: list[Source], layers: Sequence[str] | None, pools: Sequence[str] | None, baselines: bool,
          train_split: str) -> list[tuple[Source, str, str, str, str]]:
    """(source, row label, kind, layer, pool) in table order: encoder rows per cache, then raw-input rows."""
    all_layers: list[str] = []
    for src in sources:
        all_layers += [layer for layer in src.cache.layers(train_split) if layer not in all_layers]
    for layer in layers or []:
        if layer not in all_layers:
            raise FeatcacheError(choices_message("layer", layer, all_layers))

    def wanted_layer(layer: str) -> bool:
        if layer in PSEUDO_LAYERS:  # --layer narrows encoder layers; baselines stay unless named or turned off
            return layer in (layers or []) or (baselines and not any(x in PSEUDO_LAYERS for x in layers or []))
        return not layers or layer in layers

    all_pools: list[str] = []
    for src in sources:
        for layer in src.cache.layers(train_split):
            if wanted_layer(layer):
                all_pools += [p for p in src.cache.pools(train_split, layer) if p not in all_pools]
    for pool in pools or []:
        if pool not in all_pools:
            raise FeatcacheError(choices_message("pooling", pool, all_pools))
    encoder_rows, baseline_rows = [], []
    for src in sources:
        for layer in src.cache.layers(train_split):
            if not wanted_layer(layer):
                continue
            pseudo = layer in PSEUDO_LAYERS
            if pseudo and src.baseline_name is None:
                continue
            for pool in src.cache.pools(train_split, layer):
                if pools and pool not in pools:
                    continue
                if pseudo:
                    baseline_rows.append((src, str(src.baseline_name), "baseline", layer, pool))
                else:
                    encoder_rows.append((src, src.name, "encoder", layer, pool))
    rows = encoder_rows + baseline_rows
    if not rows:
        raise FeatcacheError("nothing to compare: no cache has the requested layers and poolings")
    return rows


def _check_out(out: Path) -> None:
    """OUT is a comparison's folder (re-run into it to resume): never a file, never a fit or finetune run."""
    if out.exists() and not out.is_dir():
        raise FeatcacheError(f"--out {out}: is a file, expected a report directory")
    check_not_inside_store(out, folder=True)
    if (out / "head.pt").exists() or (out / "last.pt").exists():
        raise FeatcacheError(f"--out {out}: holds a fit or finetune run; give compare its own --out (it writes "
                             "compare.md, compare.csv, compare.json, plots and cells/ there)")


def _read_runs(runs: Sequence[str | Path], targets: list[str]) -> list[RunRows]:
    """--run directories, each under a unique name, each predicting one of the targets."""
    run_dirs = [read_run(r) for r in runs]
    seen: set[str] = set()
    for run in run_dirs:
        base, i = run.name, 2
        while run.name in seen:
            run.name, i = f"{base}-{i}", i + 1
        seen.add(run.name)
        if not set(run_targets(run)) & set(targets):
            raise FeatcacheError(f"--run {run.path}: predicts {', '.join(run_targets(run)) or 'nothing'}, "
                                 f"none of the targets {', '.join(targets)}")
    return run_dirs


def _tasks(request: CompareRequest, grid: list[tuple[Source, str, str, str, str]], spec: dict[str, Any]
           ) -> list[list[Task]]:
    """One group of fits per table cell (one fit per seed for trainable heads, one for ridge), then the same
    per training size and per fold of the probing study (Task.variant)."""
    train_split = request.splits[0]
    variants: list[tuple[tuple[str, int] | None, RowSelection | None]] = [(None, None)]
    variants += [(("size", n), RowSelection(train_size=n, subset_seed=request.subset_seed))
                 for n in request.train_sizes]
    variants += [(("fold", k), RowSelection(fold=k, n_folds=request.folds, fold_seed=request.subset_seed))
                 for k in range(request.folds)]
    swept = sweep.settings(request.sweep)
    cells: list[list[Task]] = []
    for target in request.targets:
        for src, label, kind, layer, pool in grid:
            for split in request.splits:
                src.cache.feature_array(split, layer, pool)  # missing or incomplete: one-line error up front
            width = int(src.cache.feature_info(train_split, layer, pool).get("D") or
                        src.cache.feature_array(train_split, layer, pool).shape[1])
            for head in request.heads:
                if head_info(head).needs_map and pool != "none":
                    continue  # attn pools the map itself: only the --pool none cells (the table shows —)
                trainable = head_info(head).trainable
                for (variant, selection), setting in itertools.product(variants, swept if trainable else [()]):
                    head_spec, head_recipe = sweep.apply(spec, request.recipe, setting)
                    group = []
                    for i in range(request.seeds if trainable else 1):
                        seed = head_recipe.seed + i if trainable else None
                        recipe = replace(head_recipe, seed=seed) if seed is not None else head_recipe
                        fit = FitSpec(features=[(layer, pool)], targets=[target], head=head, recipe=recipe,
                                      selection=selection, **head_spec)
                        key = cell_key(src.cache.fingerprint, fit)
                        group.append(Task(src, label, kind, layer, pool, width, head, target, seed, fit, key,
                                          variant, setting))
                    cells.append(group)
    return cells


def _fill_cells(cells: list[list[Task]], store: CellStore, jobs: int, show_progress: bool, fit: bool = True,
                batched: bool = True, threads: int | None = None) -> tuple[dict[str, Fit], int, int]:
    """Every fit of the table, reused from the store or made now. Returns (fits by key, fitted, reused)."""
    done: dict[str, Fit] = {}
    todo: list[Task] = []
    queued: set[str] = set()
    older = 0
    for task in (t for group in cells for t in group):
        if task.key in done or task.key in queued:
            continue  # the same fit twice (e.g. one cache under two names) is made once
        loaded = store.load(task.key)
        if loaded is None and not fit:  # drawing only: a cell an earlier featcache made will do
            for key in earlier_keys(task.source.cache.fingerprint, task.spec):
                if (loaded := store.load(key)) is not None:
                    older += 1
                    break
        if loaded is None:
            todo.append(task)
            queued.add(task.key)
        else:
            done[task.key] = loaded
    reused = len(done)
    if older and not todo:
        status(f"report: {older} of the {reused} cells were made by an earlier featcache (an earlier fit code "
               "version); they are drawn as they are, and featcache compare would refit them")
    if todo and not fit:
        raise FeatcacheError(f"{store.dir}: {len(todo)} of the comparison's fits are not there (the first: "
                             f"{todo[0].head} on {todo[0].encoder} {todo[0].layer}/{todo[0].pool}); featcache report "
                             "draws finished comparisons only: run featcache compare to fit them")
    todo.sort(key=lambda t: head_info(t.head).trainable)  # closed-form heads first: a partial run has their table
    if todo:
        status(f"compare: {len(todo)} fits to make, {reused} reused from {store.dir}")
    bar = progress(total=len(todo), desc="compare", unit="fit") if show_progress else None

    def save(task: Task, record: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        store.save(task.key, record, arrays)
        done[task.key] = (record, arrays)

    try:
        run_fits(todo, jobs, save, bar, batched=batched, threads=threads)
    finally:
        if bar is not None:
            bar.close()
    return done, len(todo), reused


def _table(request: CompareRequest, cells: list[list[Task]], done: dict[str, Fit], extra: list[Any] = ()  # type: ignore[assignment]
           ) -> tuple[Any, dict[str, dict[str, Any]], list[tuple[np.ndarray, np.ndarray]], dict[int, Any]]:
    """The table (cells, then --run rows, then the full-spectrum baseline's rows `extra`), with each target's
    best row by validation R2 marked; also, per row
    of an uncertainty head, (truth, mean, sigma) of its test rows (the first seed's: the calibration plot)."""
    import pandas as pd

    rows, predictions, sigmas = [], [], {}
    folds = fold_stats(cells, done)
    for group in (g for g in cells if g[0].variant is None):
        fits = [done[t.key] for t in group]
        row, truth, pred = cell_row(group, fits, request.n_boot)
        row.update(folds.get(identity(group[0]), {}))
        if "test_sigma" in fits[0][1]:
            sigmas[len(rows)] = (truth, fits[0][1]["test_pred"], fits[0][1]["test_sigma"])
        if request.sweep:
            row["setting"] = sweep.describe(group[0].setting)
        rows.append(row)
        predictions.append((truth, pred))
    for run in request.runs:
        for target in request.targets:
            if target in run_targets(run):
                row, truth, pred = run_row(run, target, request.n_boot)
                if "test_sigma" in run.arrays:
                    j = run_targets(run).index(target)
                    sigma = np.asarray(run.arrays["test_sigma"]).reshape(len(truth), -1)[:, j]
                    sigmas[len(rows)] = (truth, pred, sigma)
                rows.append(row)
                predictions.append((truth, pred))
    for row, truth, pred in extra:  # the full-spectrum baseline (fullspec.py)
        rows.append(row)
        predictions.append((truth, pred))
    table = pd.DataFrame(rows)
    table["best"] = False
    best: dict[str, dict[str, Any]] = {}
    for target in request.targets:
        sub = table[(table["target"] == target) & table["val_r2"].notna()]
        if len(sub):
            index = int(sub["val_r2"].idxmax())  # first of equals, in table order
            table.loc[index, "best"] = True
            best[target] = plain(table.loc[index].to_dict(), finite_only=True)
    return table, best, predictions, sigmas


def _calibration_cells(table: Any, targets: list[str], sigmas: dict[int, Any]
                       ) -> dict[str, tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Per target, the uncertainty cell with the lowest validation NLL (test never chooses) and its arrays."""
    out = {}
    for target in targets:
        candidates = [i for i in sigmas if table.loc[i, "target"] == target and np.isfinite(table.loc[i, "val_nll"])]
        if candidates:
            i = min(candidates, key=lambda k: float(table.loc[k, "val_nll"]))
            out[target] = (f"{cell_label(table.loc[i])} (lowest validation NLL)", *sigmas[i])
    return out


def compare_into(caches: CacheArgs, targets: Sequence[str], **options: Any) -> CompareResult:
    """compare() without its clean-up on failure (run_compare on CompareOptions(caches, targets, **options))."""
    return run_compare(CompareOptions(caches, targets, **options))


def run_compare(opts: CompareOptions) -> CompareResult:
    """compare() on an options object (validated here, once)."""
    opts.validate()
    out, splits = Path(opts.out), opts.splits
    _check_out(out)
    run_dirs = _read_runs(opts.runs, list(opts.targets))
    sources = open_sources(opts.caches, opts.train_split)
    _check_labels(sources, list(opts.targets), splits)
    for src in sources:
        opts.binning.check_axes([*src.cache.label_names(opts.test_split), *opts.targets])
    sizes = _check_study(sources, opts.train_split, opts.val_split, opts.train_sizes, opts.folds)
    swept = sweep.check_sweep(opts.sweep_values)
    request = CompareRequest(sources, run_dirs, list(opts.targets), list(opts.heads), opts.seeds, opts.recipe,
                             splits, opts.n_boot, sizes, opts.folds, opts.subset_seed, swept)
    spec = dict(hidden=opts.hidden, dropout=opts.dropout, alphas=opts.alphas, train_split=opts.train_split,
                val_split=opts.val_split, test_split=opts.test_split, device=opts.device,
                options=opts.resolved_heads, max_memory=opts.max_memory)
    cells = _tasks(request, _grid(sources, opts.layers, opts.pools, opts.baselines, opts.train_split), spec)
    store = CellStore(out)
    if opts.shard is not None:
        share = shard_tasks(cells, *opts.shard)
        _, fitted, reused = _fill_cells([[t] for t in share], store, opts.jobs, opts.show_progress, opts.fit,
                                        opts.batched, opts.threads)
        total = len({t.key for group in cells for t in group})
        note = (f"compare shard {opts.shard[0]}/{opts.shard[1]}: {len(share)} of {total} fits ({fitted} made, "
                f"{reused} reused) in {out / 'cells'}; run compare without --shard once every shard is done to write "
                "the table")
        return CompareResult(None, {}, note, out, fitted, reused, [])
    done, fitted, reused = _fill_cells(cells, store, opts.jobs, opts.show_progress, opts.fit, opts.batched,
                                       opts.threads)
    cells, sweep_rows = sweep.choose(cells, done)  # one setting per cell, chosen on validation
    extra = full_spectrum_rows(sources, list(opts.targets), splits, store, fit=opts.fit, n_boot=opts.n_boot,
                               order=opts.cannon_order, cells=opts.cannon_cells,
                               show_progress=opts.show_progress) if opts.full_spectrum else []
    table, best, predictions, sigmas = _table(request, cells, done, extra)
    efficiency_columns(table, predictions, {str(s.path): s.cache for s in sources}, list(opts.targets),
                       opts.test_split, opts.n_boot)
    settings = {"layers": list(opts.layers) if opts.layers else None,
                "pools": list(opts.pools) if opts.pools else None, "baselines": opts.baselines,
                "device": opts.device, "binning": opts.binning.describe(), "train_sizes": sizes, "folds": opts.folds,
                "subset_seed": opts.subset_seed, "hidden": opts.hidden, "dropout": opts.dropout,
                "alphas": opts.alphas, "sweep": swept, **opts.resolved_heads, "full_spectrum": bool(opts.full_spectrum),
                "cannon_order": opts.cannon_order, "cannon_cells": opts.cannon_cells}
    efficiency = label_efficiency(cells, done, opts.n_boot) if sizes else []
    return _write_outputs(request, table, best, predictions, efficiency, out, settings, opts.binning, opts.plots,
                          (fitted, reused), sweep_rows, _calibration_cells(table, list(opts.targets), sigmas),
                          opts.command)


def compare(caches: CacheArgs, targets: Sequence[str], **options: Any) -> CompareResult:
    """Fill every (encoder, layer, pooling) x head cell for each target, reusing finished fits in OUT/cells;
    write compare.md/.csv/.json, the plots and report.md into OUT. The keywords are CompareOptions' fields
    (reports.options: heads, layers, pools, seeds, recipe, hidden, dropout, alphas, runs, out, baselines, ...).
    MLP heads use seeds recipe.seed + 0..N-1.

    jobs > 1 makes the fits in that many worker processes, the costliest units first. Every process fitting
    heads takes `threads` torch and BLAS threads (None: one, common.device.WORKLOAD_THREADS: the fastest
    setting for small heads, by far on a busy machine), so jobs does not change the numbers; another
    `threads` can change an MLP cell's slightly (the thread count orders float32 sums, and training amplifies
    such differences a little); ridge cells agree to about 1e-12. fit=False
    only draws: every cell must be in OUT/cells already (featcache report). binning: the per-population
    section's bin edges and giant / dwarf split (quantile edges and log_g 3.5 by default).

    The probing study (study.py): train_sizes refits every cell on nested random subsets of the train
    spectra (label_efficiency.csv); folds=K refits it on each of K folds over train + val (the test split
    untouched) for the fold std beside the seed std and the bootstrap interval; subset_seed draws both.

    shard=(i, n) fits only share i of n of the fits (0 <= i < n; a Slurm job array's tasks into one shared
    OUT/cells) and writes no table: a later compare without shard assembles it from the cells, fitting
    nothing that a shard made.

    sweep_values={"hidden": [128, 256, 512], "lr": [1e-3, 3e-4]} fits every trainable cell once per setting
    (hidden, dropout, lr, weight_decay) and keeps per cell the one with the best validation R2 (sweep.py).

    batched (the default) trains the MLP fits that share their rows (seeds, settings, features of one cache)
    in one pass of stacked heads (heads.batched; each fit's numbers are its own, up to float32 summation
    order); with jobs > 1 a pass is cut into passes of about equal cost, one per worker (cells.plan_units).
    On the reference grid's 32 fits, 2 CPU cores: batched with jobs 2 is the fastest setting (the README has
    the figures).

    head_options: the heads' own options by name (heads.registry.head_option_schema: knn_ks, knn_weights,
    attn_heads, ...); each head takes its own, a missing one is its default.

    max_memory (bytes, '1GB', '25%'; None: half the available RAM): an MLP cell whose features would exceed
    it is trained alone, its train rows streamed from the cache (heads.streaming), never batched.

    full_spectrum adds the field's baseline (reports.fullspec): every val and test spectrum's labels, radial
    velocity and flux scale fitted by weighted least squares to a Cannon model (cannon_order, cannon_cells) of the
    train split, one row per target. With bounds in the caches (featcache bounds), the per-population section
    shows each cell's scatter beside the bound and the fraction of the information it recovers.

    A comparison that fails before it stored any fit leaves no folder behind (stored fits stay; a rerun resumes).
    Returns a CompareResult: the table (one row per cell), compare.md's text, the fits made and reused.

    Example, after `make demo`:

        import featcache
        result = featcache.compare({"demo": "reports/demo-standard/cache.zarr"}, ["log_g"],
                                   heads=["ridge", "mlp_1"], layers=["enc_3"], out="reports/x")
        result.table[["layer", "pool", "head", "test_r2", "test_r2_lo", "test_r2_hi", "val_r2"]]
    """
    out = Path(options.get("out", "reports/compare"))
    created = not out.exists()
    try:
        return compare_into(caches, targets, **options)
    except BaseException:  # the docstring's promise: no folder without a stored fit
        if created and out.is_dir() and not any((out / "cells").glob("*.json")):
            shutil.rmtree(out, ignore_errors=True)
        raise


def shard_tasks(cells: list[list[Task]], i: int, n: int) -> list[Task]:
    """Share i of n of the comparison's distinct fits. Every shard sees the same grid, so dealing
    the fits sorted by expected cost (trainable first, widest first; the key breaks ties) round-robin gives
    each shard about the same work and every fit to exactly one shard, whichever of them are done already."""
    i, n = check_shard(i, n)
    unique = list({t.key: t for group in cells for t in group}.values())
    unique.sort(key=lambda t: (not head_info(t.head).trainable, -t.width, t.key))
    return unique[i::n]


def _check_study(sources: list[Source], train_split: str, val_split: str, train_sizes: Sequence[int],
                 folds: int) -> list[int]:
    """The training sizes (sorted, each below every cache's train spectra) and the fold count, checked."""
    sizes = sorted({int(n) for n in train_sizes})
    if sizes and folds:
        raise FeatcacheError("--train-sizes and --folds are separate studies: give one of them per compare")
    if folds and folds < 2:
        raise FeatcacheError(f"--folds {folds}: K-fold needs at least 2 folds")
    for src in sources:
        n = src.cache.n_spectra(train_split)
        for size in sizes:
            if not 1 <= size <= n:
                raise FeatcacheError(f"--train-sizes {size}: {src.path} has {n} train spectra (sizes must be "
                                     f"1..{n}; the full split is always fitted)")
        if folds and folds > n + src.cache.n_spectra(val_split):
            raise FeatcacheError(f"--folds {folds}: {src.path} has only {n + src.cache.n_spectra(val_split)} "
                                 "train + validation spectra")
    return [n for n in sizes if all(n < s.cache.n_spectra(train_split) for s in sources)]


def _write_outputs(request: CompareRequest, table: Any, best: dict[str, dict[str, Any]],
                   predictions: list[tuple[np.ndarray, np.ndarray]], efficiency: list[dict[str, Any]], out: Path,
                   settings: dict[str, Any], binning: Binning, plots: bool, counts: tuple[int, int],
                   sweep_rows: list[dict[str, Any]], calibration: dict[str, Any] | None = None,
                   command: str | None = None) -> CompareResult:
    """compare.md/.csv/.json, label_efficiency.csv, the plots and report.md."""
    import pandas as pd

    sources, targets, splits = request.sources, request.targets, request.splits
    best_pred = {t: best_panels(table, predictions, t) for t in best}
    pops = population_sections(table, predictions, sources, targets, splits[2], request.n_boot, binning)
    study = study_sections(table, efficiency, sources, targets, request.folds, request.train_sizes)
    all_heads = request.heads + [h for h in dict.fromkeys(table["head"]) if h not in request.heads]
    markdown = render_markdown(table, targets, {"sources": sources, "runs": request.runs, "heads": all_heads,
                                                "seeds": request.seeds, "n_boot": request.n_boot, "splits": splits,
                                                "recipe": request.recipe})
    if pops:
        markdown += "\n## Per population\n\n" + "\n".join(line for p in pops.values() for line in p["lines"])
    if study:
        markdown += "\n" + "\n".join(line for s in study.values() for line in s["lines"])
    if sweep_rows:
        markdown += "\n" + "\n".join(sweep.summary_lines(sweep_rows, request.sweep))
    out.mkdir(parents=True, exist_ok=True)
    files = [write_text(out / "compare.md", markdown), out / "compare.csv", out / "compare.json"]
    atomic_write(files[1], lambda tmp: table.to_csv(tmp, index=False))
    if sweep_rows:
        files.append(out / "sweep.csv")
        atomic_write(files[-1], lambda tmp: pd.DataFrame(sweep_rows).to_csv(tmp, index=False))
    if efficiency:
        files.append(out / "label_efficiency.csv")
        atomic_write(files[-1], lambda tmp: pd.DataFrame(efficiency).to_csv(tmp, index=False))
    fitted, reused = counts
    summary = {"targets": targets, "heads": all_heads, "seeds": request.seeds, "n_boot": request.n_boot,
               "boot_seed": BOOT_SEED, "ci_level": CI_LEVEL, "splits": dict(zip(("train", "val", "test"), splits,
                                                                                strict=True)),
               "recipe": request.recipe.to_dict(), "hidden": settings["hidden"], "dropout": settings["dropout"],
               "alphas": settings["alphas"], "caches": [source_info(s, splits) for s in sources],
               "runs": [{"name": r.name, "path": str(r.path), "kind": r.metrics.get("kind", "fit")}
                        for r in request.runs],
               "best": best, "fitted": fitted, "reused": reused, "cells": table.to_dict(orient="records"),
               "populations": {t: p["data"] for t, p in pops.items()},
               "study": {t: s["data"] for t, s in study.items()}, "request": settings}
    write_json(files[2], summary, indent=1, finite_only=True)
    if plots:
        extra = draw_study(study, out)
        from .html import report_header

        header = report_header(command, sources, splits, title=f"featcache report: {out.name}")
        files += write_plots(table, targets, all_heads, best, best_pred, out, markdown, pops, extra, calibration,
                             header, splits[2])
    return CompareResult(table, best, markdown, out, fitted, reused, files)

