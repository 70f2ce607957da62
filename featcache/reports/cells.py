"""The cell store and the fits that fill it: one fit (cache, feature, head, target, seed) is the unit of work.

OUT/cells/<key>.json (+ <key>.npz with the validation and test predictions). The key is the sha256 of the
cache fingerprint and FitSpec.describe() (feature, target, head, recipe incl. seed, alphas, splits), so a
changed recipe refits, a re-run refits nothing, and a larger --seeds fits only the new seeds. Both files are
written atomically, the .json last, so a killed compare resumes. Trainable fits can run in --jobs worker
processes with cpus // jobs torch threads each.
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
from ..common.device import available_cpus
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
    payload = {"format": CELL_FORMAT, "cache_fingerprint": fingerprint, "spec": spec.describe()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


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


def batch_groups(todo: list[Task], max_bytes: int, max_heads: int = MAX_BATCH_HEADS) -> list[list[Task]]:
    """The MLP fits that train in one pass (heads.batched): per cache and batch-compatible spec, cut so that
    the distinct features a group holds in memory stay under max_bytes (train + val rows, float32). A fit
    whose features exceed its memory budget (FitSpec.max_memory) is left out: it streams alone."""
    from ..heads.batched import BATCHABLE, fit_key
    from ..heads.streaming import parse_memory

    budgets: dict[Any, int] = {}
    by_key: dict[tuple[Any, ...], list[Task]] = {}
    for task in todo:
        budget = budgets.setdefault(task.spec.max_memory, parse_memory(task.spec.max_memory))
        if task.head in BATCHABLE and 2 * _feature_bytes(task) <= budget:  # else: alone, streamed
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


def _fit_batch(tasks: list[Task]) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    from ..heads.batched import fit_heads

    results = fit_heads(tasks[0].source.cache, [t.spec for t in tasks])
    return [_record(r, t.spec, _task_info(t)) for r, t in zip(results, tasks, strict=True)]


def run_fits(todo: list[Task], jobs: int, save: Any, bar: Any, batched: bool = False,
             max_bytes: int = DEFAULT_BATCH_BYTES) -> None:
    """Make the fits: closed-form heads here (fast, all threads); with batched, the MLP fits that can share a
    pass trained together here (heads.batched: one pass of stacked heads beats one fit after another);
    the other trainable ones in `jobs` worker processes with cpus // jobs torch threads each (small heads
    scale better across processes than across threads)."""

    def done(task: Task, result: tuple[dict[str, Any], dict[str, np.ndarray]]) -> None:
        save(task, *result)
        if bar is not None:
            bar.update(1)

    batches = batch_groups(todo, max_bytes) if batched else []
    in_batches = {t.key for g in batches for t in g}
    todo = [t for t in todo if t.key not in in_batches]

    parallel = [t for t in todo if head_info(t.head).trainable] if jobs > 1 else []
    if len(parallel) < 2:
        parallel = []
    parallel.sort(key=lambda t: -t.width)  # widest (slowest) first: the pool then finishes sooner
    in_workers = {t.key for t in parallel}
    for task in todo:  # closed-form fits first (todo is sorted so): a partial run has their table
        if task.key in in_workers:
            continue
        if bar is not None:
            bar.set_postfix_str(f"{task.encoder} {task.layer}/{task.pool} {task.head} {task.target}", refresh=False)
        done(task, _fit_once(task))
    for group in batches:
        if bar is not None:
            bar.set_postfix_str(f"{group[0].encoder}: {len(group)} {group[0].head} fits in one pass", refresh=False)
        for task, result in zip(group, _fit_batch(group), strict=True):
            done(task, result)
    if not parallel:
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, available_cpus() // jobs)
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
