"""Running a plan: the pending blocks through reader thread -> encoder -> writer thread.

Work is split into row blocks aligned with the Zarr chunks. A background thread reads HDF5 and draws the
noise ahead of the encoder; one forward per batch computes every tap, every pooling reduces it; another
thread writes finished blocks and marks each done only after all its arrays are written, so a run killed
at any moment resumes to a bitwise-identical result.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache.layout import ArraySpec, marker_path, open_root
from ..cache.lock import CacheLock
from ..cache.reader import FeatureCache
from ..cache.writer import (
    Block,
    BlockWriter,
    SplitLayout,
    StoreSpec,
    check_out,
    check_store,
    consolidate,
    prepare_store,
)
from ..common.background import background
from ..common.device import configure_threads, local_rank
from ..common.errors import FeatcacheError
from ..common.files import check_not_inside_store
from ..common.progress import progress, status
from ..model.pooling import get_pooling
from ..model.taps import PSEUDO_LAYERS
from ..spectra.inputs import Inputs, read_inputs
from ..spectra.pfsspec import PfsDataset
from .options import ExtractOptions
from .plan import ExtractPlan, build_plan
from .shards import detect_shard, shard_blocks, wait_until_prepared

MAX_WAIT = 7 * 24 * 3600.0  # --wait: a shard gives up after at most a week
AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ExtractReport:
    path: Path
    fingerprint: str
    rows_done: int
    seconds: float
    up_to_date: bool
    arrays_added: list[str]
    complete: bool
    compute_seconds: float = 0.0  # the block pipeline alone (read, noise, encoder, pooling, write)

    @property
    def spectra_per_second(self) -> float:
        return self.rows_done / self.seconds if self.seconds > 0 else 0.0


@dataclass
class BlockTask(Block):
    """A block still to compute, with its split's rows and the arrays of the generations that lack it."""

    layout: SplitLayout = field(default=None)  # type: ignore[assignment]
    arrays: list[ArraySpec] = field(default_factory=list)


def pending_tasks(plan: ExtractPlan, meta: dict[str, Any], shard: tuple[int, int] | None = None) -> list[BlockTask]:
    """Blocks not yet done, with the arrays each needs; a shard I/N keeps its contiguous share of all blocks."""
    root = open_root(plan.options.out, "r")
    by_path = {a.path: a for a in plan.arrays}
    block_rows = plan.options.block_rows
    all_blocks = [(split, b) for split in plan.splits for b in range(meta["splits"][split.name]["n_blocks"])]
    done: dict[tuple[int, str], np.ndarray] = {}
    tasks: list[BlockTask] = []
    for split, block in shard_blocks(all_blocks, shard):
        arrays: list[ArraySpec] = []
        gens: list[int] = []
        for gen in meta["generations"]:
            if split.name not in gen["splits"]:
                continue
            key = (gen["id"], split.name)
            if key not in done:
                done[key] = np.asarray(root[marker_path(gen["id"], split.name)][:], dtype=bool)
            if done[key][block]:
                continue
            gens.append(gen["id"])
            for item in gen["arrays"]:
                if item["split"] != split.name:
                    continue
                if item["path"] not in by_path:
                    raise FeatcacheError(f"{plan.options.out}: an earlier unfinished run also asked for "
                                         f"'{item['path']}'; re-run that command (see featcache inspect) or "
                                         "include that layer and pooling")
                arrays.append(by_path[item["path"]])
        if gens:
            start = block * block_rows
            tasks.append(BlockTask(split.name, block, start, min(start + block_rows, split.n_rows), gens,
                                   split, arrays))
    return tasks


def read_block_inputs(plan: ExtractPlan, ds: PfsDataset, task: BlockTask) -> Inputs:
    """Masked noisy flux and sigma (rows, P_kept) for the block's output rows (draw-major: row r is draw
    r // N of source row r % N)."""
    split = task.layout
    parts = []
    r = task.row_start
    while r < task.row_stop:
        draw, offset = divmod(r, split.n_source)
        take = min(task.row_stop - r, split.n_source - offset)
        src0 = split.start + offset
        parts.append(read_inputs(ds, src0, src0 + take, plan.mask, plan.noise, stream=draw))
        r += take
    return Inputs.concatenate(parts)


def compute_block(plan: ExtractPlan, task: BlockTask, inputs: Inputs) -> dict[str, np.ndarray]:
    """Every requested array of one block: one encoder forward per batch for all taps and poolings."""
    opts = plan.options
    store = np.float16 if opts.store_dtype == "float16" else np.float32
    taps = sorted({a.layer for a in task.arrays if a.layer not in PSEUDO_LAYERS})
    n = len(inputs)
    outputs = {a.path: np.empty((n, *a.shape[1:]), dtype=store) for a in task.arrays}
    autocast = AUTOCAST[opts.dtype]
    pools = {a.pool: get_pooling(a.pool) for a in task.arrays if a.pool}
    pseudo = {"input_flux": inputs.noisy, "input_error": inputs.sigma}
    with torch.inference_mode():
        for b0 in range(0, n, plan.batch_size):
            b1 = min(b0 + plan.batch_size, n)
            maps: dict[str, torch.Tensor] = {}
            if taps and plan.lean is not None:
                x = torch.from_numpy(Inputs(inputs.noisy[b0:b1], inputs.sigma[b0:b1]).encoder_input(
                    plan.lean.config.input_sigma))
                if plan.device.type == "cuda":  # pinned host memory makes the copy asynchronous
                    x = x.pin_memory()
                x = x.to(plan.device, non_blocking=True)
                cast = (torch.autocast(device_type=plan.device.type, dtype=autocast) if autocast is not None
                        else contextlib.nullcontext())
                with cast:
                    maps.update(plan.lean.encode(x, opts.direction))
            for name, source in pseudo.items():
                if any(a.layer == name for a in task.arrays):
                    maps[name] = torch.from_numpy(source[b0:b1, None, :])
            for array in task.arrays:
                h = maps[array.layer].float()
                values = pools[array.pool](h) if array.kind == "features" else h
                outputs[array.path][b0:b1] = values.cpu().numpy()
    return outputs


def execute(plan: ExtractPlan, tasks: list[BlockTask], on_block: Callable[[BlockTask], None] | None = None) -> int:
    """Run the pending blocks: reader thread -> encoder -> writer thread. Returns rows computed."""
    if not tasks:
        return 0
    root = open_root(plan.options.out, "r+")
    datasets: dict[str, PfsDataset] = {}

    def produce() -> Iterator[tuple[BlockTask, Inputs]]:
        for task in tasks:
            key = str(task.layout.path)
            if key not in datasets:
                datasets[key] = PfsDataset(task.layout.path)
            yield task, read_block_inputs(plan, datasets[key], task)

    total = sum(t.row_stop - t.row_start for t in tasks)
    writer = BlockWriter(root)
    rows_done = 0
    try:
        with progress(total=total, desc="extract", unit="spectra") as bar:
            for task, inputs in background(produce(), depth=2):
                writer.submit(task, compute_block(plan, task, inputs))
                rows_done += task.row_stop - task.row_start
                bar.update(task.row_stop - task.row_start)
                if on_block is not None:
                    on_block(task)
    finally:
        writer.close()
        for ds in datasets.values():
            ds.close()
    return rows_done


def _read_labels(split: SplitLayout) -> dict[str, np.ndarray]:
    with PfsDataset(split.path) as ds:
        return ds.labels(split.labels, split.start, split.stop)


def _finish(plan: ExtractPlan, rows: int, added: list[str]) -> bool:
    """Consolidate metadata once the cache is complete (one rank does it; others skip)."""
    complete = FeatureCache(plan.options.out).is_complete()
    if complete and (rows or added):
        try:
            with CacheLock(plan.options.out, "consolidate.lock").acquire("consolidating metadata"):
                consolidate(plan.options.out)
        except FeatcacheError:
            pass  # another rank is consolidating the same metadata
    return complete


def staging_path(out: Path) -> Path:
    """Where --overwrite builds the replacement of a cache: beside it, so the old one stays whole until then."""
    return out.with_name(out.name + ".new")


def _replacing(opts: ExtractOptions, store: StoreSpec) -> bool:
    """Whether this run replaces the cache at --out (--overwrite of a cache made otherwise, or damaged)."""
    return bool(opts.overwrite) and (opts.out / "zarr.json").exists() and check_store(store) is None


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories: atomically where the kernel can (renameat2 RENAME_EXCHANGE), else by two renames
    (a kill between them leaves `a` absent, `b` the new cache and a hidden copy of the old one)."""
    import ctypes
    import os

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, rename_exchange = -100, 2
        if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
    except (AttributeError, OSError):
        pass
    aside = a.with_name(f".{a.name}.old-{os.getpid()}")
    os.rename(a, aside)
    os.rename(b, a)
    os.rename(aside, b)


def swap_into_place(out: Path, staging: Path) -> None:
    """The complete replacement takes the place of the cache at `out`; the old cache is then removed."""
    _exchange(out, staging)
    shutil.rmtree(staging, ignore_errors=True)
    for lock in staging.parent.glob(staging.name + ".*lock"):
        lock.unlink(missing_ok=True)
    status(f"{out}: replaced by the new cache (built beside it in {staging.name}, now removed)")


def _swap_when_complete(out: Path, staging: Path, fingerprint: str, *, locked: bool) -> None:
    """After the last block of a replacement: swap it into place (a sharded run's ranks race for out's lock;
    one swaps, the others find it done)."""
    def swap() -> None:
        if (staging / "zarr.json").exists() and FeatureCache(staging).fingerprint == fingerprint \
                and FeatureCache(staging).is_complete():
            swap_into_place(out, staging)

    if locked:
        swap()
        return
    try:
        with CacheLock(out).acquire("replacing the cache with its complete replacement"):
            swap()
    except FeatcacheError:
        pass  # another rank holds the lock: it swaps


def _compute(plan: ExtractPlan, meta: dict[str, Any], shard: tuple[int, int] | None) -> tuple[int, bool, float]:
    """(rows computed, whether nothing was pending, seconds of the block pipeline)."""
    tasks = pending_tasks(plan, meta, shard)
    started = time.perf_counter()
    rows = execute(plan, tasks)
    return rows, not tasks, time.perf_counter() - started


def run_extract(opts: ExtractOptions) -> ExtractReport:
    """Plan, prepare, compute what is missing, consolidate. Safe to re-run; resumes after a kill.

    Sharded (--shard I/N, torchrun or srun): rank 0 prepares the store, every rank computes its own
    contiguous, chunk-aligned share of the blocks, and the last to finish consolidates the metadata.
    """
    if not 0 <= float(opts.wait_seconds) <= MAX_WAIT:
        raise FeatcacheError(f"--wait {opts.wait_seconds}: expected seconds in 0..{MAX_WAIT:.0f} (a week)")
    shard, shard_source = detect_shard(opts.shard)
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise FeatcacheError(f"shard {shard[0]}/{shard[1]} from {shard_source}: expected 0 <= I < N")
    if opts.device == "auto" and shard is not None and torch.cuda.is_available():
        opts.device = f"cuda:{local_rank()[0] % torch.cuda.device_count()}"
    out = opts.out
    check_out(out)  # cheap: before the plan reads and hashes every input
    check_not_inside_store(out, "--out")
    plan = build_plan(opts)
    configure_threads(plan.device, opts.threads, "encoder")
    started = time.perf_counter()
    store = plan.store_spec()
    if shard is None or shard[0] == 0 or opts.prepare_only:
        check_store(store)  # a refusal before the lock file or anything else exists
    replacing = _replacing(opts, store)
    if replacing:  # built beside the old cache, which stays complete and usable until the new one is
        plan.options = replace(opts, out=staging_path(out))
        check_out(plan.options.out)
        store = plan.store_spec()
        status(f"{out}: --overwrite builds the new cache beside it in {plan.options.out} (the old one stays until the "
               "new one is complete)")
    target = plan.options.out

    def finished(rows: int, up_to_date: bool, added: list[str], complete: bool, compute: float) -> ExtractReport:
        return ExtractReport(out, plan.fingerprint, rows, time.perf_counter() - started, up_to_date, added, complete,
                             compute)

    if opts.prepare_only or shard is None:
        with CacheLock(out).acquire(opts.command):
            meta, added = _prepare(store)
            if opts.prepare_only:
                return finished(0, False, added, FeatureCache(target).is_complete(), 0.0)
            rows, up_to_date, compute = _compute(plan, meta, None)
            complete = _finish(plan, rows, added)
            if replacing and complete:
                _swap_when_complete(out, target, plan.fingerprint, locked=True)
        return finished(rows, up_to_date, added, complete, compute)
    added = []
    if shard[0] == 0:
        with CacheLock(target).acquire(f"{opts.command} [preparing for {shard[1]} shards]"):
            meta, added = _prepare(store)
    else:
        meta = wait_until_prepared(plan, shard)
    status(f"shard {shard[0]}/{shard[1]} (from {shard_source}) on {plan.device}")
    with CacheLock(target).acquire(opts.command, shared=True), \
            CacheLock(target, f"shard-{shard[0]}-of-{shard[1]}.lock").acquire(opts.command):
        rows, up_to_date, compute = _compute(plan, meta, shard)
    complete = _finish(plan, rows, added)
    if replacing and complete:
        _swap_when_complete(out, target, plan.fingerprint, locked=False)
    return finished(rows, up_to_date, added, complete, compute)


def _prepare(store: StoreSpec) -> tuple[dict[str, Any], list[str]]:
    """prepare_store; a store this call created and could not finish preparing (a full disk, say) is removed,
    so the next run starts clean instead of meeting half-written metadata."""
    created = not (store.path / "zarr.json").exists()
    try:
        return prepare_store(store, _read_labels)
    except BaseException:
        if created:
            shutil.rmtree(store.path, ignore_errors=True)
        raise
