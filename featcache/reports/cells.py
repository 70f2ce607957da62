"""The cell store and the fits that fill it: one fit (cache, feature, head, target, seed) is the unit of work.

OUT/cells/<key>.json (+ <key>.npz with the validation and test predictions). The key is the sha256 of the
cache fingerprint and FitSpec.describe() (feature, target, head, recipe incl. seed, alphas, splits), so a
changed recipe refits, a re-run refits nothing, and a larger --seeds fits only the new seeds. Both files are
written atomically, the .json last, so a killed compare resumes. Trainable fits can run in --jobs worker
processes, each (like this one) with --threads torch and BLAS threads (one by default).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cache.reader import FeatureCache, open_cache
from ..common.files import atomic_write, write_json
from ..common.progress import status
from ..heads.fit import FitSpec, fit_head
from ..heads.registry import head_info
from .sources import Source

CELL_FORMAT = 1
MAX_BATCH_HEADS = 64  # heads trained in one pass at most
DEFAULT_BATCH_BYTES = 1 << 30  # features a batched pass loads at most (train + val rows, float32; training
# holds a standardised copy beside them, so about twice this at the peak)
Fit = tuple[dict[str, Any], dict[str, np.ndarray]]


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
    variant: tuple[str, int] | None = None  # ("size", n) or ("fold", k): a probing-study fit, not a table cell
    setting: tuple[tuple[str, float], ...] = ()  # the swept hyper-parameters of this fit (sweep.py)


def cell_key(fingerprint: str, spec: FitSpec) -> str:
    """sha256 of what determines a fit's numbers (not its label: renaming an encoder refits nothing)."""
    return _key(fingerprint, spec.describe())


def _key(fingerprint: str, described: dict[str, Any]) -> str:
    payload = {"format": CELL_FORMAT, "cache_fingerprint": fingerprint, "spec": described}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def earlier_keys(fingerprint: str, spec: FitSpec) -> list[str]:
    """The keys the same fit had under earlier fit code versions (heads.fit.FIT_CODE_VERSION), newest first:
    `featcache report` draws a finished comparison from the cells an earlier featcache made (compare refits)."""
    from ..heads import fit as fit_module

    described = spec.describe()
    return [_key(fingerprint, {**described, "code_version": version})
            for version in range(fit_module.FIT_CODE_VERSION - 1, 0, -1)]


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

        atomic_write(array_path, write_npz)
        write_json(meta_path, record, indent=1, finite_only=True)


def _task_info(task: Task) -> dict[str, Any]:
    """The labels a fit record carries (plain values: they travel to worker processes)."""
    return {"key": task.key, "cache": str(task.source.path), "cache_fingerprint": task.source.cache.fingerprint,
            "encoder": task.encoder, "kind": task.kind, "layer": task.layer, "pool": task.pool,
            "width": task.width, "head": task.head, "target": task.target, "seed": task.seed}


def _fit_record(cache: FeatureCache, spec: FitSpec, info: dict[str, Any]) -> tuple[dict[str, Any],
                                                                                   dict[str, np.ndarray]]:
    """One fit: its stored record (metrics per role, sizes, chosen alpha/epoch) and its predictions."""
    return _record(fit_head(cache, spec, progress=False), spec, info)


def _record(result: Any, spec: FitSpec, info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    record: dict[str, Any] = {
        "format": CELL_FORMAT, **info, "spec": spec.describe(), "in_dim": result.in_dim, "chosen": result.chosen,
        "fit_seconds": result.seconds, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": {}, "n": {}}
    if hasattr(result.predictor, "rows"):  # torch heads: in memory or streamed (heads.streaming)
        record["train_rows"] = dict(result.predictor.rows)
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
        if "sigma" in pred:  # uncertainty heads
            arrays[f"{role}_sigma"] = np.asarray(pred["sigma"])[:, 0]
    return record, arrays


def _fit_once(task: Task) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return _fit_record(task.source.cache, task.spec, _task_info(task))


_WORKER_CACHES: dict[str, FeatureCache] = {}


def _worker_init(threads: int, finished_heads: Any = None) -> None:
    from ..common.device import use_threads

    use_threads(threads)  # torch's and NumPy's BLAS (ridge's Gram) alike, for the worker's life
    _WORKER_QUEUE[:] = [finished_heads]
    os.environ["FEATCACHE_QUIET"] = "1"


_WORKER_QUEUE: list[Any] = []  # where a worker's batched passes say how many heads finished training


def _blas_threads(threads: int) -> Any:
    """NumPy's BLAS limited to `threads` inside the block (ridge's Gram, kNN's distances), then restored."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(threads, user_api="blas")


def _fit_in_worker(cache_path: str, spec: FitSpec, info: dict[str, Any]) -> tuple[dict[str, Any],
                                                                                  dict[str, np.ndarray]]:
    """A fit in a --jobs worker process: the cache is opened once per process."""
    if cache_path not in _WORKER_CACHES:
        _WORKER_CACHES[cache_path] = open_cache(cache_path)
    return _fit_record(_WORKER_CACHES[cache_path], spec, info)


def batch_groups(todo: list[Task], max_bytes: int, max_heads: int = MAX_BATCH_HEADS) -> list[list[Task]]:
    """The MLP fits that train in one pass (heads.batched): per cache and batch-compatible spec, cut so that
    the distinct features a group holds in memory stay under max_bytes (train + val rows, float32). A fit
    whose features exceed its memory budget (FitSpec.max_memory) is left out: it streams alone."""
    from ..heads.fit import fit_key
    from ..heads.streaming import parse_memory

    budgets: dict[Any, int] = {}
    by_key: dict[tuple[Any, ...], list[Task]] = {}
    for task in todo:
        budget = budgets.setdefault(task.spec.max_memory, parse_memory(task.spec.max_memory))
        if head_info(task.head).batchable and 2 * _feature_bytes(task) <= budget:  # else: alone, streamed
            n_train = task.source.cache.n_rows(task.spec.train_split)
            # one hidden width per pass: a swept 128 beside a 512 would be padded to 512
            by_key.setdefault((str(task.source.path), task.spec.hidden, fit_key(task.spec, n_train)), []).append(task)
    groups = []
    for tasks in by_key.values():
        tasks.sort(key=lambda t: (t.layer, t.pool, t.key))  # seeds and settings of one feature side by side
        group: list[Task] = []
        features: set[tuple[Any, ...]] = set()
        size = 0
        for task in tasks:
            feature = (task.layer, task.pool, repr(task.spec.selection))
            extra = 0 if feature in features else _feature_bytes(task)
            if group and (size + extra > max_bytes or len(group) >= max_heads):
                groups.append(group)
                group, features, size, extra = [], set(), 0, _feature_bytes(task)
            group.append(task)
            features.add(feature)
            size += extra
        if group:
            groups.append(group)
    return [g for g in groups if len(g) > 1]


def _feature_bytes(task: Task) -> int:
    cache, spec = task.source.cache, task.spec
    rows = cache.n_rows(spec.train_split) + (cache.n_rows(spec.val_split) if spec.val_split else 0)
    return 4 * rows * task.width


def _batch_records(cache: FeatureCache, specs: list[FitSpec], infos: list[dict[str, Any]],
                   on_finished: Any = None) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """A batched pass (heads.fit.fit_heads) and its fits' records; on_finished(k) as k heads finish training."""
    from ..heads.fit import fit_heads

    results = fit_heads(cache, specs, on_finished=on_finished)
    return [_record(r, spec, info) for r, spec, info in zip(results, specs, infos, strict=True)]


def _fit_batch(tasks: list[Task], on_finished: Any = None) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    return _batch_records(tasks[0].source.cache, [t.spec for t in tasks], [_task_info(t) for t in tasks],
                          on_finished)


def _batch_in_worker(cache_path: str, specs: list[FitSpec], infos: list[dict[str, Any]], unit_id: int = 0
                     ) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """A batched pass in a --jobs worker process (the cache opened once per process); it tells the parent,
    through the worker's queue, how many of its heads finished training as they do."""
    if cache_path not in _WORKER_CACHES:
        _WORKER_CACHES[cache_path] = open_cache(cache_path)
    queue = _WORKER_QUEUE[0] if _WORKER_QUEUE else None
    report = (lambda k: queue.put((unit_id, k))) if queue is not None else None
    return _batch_records(_WORKER_CACHES[cache_path], specs, infos, report)


# -- planning: units of work and their cost -----------------------------------------------------------------
# Costs in FLOP-equivalents at one core's measured float32 rate (~70 GFLOP/s), from the reference grid's fits
# (benchmarks/grid_compare.sh): each head's entry estimates its own (heads.entry.HeadEntry.estimated_flop); a
# torch head's per-step cost beyond its arithmetic (autograd, AdamW, clip; about 0.5 ms), which a batched pass
# pays once per step for all its heads, is heads.mlp.STEP_OVERHEAD_FLOP


def estimated_flop(task: Task, batched: bool = False) -> float:
    """A fit's rough cost in FLOP (for ordering and balancing work, not for reporting), as its head's entry
    estimates it (early stopping cuts a torch head's, which no estimate knows)."""
    cache, spec = task.source.cache, task.spec
    n = cache.n_rows(spec.train_split)
    n_eval = sum(cache.n_rows(s) for s in (spec.val_split, spec.test_split) if s)
    return head_info(task.head).estimated_flop(n, n_eval, max(1, int(task.width)), spec, batched)


def unit_flop(unit: list[Task]) -> float:
    """A unit of work's cost: one fit, or a batched pass (its heads' work plus one per-step overhead)."""
    from ..heads.mlp import STEP_OVERHEAD_FLOP

    if len(unit) == 1:
        return estimated_flop(unit[0])
    spec = unit[0].spec
    steps = -(-unit[0].source.cache.n_rows(spec.train_split) // int(spec.recipe.batch_size))
    return sum(estimated_flop(t, batched=True) for t in unit) + spec.recipe.max_epochs * steps * STEP_OVERHEAD_FLOP


def balance(group: list[Task], parts: int) -> list[list[Task]]:
    """Cut a batched pass into `parts` passes of about equal cost (costliest fit to the cheapest part)."""
    bins: list[list[Task]] = [[] for _ in range(max(1, parts))]
    loads = [0.0] * len(bins)
    for task in sorted(group, key=lambda t: -estimated_flop(t, batched=True)):
        k = loads.index(min(loads))
        bins[k].append(task)
        loads[k] += estimated_flop(task, batched=True)
    return [sorted(b, key=lambda t: (t.layer, t.pool, t.key)) for b in bins if b]


def plan_units(todo: list[Task], jobs: int, batched: bool, max_bytes: int = DEFAULT_BATCH_BYTES
               ) -> list[list[Task]]:
    """The fits as units of work: batched passes (heads.batched) and single fits. With jobs > 1 a pass that
    would cost more than a worker's fair share (the total over jobs) is cut into about equal passes, so the
    workers finish together; the units come costliest first (longest-processing-time order)."""
    groups = batch_groups(todo, max_bytes) if batched else []
    in_groups = {t.key for g in groups for t in g}
    units: list[list[Task]] = [[t] for t in todo if t.key not in in_groups]
    if jobs > 1 and groups:
        share = (sum(unit_flop(g) for g in groups) + sum(unit_flop(u) for u in units)) / jobs
        cut: list[list[Task]] = []
        for g in groups:
            parts = min(jobs, len(g), max(1, int(np.ceil(unit_flop(g) / share - 1e-9))))
            cut.extend(balance(g, parts) if parts > 1 else [g])
        groups = cut
    units += groups
    return sorted(units, key=lambda u: -unit_flop(u))


def run_fits(todo: list[Task], jobs: int, save: Any, bar: Any, batched: bool = False,
             max_bytes: int = DEFAULT_BATCH_BYTES, threads: int | None = None) -> None:
    """Make the fits. With jobs == 1, here, one after another: the closed-form fits first (a partial run has
    their table), then the batched passes (heads.batched), then the other trainable fits. With jobs > 1 every
    unit of work (a fit, or a batched pass) goes to `jobs` worker processes, the costliest first: on a small
    CPU the heads are compute-bound, and whole processes on their own cores beat threads sharing one head's
    small matrix products. Every process fitting heads (this one or a worker) takes `threads` torch and BLAS
    threads (None: common.device's default for heads, one). The bar counts fits as they finish training,
    inside a batched pass too (long because both paths, here and in the workers, feed that one count)."""
    from ..common.device import default_threads, torch_threads

    threads = default_threads("heads") if threads is None else int(threads)
    counted: dict[int, int] = {}  # fits of each unit the bar has counted (a pass reports its heads as they stop)

    def trained(unit_id: int, k: int) -> None:
        counted[unit_id] = counted.get(unit_id, 0) + k
        if bar is not None:
            bar.update(k)

    def finish(unit_id: int, unit: list[Task], results: list[tuple[dict[str, Any], dict[str, np.ndarray]]]) -> None:
        for task, result in zip(unit, results, strict=True):
            save(task, *result)
        if bar is not None and len(unit) > counted.get(unit_id, 0):
            bar.update(len(unit) - counted.get(unit_id, 0))

    units = plan_units(todo, jobs, batched, max_bytes)
    if jobs <= 1 or len(units) < 2:
        order = sorted(range(len(units)), key=lambda i: (head_info(units[i][0].head).trainable, len(units[i]) == 1))
        with torch_threads(threads), _blas_threads(threads):
            for i in order:
                unit = units[i]
                if bar is not None:
                    what = (f"{unit[0].encoder}: {len(unit)} {unit[0].head} fits in one pass" if len(unit) > 1 else
                            f"{unit[0].encoder} {unit[0].layer}/{unit[0].pool} {unit[0].head} {unit[0].target}")
                    bar.set_postfix_str(what, refresh=False)
                results = (_fit_batch(unit, lambda k, i=i: trained(i, k)) if len(unit) > 1
                           else [_fit_once(unit[0])])
                finish(i, unit, results)
        return
    import multiprocessing
    import queue as queues
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    passes = sum(len(u) > 1 for u in units)
    status(f"compare: {len(todo)} fits as {len(units)} units ({passes} batched passes) in {jobs} processes x "
           f"{threads} threads")
    # spawn, not fork: a forked child of a process that already ran OpenMP/oneDNN code can hang
    context = multiprocessing.get_context("spawn")
    finished_heads = context.Queue()  # (unit, k): k heads of a worker's pass finished training

    def drain() -> None:
        while True:
            try:
                unit_id, k = finished_heads.get_nowait()
            except queues.Empty:
                return
            trained(unit_id, k)

    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init,
                             initargs=(threads, finished_heads)) as pool:
        futures = {}
        for i, unit in enumerate(units):
            if len(unit) > 1:
                future = pool.submit(_batch_in_worker, str(unit[0].source.path), [t.spec for t in unit],
                                     [_task_info(t) for t in unit], i)
            else:
                future = pool.submit(_fit_in_worker, str(unit[0].source.path), unit[0].spec, _task_info(unit[0]))
            futures[future] = i
        try:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                drain()
                for future in finished:
                    i = futures[future]
                    results = future.result()
                    finish(i, units[i], results if len(units[i]) > 1 else [results])
        except BaseException:
            for future in futures:
                future.cancel()
            raise
