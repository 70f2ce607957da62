"""The bounds of a cache's spectra, computed from the files, mask and noise the cache was extracted with, and
stored beside its labels: `<split>/bounds/<source>/<parameter>` (FORMAT.md, "Bounds").

A source's group is written under a temporary name and renamed into place only when every array is
written, so a killed run leaves the previous bounds (or none), never a half-written group; the cache's
writers' lock is held throughout. The files are checked against the cache first: the labels of the split's
rows must be the ones the cache stored (another file at the same path is refused).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cache.layout import BOUNDS_ATTR, ROW_DIM, bounds_group, open_root
from ..cache.lock import CacheLock
from ..cache.reader import FeatureCache, open_cache
from ..common.errors import FeatcacheError, choices_message
from ..common.progress import status
from ..spectra.pfsspec import PfsDataset
from .api import Bounds, bounds, resolve_source
from .cannon import CannonModel, PiecewiseCannon
from .training import MAX_TRAIN, fit_cannon

BOUNDS_FORMAT = 1


def cache_noise(cache: FeatureCache) -> tuple[str, float, int]:
    """(mode, level, seed) of the noise the cache's encoder saw (format 1 and 2 metadata alike)."""
    noise = cache.metadata.noise or {}
    parts = (cache.metadata.parts or {}).get("noise") or {}
    mode = str(noise.get("mode") or parts.get("mode") or "generated")
    level = noise.get("level") if noise.get("level") is not None else parts.get("level")
    seed = noise.get("seed") if noise.get("seed") is not None else parts.get("seed")
    return mode, float(level if level is not None else 1.0), int(seed if seed is not None else 42)


def split_source(cache: FeatureCache, split: str) -> tuple[Path, int, int]:
    """The file and [start, stop) rows a split was extracted from, checked against the cache's labels."""
    entry = cache.split_info(split)
    path, start, stop = Path(entry.path), int(entry.start), int(entry.stop)
    if not path.exists():
        raise FeatcacheError(f"{cache.path}: split '{split}' was extracted from {path}, which no longer exists")
    with PfsDataset(path) as ds:
        if ds.n_rows < stop:
            raise FeatcacheError(f"{path}: has {ds.n_rows} rows, but split '{split}' of {cache.path} is rows "
                                 f"{start}:{stop}; the file changed since extraction")
        names = [n for n in cache.label_names(split) if n in ds.label_names()]
        table = ds.labels(names, start, stop)
    for name in names:
        stored = np.asarray(cache.labels(split, name, draw=0), dtype=np.float64)
        now = np.asarray(table[name], dtype=np.float64)
        if not np.array_equal(stored, now, equal_nan=True):
            raise FeatcacheError(f"{path}: label '{name}' of rows {start}:{stop} differs from what {cache.path} "
                                 f"stored for split '{split}'; the file changed since extraction (re-extract)")
    return path, start, stop


def _request(source: str, order: int, train_on: str, train_split: str, steps: dict[str, float] | None,
             cells: Any, max_train: int | None) -> dict[str, Any]:
    if source == "synth":
        return {"source": source, "steps": dict(sorted((steps or {}).items()))}
    return {"source": source, "order": int(order), "train_on": train_on, "train_split": train_split,
            "cells": cells if isinstance(cells, str) or cells is None else list(cells), "max_train": max_train}


def cache_bounds(cache_path: str | os.PathLike[str], *, source: str = "auto", splits: Sequence[str] | None = None,
                 train_split: str = "train", order: int = 2, train_on: str = "flux",
                 steps: dict[str, float] | None = None, cells: str | Sequence[int] | None = "auto",
                 max_train: int | None = MAX_TRAIN, overwrite: bool = False, workers: int = 1,
                 show_progress: bool = True) -> dict[str, Bounds]:
    """Compute the bounds of every split (or `splits`) of a cache and store them in it. An existing source
    group with the same request is kept (returned as stored); another request needs overwrite."""
    cache = open_cache(cache_path)
    wanted = list(splits) if splits else cache.splits
    for split in wanted:
        if split not in cache.splits:
            raise FeatcacheError(f"{cache.path}: " + choices_message("split", split, cache.splits))
    sources = {split: split_source(cache, split) for split in wanted}
    with PfsDataset(sources[wanted[0]][0]) as ds:
        kind = resolve_source(source, ds)
    request = _request(kind, order, train_on, train_split, steps, cells, max_train)
    todo = []
    for split in wanted:
        if kind in cache.bound_sources(split):
            old = cache.bounds_info(split, kind).get("request")
            if old == request and not overwrite:
                continue
            if not overwrite:
                def words(r: dict[str, Any]) -> str:
                    return ", ".join(f"{k} {v}" for k, v in (r or {}).items() if k != "source")

                raise FeatcacheError(f"{cache.path}: split '{split}' has {kind} bounds made with {words(old)}; pass "
                                     f"--overwrite to replace them with {words(request)}")
        todo.append(split)
    mode, level, seed = cache_noise(cache)
    model: CannonModel | PiecewiseCannon | None = None
    if kind == "cannon" and todo:
        if train_split not in cache.splits:
            raise FeatcacheError(f"{cache.path}: " + choices_message("--train-split", train_split, cache.splits))
        path, start, stop = sources.get(train_split) or split_source(cache, train_split)
        used = stop - start if max_train is None else min(stop - start, int(max_train))
        status(f"bounds: fitting the Cannon model (order {order}, {train_on}) on {used} spectra of "
               f"'{train_split}' ({path})")
        model = fit_cannon(path, (start, stop), order=order, train_on=train_on, noise_level=level, noise=mode,
                           noise_seed=seed, cells=cells, max_train=max_train, show_progress=show_progress)
    out: dict[str, Bounds] = {}
    mask = cache.mask
    with CacheLock(cache.path).acquire("featcache bounds"):
        for split in todo:
            path, start, stop = sources[split]
            result = bounds(path, mask, rows=(start, stop), source=kind, noise_level=level, noise=mode,
                            model=model, steps=steps, workers=workers, show_progress=show_progress)
            write_bounds(cache, split, result, request)
            out[split] = result
        if todo:
            _consolidate(cache.path)
    cache = open_cache(cache.path)
    for split in wanted:
        if split not in out:
            out[split] = stored_bounds(cache, split, kind)
    return out


def stored_bounds(cache: FeatureCache, split: str, source: str | None = None) -> Bounds:
    """A split's bounds as a `Bounds` (draw 0's rows: one per spectrum)."""
    source = source or (cache.bound_sources(split) or [""])[0]
    info = cache.bounds_info(split, source)
    values = cache.bounds(split, source, draw=0)
    prior = {k: (float(v[0]), float(v[1])) for k, v in (info.get("prior") or {}).items()}
    return Bounds(values, source, prior, info.get("settings") or {})


def write_bounds(cache: FeatureCache, split: str, result: Bounds, request: dict[str, Any]) -> None:
    """Store one split's bounds (tiled over its noise draws, like the labels) under a temporary group, then
    move it into place. The caller holds the cache's lock."""
    root = open_root(cache.path, "a")
    draws = int(cache.split_info(split).draws)
    rows = max(1, min(int(cache.metadata.extra.get("block_rows") or 1024), cache.n_rows(split)))
    final = bounds_group(split, result.source)
    temp = bounds_group(split, f"_new_{result.source}")
    root.require_group(bounds_group(split))
    group = root.create_group(temp, overwrite=True)
    for name, values in result.values.items():
        group.create_array(name, data=np.tile(np.asarray(values, dtype=np.float64), draws), chunks=(rows,),
                           overwrite=True, dimension_names=[ROW_DIM])
    group.attrs[BOUNDS_ATTR] = {
        "format": BOUNDS_FORMAT, "source": result.source, "parameters": result.parameters,
        "units": {n: ("v/c" if n == "redshift" else "label") for n in result.parameters},
        "prior": {k: list(v) for k, v in result.prior.items()}, "settings": _plain(result.settings),
        "request": request, "cache_fingerprint": cache.fingerprint, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "complete": True}
    base = Path(cache.path)
    new_dir, final_dir = base / temp, base / final
    old_dir = base / bounds_group(split, f"_old_{result.source}")
    if old_dir.exists():
        shutil.rmtree(old_dir)
    if final_dir.exists():
        final_dir.rename(old_dir)
    new_dir.rename(final_dir)
    if old_dir.exists():
        shutil.rmtree(old_dir)


def _plain(value: Any) -> Any:
    from ..common.serialise import plain

    return plain(value, finite_only=True)


def _consolidate(path: Path) -> None:
    """Refresh the consolidated metadata a completed cache carries, so readers that use it see the bounds."""
    from ..cache.writer import consolidate

    consolidate(Path(path))
