"""`featcache compare` in Python: the layer x pooling x head table, with baselines, intervals and plots.

Why this shape:

* A *fit* (one cache, one feature, one head, one target, one seed) is the unit of work and of storage:
  OUT/cells/<key>.json (+ <key>.npz with the validation and test predictions). The key is the sha256 of the
  cache fingerprint and FitSpec.describe() (feature, target, head, recipe incl. seed, alphas, splits), so a
  changed recipe refits, a re-run refits nothing, and a larger --seeds fits only the new seeds. Both files
  are written atomically (tmp file + os.replace, the .json last), so a killed compare resumes.
* A *cell* of the table (encoder, layer, pooling, head, target) aggregates its seeds. Each target gets its
  own head, as in the reference experiment. Ridge is deterministic: one fit whatever --seeds says.
* Test R2 carries a 95% percentile bootstrap interval over test spectra (draw 0; 1000 draws, seed 0). With
  several seeds the point estimate is the mean R2 over seeds and the interval is that of the same statistic:
  each bootstrap draw resamples the test spectra once and scores every seed on it (so the interval is about
  the test sample, the ± beside it about the seeds).
* The best cell of each target, in bold, is the one with the highest validation R2 over the whole table
  (encoder rows, baselines and --run rows alike); test R2 never takes part in the choice.
* Baselines: the cache's input_flux / input_error pseudo-layers appear as "raw input" rows (once per distinct
  data, mask and noise, however many caches share them); a --random-init cache given as another --cache is the
  random-encoder baseline.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .cache import FeatureCache, open_cache
from .errors import FeatcacheError, choices_message
from .fit import FitSpec, fit_head
from .heads import head_info
from .metrics import bootstrap_r2, regression_metrics
from .progress import progress, status
from .training import TrainRecipe

CELL_FORMAT = 1
N_BOOT = 1000
BOOT_SEED = 0
CI_LEVEL = 0.95
DEFAULT_HEADS = ("ridge", "mlp_1")
PSEUDO_LAYERS = ("input_flux", "input_error")
RAW_INPUT = "raw input"
METRICS = ("r2", "rmse", "mae", "bias")


# -- sources ----------------------------------------------------------------------------------------------
@dataclass
class Source:
    """One cache in the table, under the encoder label its rows carry."""

    name: str
    path: Path
    cache: FeatureCache
    baseline_name: str | None = None  # label of its raw-input rows; None: another cache already shows them


def parse_cache_args(items: Iterable[str | Path]) -> list[tuple[str | None, Path]]:
    """`--cache NAME=PATH` or `--cache PATH` (an existing path wins over a NAME= reading)."""
    out: list[tuple[str | None, Path]] = []
    for item in items:
        text = str(item)
        name, _, rest = text.partition("=")
        if isinstance(item, Path) or Path(text).exists() or not rest or not name or "/" in name:
            out.append((None, Path(text)))
        else:
            out.append((name, Path(rest)))
    return out


def default_label(cache: FeatureCache) -> str:
    """The encoder tag (marked random-init when it is), else the cache's file stem."""
    tag = str((cache.meta.get("encoder") or {}).get("tag") or cache.path.stem)
    seed = ((cache.meta.get("parts") or {}).get("encoder") or {}).get("random_init_seed")
    return f"{tag} random-init" if seed is not None else tag


def _data_identity(cache: FeatureCache) -> str:
    """What the raw-input pseudo-layers depend on: the fingerprint's parts without the encoder."""
    parts = {k: v for k, v in (cache.meta.get("parts") or {}).items() if k not in ("encoder", "direction")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def open_sources(caches: Mapping[str, str | Path] | Sequence[str | Path | tuple[str | None, str | Path]],
                 train_split: str = "train") -> list[Source]:
    """Open every cache and give each a unique encoder label (explicit names must be unique)."""
    if isinstance(caches, Mapping):
        pairs: list[tuple[str | None, Path]] = [(k, Path(v)) for k, v in caches.items()]
    else:
        pairs = []
        for item in caches:
            if isinstance(item, tuple):
                pairs.append((item[0], Path(item[1])))
            else:
                pairs.extend(parse_cache_args([item]))
    if not pairs:
        raise FeatcacheError("give at least one --cache")
    explicit = [n for n, _ in pairs if n]
    for name in explicit:
        if explicit.count(name) > 1:
            raise FeatcacheError(f"--cache {name}=...: the name '{name}' is given twice")
    sources: list[Source] = []
    taken = set(explicit) | {RAW_INPUT}
    for name, path in pairs:
        cache = open_cache(path)
        if not name:
            for candidate in (default_label(cache), cache.path.stem, *(f"{cache.path.stem}-{i}" for i in range(2, 99))):
                if candidate not in taken:
                    name = candidate
                    break
        taken.add(str(name))
        sources.append(Source(str(name), Path(path), cache))
    identities: dict[str, list[Source]] = {}
    for src in sources:
        if any(layer in PSEUDO_LAYERS for layer in src.cache.layers(train_split)):
            identities.setdefault(_data_identity(src.cache), []).append(src)
    for group in identities.values():
        group[0].baseline_name = RAW_INPUT if len(identities) == 1 else f"{RAW_INPUT} ({group[0].name})"
    return sources


# -- fit tasks and the cell store -------------------------------------------------------------------------
@dataclass
class Task:
    """One fit to make or reuse."""

    source: Source
    encoder: str     # row label: the source's name, or its raw-input label
    kind: str        # "encoder" | "baseline"
    layer: str
    pool: str
    width: int
    head: str
    target: str
    seed: int | None
    spec: FitSpec
    key: str


def cell_key(fingerprint: str, spec: FitSpec) -> str:
    """sha256 of what determines a fit's numbers (not its label: renaming an encoder refits nothing)."""
    payload = {"format": CELL_FORMAT, "cache_fingerprint": fingerprint, "spec": spec.describe()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class CellStore:
    """OUT/cells/<key>.json + <key>.npz; a fit counts as done only when both exist (the .json is written last)."""

    def __init__(self, out: Path):
        self.dir = Path(out) / "cells"

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.json", self.dir / f"{key}.npz"

    def load(self, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        meta_path, array_path = self.paths(key)
        if not (meta_path.exists() and array_path.exists()):
            return None
        try:
            record = json.loads(meta_path.read_text())
            with np.load(array_path) as arrays:
                data = {k: arrays[k] for k in arrays.files}
        except (OSError, ValueError, json.JSONDecodeError):
            return None  # a damaged cell is refitted
        if record.get("format") != CELL_FORMAT or record.get("key") != key:
            return None
        return record, data

    def save(self, key: str, record: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta_path, array_path = self.paths(key)

        def write_npz(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        _atomic_write(array_path, write_npz)
        _atomic_write(meta_path, lambda tmp: tmp.write_text(json.dumps(_jsonable(record), indent=1) + "\n"))


def _jsonable(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so the JSON is standard."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _task_info(task: Task) -> dict[str, Any]:
    """The labels a fit record carries (plain values: they travel to worker processes)."""
    return {"key": task.key, "cache": str(task.source.path), "cache_fingerprint": task.source.cache.fingerprint,
            "encoder": task.encoder, "kind": task.kind, "layer": task.layer, "pool": task.pool,
            "width": task.width, "head": task.head, "target": task.target, "seed": task.seed}


def _fit_record(cache: FeatureCache, spec: FitSpec, info: dict[str, Any]) -> tuple[dict[str, Any],
                                                                                   dict[str, np.ndarray]]:
    """One fit: its stored record (metrics per role, sizes, chosen alpha/epoch) and its predictions."""
    result = fit_head(cache, spec, progress=False)
    record: dict[str, Any] = {
        "format": CELL_FORMAT, **info, "spec": spec.describe(), "in_dim": result.in_dim, "chosen": result.chosen,
        "fit_seconds": result.seconds, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": {}, "n": {}}
    target = info["target"]
    for role, split in (("train", spec.train_split), ("val", spec.val_split), ("test", spec.test_split)):
        entry = result.metrics["splits"][split]
        record["metrics"][role] = entry["targets"][target]
        record["n"][role] = entry["n"]
    arrays: dict[str, np.ndarray] = {}
    for role in ("val", "test"):
        pred = result.predictions[role]
        arrays[f"{role}_true"] = np.asarray(pred["true"])[:, 0]
        arrays[f"{role}_pred"] = np.asarray(pred["pred"])[:, 0]
        arrays[f"{role}_index"] = np.asarray(pred["index"])
    return record, arrays


def _fit_once(task: Task) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return _fit_record(task.source.cache, task.spec, _task_info(task))


_WORKER_CACHES: dict[str, FeatureCache] = {}


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["FEATCACHE_QUIET"] = "1"


def _fit_in_worker(cache_path: str, spec: FitSpec, info: dict[str, Any]) -> tuple[dict[str, Any],
                                                                                  dict[str, np.ndarray]]:
    """A fit in a --jobs worker process: the cache is opened once per process."""
    if cache_path not in _WORKER_CACHES:
        _WORKER_CACHES[cache_path] = open_cache(cache_path)
    return _fit_record(_WORKER_CACHES[cache_path], spec, info)


def _available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _run_fits(todo: list[Task], jobs: int, save: Any, bar: Any) -> None:
    """Make the fits: closed-form heads here (fast, all threads), trainable ones in `jobs` worker processes
    with cpus // jobs torch threads each (small heads scale better across processes than across threads)."""

    def done(task: Task, result: tuple[dict[str, Any], dict[str, np.ndarray]]) -> None:
        save(task, *result)
        if bar is not None:
            bar.update(1)

    parallel = [t for t in todo if head_info(t.head).trainable] if jobs > 1 else []
    if len(parallel) < 2:
        parallel = []
    parallel.sort(key=lambda t: -t.width)  # widest (slowest) first: the pool then finishes sooner
    in_workers = {t.key for t in parallel}
    for task in todo:
        if task.key in in_workers:
            continue
        if bar is not None:
            bar.set_postfix_str(f"{task.encoder} {task.layer}/{task.pool} {task.head} {task.target}", refresh=False)
        done(task, _fit_once(task))
    if not parallel:
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, _available_cpus() // jobs)
    status(f"compare: {len(parallel)} trainable fits in {jobs} processes x {threads} torch threads")
    # spawn, not fork: a forked child of a process that already ran OpenMP/oneDNN code can hang
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(threads,)) as pool:
        futures = {pool.submit(_fit_in_worker, str(t.source.path), t.spec, _task_info(t)): t for t in parallel}
        try:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    done(futures[future], future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


# -- aggregation ------------------------------------------------------------------------------------------
def seed_mean_r2_ci(y_true: np.ndarray, preds: np.ndarray, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                    level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean-over-seeds test R2, resampling test spectra (one resample scores all
    seeds). preds is (n, S); with S = 1 this is exactly metrics.bootstrap_r2_ci."""
    preds = np.asarray(preds, dtype=np.float64).reshape(len(y_true), -1)
    truth = np.repeat(np.asarray(y_true, dtype=np.float64).reshape(-1, 1), preds.shape[1], axis=1)
    draws = bootstrap_r2(truth, preds, n_boot=n_boot, seed=seed)
    with np.errstate(invalid="ignore"):
        stat = draws.mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.nanpercentile(stat, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _mean(values: list[float]) -> float:
    clean = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(clean)) if clean else float("nan")


def _std(values: list[float]) -> float:
    clean = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.std(clean, ddof=1)) if len(clean) > 1 else float("nan")


def _cell_row(tasks: list[Task], fits: list[tuple[dict[str, Any], dict[str, np.ndarray]]],
              n_boot: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """One table row from a cell's seeds; also the test truth and the seed-mean test prediction (plots)."""
    first = tasks[0]
    records = [r for r, _ in fits]
    truth = fits[0][1]["test_true"]
    preds = np.stack([a["test_pred"] for _, a in fits], axis=1)
    lo, hi = seed_mean_r2_ci(truth, preds, n_boot=n_boot)
    row: dict[str, Any] = {"target": first.target, "encoder": first.encoder, "kind": first.kind,
                           "layer": first.layer, "pool": first.pool, "width": first.width, "head": first.head,
                           "seeds": len(fits)}
    for role in ("test", "val"):
        for metric in METRICS:
            row[f"{role}_{metric}"] = _mean([r["metrics"][role][metric] for r in records])
        row[f"{role}_r2_std"] = _std([r["metrics"][role]["r2"] for r in records])
        if role == "test":
            row["test_r2_lo"], row["test_r2_hi"] = lo, hi
    row["train_r2"] = _mean([r["metrics"]["train"]["r2"] for r in records])
    alphas = [r["chosen"].get("alpha") for r in records if r["chosen"].get("alpha") is not None]
    epochs = [r["chosen"].get("best_epoch") for r in records if r["chosen"].get("best_epoch") is not None]
    row["chosen_alpha"] = float(alphas[0]) if alphas else float("nan")
    row["chosen_epoch"] = _mean([float(e) for e in epochs]) if epochs else float("nan")
    row["chosen_epochs"] = ";".join(str(int(e)) for e in epochs)
    row["fit_seconds"] = float(sum(r["fit_seconds"] for r in records))
    row["n_train_rows"], row["n_val"], row["n_test"] = (records[0]["n"][k] for k in ("train", "val", "test"))
    row["cache_fingerprint"] = first.source.cache.fingerprint
    row["source"] = str(first.source.path)
    row["keys"] = ";".join(t.key for t in tasks)
    return row, truth, preds.mean(axis=1)


# -- --run rows -------------------------------------------------------------------------------------------
@dataclass
class RunRows:
    """Rows from a `featcache fit` / `finetune` run directory, one per target it predicts."""

    name: str
    path: Path
    metrics: dict[str, Any]
    arrays: dict[str, np.ndarray]


def read_run(path: str | Path, name: str | None = None) -> RunRows:
    path = Path(path)
    if not (path / "metrics.json").exists():
        raise FeatcacheError(f"--run {path}: no metrics.json (expected a run directory written by featcache fit "
                             "or finetune)")
    try:
        metrics = json.loads((path / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FeatcacheError(f"--run {path}: metrics.json is not readable JSON ({exc})") from None
    if not (path / "predictions.npz").exists():
        raise FeatcacheError(f"--run {path}: no predictions.npz (needed for the test interval)")
    with np.load(path / "predictions.npz") as arrays:
        data = {k: arrays[k] for k in arrays.files}
    for key in ("test_true", "test_pred"):
        if key not in data:
            raise FeatcacheError(f"--run {path}: predictions.npz has no '{key}' (was the run scored on test?)")
    return RunRows(name or path.resolve().name, path, metrics, data)


def _run_targets(run: RunRows) -> list[str]:
    if "targets" in run.arrays:
        return [str(t) for t in np.atleast_1d(run.arrays["targets"])]
    return [str(t) for t in run.metrics.get("targets", [])]


def _run_split(run: RunRows, role: str) -> dict[str, Any]:
    splits = run.metrics.get("splits") or {}
    for entry in splits.values():
        if isinstance(entry, dict) and entry.get("role") == role:
            return entry
    return splits.get(role) or {}


def _run_row(run: RunRows, target: str, n_boot: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    targets = _run_targets(run)
    j = targets.index(target)
    truth = np.asarray(run.arrays["test_true"], dtype=np.float64).reshape(len(run.arrays["test_true"]), -1)[:, j]
    pred = np.asarray(run.arrays["test_pred"], dtype=np.float64).reshape(len(truth), -1)[:, j]
    features = [str(f) for f in run.metrics.get("features") or []]
    kind_word = str(run.metrics.get("kind") or "fit")
    if len(features) == 1 and "/" in features[0]:
        layer, pool = features[0].split("/", 1)
    elif features:
        layer, pool = "+".join(features), ""
    else:
        layer, pool = str(run.metrics.get("layer") or f"({kind_word})"), str(run.metrics.get("pool") or "")
    width = run.metrics.get("in_dim")
    row: dict[str, Any] = {"target": target, "encoder": run.name, "kind": "run", "layer": layer, "pool": pool,
                           "width": int(width) if isinstance(width, int | float) else -1,
                           "head": str(run.metrics.get("head") or kind_word), "seeds": 1}
    test = regression_metrics(truth, pred)
    lo, hi = seed_mean_r2_ci(truth, pred[:, None], n_boot=n_boot)
    val = (_run_split(run, "val").get("targets") or {}).get(target) or {}
    for metric in METRICS:
        row[f"test_{metric}"] = float(test[metric])
        row[f"val_{metric}"] = float(val.get(metric, float("nan")))
    row["test_r2_std"] = row["val_r2_std"] = float("nan")
    row["test_r2_lo"], row["test_r2_hi"] = lo, hi
    train = (_run_split(run, "train").get("targets") or {}).get(target) or {}
    row["train_r2"] = float(train.get("r2", float("nan")))
    chosen = run.metrics.get("chosen") or {}
    row["chosen_alpha"] = float(chosen.get("alpha", float("nan")))
    row["chosen_epoch"] = float(chosen.get("best_epoch", float("nan")))
    row["chosen_epochs"] = str(chosen.get("best_epoch", ""))
    row["fit_seconds"] = float(run.metrics.get("fit_seconds") or run.metrics.get("seconds") or float("nan"))
    row["n_train_rows"] = int(_run_split(run, "train").get("n", -1))
    row["n_val"] = int(_run_split(run, "val").get("n", -1))
    row["n_test"] = len(truth)
    row["cache_fingerprint"] = str(run.metrics.get("cache_fingerprint") or "")  # finetune runs have none
    row["source"] = str(run.path)
    row["keys"] = ""
    return row, truth, pred


# -- the comparison ---------------------------------------------------------------------------------------
@dataclass
class CompareResult:
    """The table (one row per cell: target x encoder x layer x pooling x head), the best cells, the files."""

    table: Any  # pandas.DataFrame
    best: dict[str, dict[str, Any]]
    markdown: str
    out: Path
    fitted: int
    reused: int
    files: list[Path] = field(default_factory=list)


def _check_labels(sources: list[Source], targets: list[str], splits: list[str]) -> None:
    if not targets:
        raise FeatcacheError("give at least one --target")
    for src in sources:
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


def compare(caches: Mapping[str, str | Path] | Sequence[str | Path | tuple[str | None, str | Path]],
            targets: Sequence[str], *, heads: Sequence[str] = DEFAULT_HEADS, layers: Sequence[str] | None = None,
            pools: Sequence[str] | None = None, seeds: int = 1, recipe: TrainRecipe | None = None,
            hidden: int = 256, dropout: float = 0.1, alphas: list[float] | None = None,
            runs: Sequence[str | Path] = (), out: str | Path = "reports/compare", baselines: bool = True,
            device: str = "auto", train_split: str = "train", val_split: str = "val", test_split: str = "test",
            n_boot: int = N_BOOT, plots: bool = True, show_progress: bool = True, jobs: int = 1) -> CompareResult:
    """Fill every (encoder, layer, pooling) x head cell for each target, reusing finished fits in OUT/cells;
    write compare.md/.csv/.json, the plots and report.md into OUT. MLP heads use seeds recipe.seed + 0..N-1.

    jobs > 1 trains the MLP cells in that many worker processes (each with cpus // jobs torch threads);
    an MLP cell's numbers can then differ slightly from a jobs=1 run (the thread count changes the order of
    float32 sums, and training amplifies such differences a little); ridge cells are identical."""
    import pandas as pd

    out = Path(out)
    targets = list(dict.fromkeys(targets))
    heads = list(dict.fromkeys(heads or DEFAULT_HEADS))
    for head in heads:
        head_info(head)  # lists the registered heads if unknown
    if seeds < 1:
        raise FeatcacheError(f"--seeds must be at least 1, got {seeds}")
    if jobs < 1:
        raise FeatcacheError(f"--jobs must be at least 1, got {jobs}")
    recipe = recipe or TrainRecipe()
    recipe.validate()
    run_dirs = [read_run(r) for r in runs]
    seen_names: set[str] = set()
    for run in run_dirs:
        base, i = run.name, 2
        while run.name in seen_names:
            run.name, i = f"{base}-{i}", i + 1
        seen_names.add(run.name)
        if not set(_run_targets(run)) & set(targets):
            raise FeatcacheError(f"--run {run.path}: predicts {', '.join(_run_targets(run)) or 'nothing'}, "
                                 f"none of the targets {', '.join(targets)}")
    sources = open_sources(caches, train_split)
    splits = [train_split, val_split, test_split]
    _check_labels(sources, targets, splits)
    grid = _grid(sources, layers, pools, baselines, train_split)

    tasks: list[Task] = []
    cell_tasks: list[list[Task]] = []
    for target in targets:
        for src, label, kind, layer, pool in grid:
            for split in splits:
                src.cache.feature_array(split, layer, pool)  # missing or incomplete: one-line error up front
            width = int(src.cache.feature_info(train_split, layer, pool).get("D") or
                        src.cache.feature_array(train_split, layer, pool).shape[1])
            for head in heads:
                trainable = head_info(head).trainable
                group = []
                for i in range(seeds if trainable else 1):
                    seed = recipe.seed + i if trainable else None
                    spec = FitSpec(features=[(layer, pool)], targets=[target], head=head, hidden=hidden,
                                   dropout=dropout, recipe=replace(recipe, seed=seed) if seed is not None else recipe,
                                   alphas=alphas, train_split=train_split, val_split=val_split,
                                   test_split=test_split, device=device)
                    key = cell_key(src.cache.fingerprint, spec)
                    group.append(Task(src, label, kind, layer, pool, width, head, target, seed, spec, key))
                cell_tasks.append(group)
                tasks += group

    store = CellStore(out)
    done: dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]] = {}
    todo: list[Task] = []
    queued: set[str] = set()
    for task in tasks:
        if task.key in done or task.key in queued:
            continue  # the same fit twice (e.g. one cache under two names) is made once
        loaded = store.load(task.key)
        if loaded is None:
            todo.append(task)
            queued.add(task.key)
        else:
            done[task.key] = loaded
    reused = len(done)
    todo.sort(key=lambda t: head_info(t.head).trainable)  # closed-form heads first: a partial run has their table
    if todo:
        status(f"compare: {len(todo)} fits to make, {reused} reused from {store.dir}")
    bar = progress(total=len(todo), desc="compare", unit="fit") if show_progress else None

    def save(task: Task, record: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        store.save(task.key, record, arrays)
        done[task.key] = (record, arrays)

    try:
        _run_fits(todo, jobs, save, bar)
    finally:
        if bar is not None:
            bar.close()

    rows: list[dict[str, Any]] = []
    predictions: list[tuple[np.ndarray, np.ndarray]] = []
    for group in cell_tasks:
        row, truth, pred = _cell_row(group, [done[t.key] for t in group], n_boot)
        rows.append(row)
        predictions.append((truth, pred))
    for run in run_dirs:
        for target in targets:
            if target in _run_targets(run):
                row, truth, pred = _run_row(run, target, n_boot)
                rows.append(row)
                predictions.append((truth, pred))
    table = pd.DataFrame(rows)
    table["best"] = False
    best: dict[str, dict[str, Any]] = {}
    best_pred: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for target in targets:
        sub = table[(table["target"] == target) & table["val_r2"].notna()]
        if len(sub):
            index = int(sub["val_r2"].idxmax())  # first of equals, in table order
            table.loc[index, "best"] = True
            best[target] = _jsonable(table.loc[index].to_dict())
            best_pred[target] = predictions[index]

    all_heads = heads + [h for h in dict.fromkeys(table["head"]) if h not in heads]
    context = {"sources": sources, "runs": run_dirs, "heads": all_heads, "seeds": seeds, "n_boot": n_boot,
               "splits": splits, "recipe": recipe}
    markdown = render_markdown(table, targets, context)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "compare.md", out / "compare.csv", out / "compare.json"]
    _atomic_write(files[0], lambda tmp: tmp.write_text(markdown))
    _atomic_write(files[1], lambda tmp: table.to_csv(tmp, index=False))
    summary = {"targets": targets, "heads": all_heads, "seeds": seeds, "n_boot": n_boot, "boot_seed": BOOT_SEED,
               "ci_level": CI_LEVEL, "splits": dict(zip(("train", "val", "test"), splits, strict=True)),
               "recipe": recipe.to_dict(), "hidden": hidden, "dropout": dropout, "alphas": alphas,
               "caches": [_source_info(s, splits) for s in sources],
               "runs": [{"name": r.name, "path": str(r.path), "kind": r.metrics.get("kind", "fit")} for r in run_dirs],
               "best": best, "fitted": len(todo), "reused": reused,
               "cells": [_jsonable(r) for r in table.to_dict(orient="records")]}
    _atomic_write(files[2], lambda tmp: tmp.write_text(json.dumps(_jsonable(summary), indent=1) + "\n"))
    if plots:
        files += _write_plots(table, targets, all_heads, best, best_pred, out, markdown)
    return CompareResult(table, best, markdown, out, len(todo), reused, files)


# -- rendering --------------------------------------------------------------------------------------------
def _source_info(src: Source, splits: list[str]) -> dict[str, Any]:
    sizes = {split: {"spectra": src.cache.n_spectra(split), "rows": src.cache.n_rows(split)} for split in splits}
    return {"name": src.name, "path": str(src.path), "fingerprint": src.cache.fingerprint,
            "encoder": (src.cache.meta.get("encoder") or {}).get("source"), "sizes": sizes}


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
    lines.append("")
    lines.append("Caches:")
    for src, size in zip(sources, sizes, strict=True):
        extra = f"; {size}" if len(set(sizes)) > 1 else ""
        lines.append(f"- `{src.name}`: {src.path}, fingerprint {src.cache.fingerprint}, encoder "
                     f"{(src.cache.meta.get('encoder') or {}).get('source', '?')}{extra}")
    baseline_names = [s.baseline_name for s in sources if s.baseline_name]
    if baseline_names and (table["kind"] == "baseline").any():
        owners = ", ".join(f"{s.baseline_name} from `{s.name}`" for s in sources if s.baseline_name)
        lines.append(f"- raw input rows (input_flux: noisy flux; input_error: the error vector alone, a leak "
                     f"detector): {owners}")
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
        n = _run_split(run, role).get("n")
        if n is not None:
            parts.append(f"{role} {int(n)}")
    return (" / ".join(parts) + " spectra") if parts else "sizes unknown"


def _is_trainable(head: str) -> bool:
    try:
        return head_info(head).trainable
    except FeatcacheError:
        return False


def _sizes_text(src: Source, train_split: str, val_split: str, test_split: str) -> str:
    cache = src.cache
    n, rows = cache.n_spectra(train_split), cache.n_rows(train_split)
    train = f"{train_split} {n} spectra" + (f" x {rows // n} draws = {rows} rows" if n and rows != n else "")
    return (f"{train}, {val_split} {cache.n_spectra(val_split)} spectra, "
            f"{test_split} {cache.n_spectra(test_split)} spectra")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _write_plots(table: Any, targets: list[str], heads: list[str], best: dict[str, dict[str, Any]],
                 best_pred: dict[str, tuple[np.ndarray, np.ndarray]], out: Path, markdown: str) -> list[Path]:
    """Heatmaps per head and target, the best cell's predicted/residual vs true, and report.md."""
    from . import plots

    files: list[Path] = []
    images: dict[str, list[tuple[str, Path]]] = {}
    for target in targets:
        sub = table[(table["target"] == target) & (table["kind"] != "run")]
        for head in heads:
            cells = sub[sub["head"] == head]
            if not len(cells):
                continue
            path = out / f"heatmap_{safe_name(head)}_{safe_name(target)}.png"
            plots.r2_heatmap(cells, path, title=f"{target}: {head} test R2 (layer x pooling)")
            images.setdefault(target, []).append((f"{head} test R2 heatmap", path))
        if target in best:
            truth, pred = best_pred[target]
            path = out / f"best_{safe_name(target)}.png"
            plots.best_cell(truth, pred, path, title=f"{target}: {cell_label(best[target])}", target=target)
            images.setdefault(target, []).append(("best cell: predicted and residual vs true", path))
    for pictures in images.values():
        files += [p for _, p in pictures]
    report = [markdown.rstrip(), "", "# Plots", ""]
    for target, pictures in images.items():
        report += [f"## {target}", ""]
        report += [f"![{caption}]({path.name})\n" for caption, path in pictures]
    _atomic_write(out / "report.md", lambda tmp: tmp.write_text("\n".join(report) + "\n"))
    return [*files, out / "report.md"]
