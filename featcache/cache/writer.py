"""Writing a cache: create or validate the store, add a generation of arrays, write blocks, mark them done.

The rules that make a cache trustworthy live here, apart from what computes the numbers:
- a store made from other inputs (another fingerprint) is refused, or replaced with overwrite;
- each run that adds arrays adds a *generation*, with one done-marker array per split (one chunk per block);
- a block's marker is set only after every array of that block is written, so a run killed at any moment
  leaves a cache whose unmarked blocks are recomputed by the next run, bitwise the same.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..common.errors import FeatcacheError
from .fingerprint import describe_changes
from .layout import (
    COORDINATES_ATTR,
    FORMAT_VERSION,
    MASK_DIMS,
    META_KEY,
    READABLE_FORMATS,
    ROW_DIM,
    ROW_HASH,
    ROW_HASH_DIMS,
    SPLIT_COORDINATES,
    WAVE_DIMS,
    ArraySpec,
    marker_dims,
    marker_path,
    open_root,
    quiet_zarr_warnings,
)


@dataclass
class SplitLayout:
    """The rows of one split in the cache: source rows [start, stop) of a file, each `draws` times."""

    name: str
    path: Path
    start: int
    stop: int
    draws: int
    labels: list[str]
    identity: dict[str, Any]
    row_hash: np.ndarray | None = None  # (n_source, 2) uint64: each spectrum's content hash (pfsspec.row_hashes)
    nan_flux: dict[str, Any] | None = None  # spectra with NaN flux pixels (RowScan.nan_summary)

    @property
    def n_source(self) -> int:
        return self.stop - self.start

    @property
    def n_rows(self) -> int:
        return self.n_source * self.draws

    def meta(self, block_rows: int) -> dict[str, Any]:
        return {"path": str(self.path), "start": self.start, "stop": self.stop, "n_source": self.n_source,
                "draws": self.draws, "n_rows": self.n_rows, "labels": self.labels,
                "n_blocks": -(-self.n_rows // block_rows), "identity": self.identity,
                **({"nan_flux": self.nan_flux} if self.nan_flux is not None else {})}


@dataclass
class StoreSpec:
    """Everything the writer needs to create (or check) a store; `attrs` are the producer's own metadata
    (encoder, mask, noise, ...) stored beside the layout's keys."""

    path: Path
    fingerprint: str
    parts: dict[str, Any]
    attrs: dict[str, Any]
    mask: np.ndarray
    wave: np.ndarray
    splits: list[SplitLayout]
    arrays: list[ArraySpec]
    block_rows: int
    store_dtype: str
    command: str
    overwrite: bool = False


LabelReader = Callable[[SplitLayout], dict[str, np.ndarray]]


def _create_base(root: Any, spec: StoreSpec, read_labels: LabelReader) -> None:
    """mask, wave, and per split index / draw / labels (small arrays, written at once), each with its
    dimension names; the groups' `coordinates` attributes make index, draw and the labels xarray coordinates."""
    root.create_array("mask", data=spec.mask, chunks=spec.mask.shape, overwrite=True, dimension_names=MASK_DIMS)
    root.create_array("wave", data=spec.wave, chunks=spec.wave.shape, overwrite=True, dimension_names=WAVE_DIMS)
    for split in spec.splits:
        group = root.require_group(split.name)
        n, draws = split.n_source, split.draws
        rows = max(min(spec.block_rows, split.n_rows), 1)
        index = np.tile(np.arange(split.start, split.stop, dtype=np.int64), draws)
        draw = np.repeat(np.arange(draws, dtype=np.int32), n)
        for name, values in zip(SPLIT_COORDINATES, (index, draw), strict=True):
            group.create_array(name, data=values, chunks=(rows,), overwrite=True, dimension_names=[ROW_DIM])
        group.attrs[COORDINATES_ATTR] = " ".join(SPLIT_COORDINATES)
        _write_row_hash(group, split, rows)
        labels = group.require_group("labels")
        columns = read_labels(split) if split.labels else {}
        for name, column in columns.items():
            column = np.asarray(column)
            if column.dtype == bool:
                column = column.astype(np.int8)
            labels.create_array(name, data=np.tile(column, draws), chunks=(rows,), overwrite=True,
                                dimension_names=[ROW_DIM])
        labels.attrs[COORDINATES_ATTR] = " ".join(columns)


def _write_row_hash(group: Any, split: SplitLayout, rows: int) -> None:
    """<split>/row_hash (R, 2) uint64: the content hash of each row's spectrum, tiled over draws like index."""
    if split.row_hash is None:
        return
    values = np.tile(np.asarray(split.row_hash, dtype=np.uint64), (split.draws, 1))
    group.create_array(ROW_HASH, data=values, chunks=(rows, 2), overwrite=True, dimension_names=ROW_HASH_DIMS)


def _add_row_hashes(root: Any, spec: StoreSpec) -> None:
    """A store prepared before featcache kept row hashes gets them now (the fingerprint does not change: they
    are derived from the content it already identifies)."""
    for split in spec.splits:
        if split.row_hash is not None and ROW_HASH not in root[split.name]:
            _write_row_hash(root[split.name], split, max(min(spec.block_rows, split.n_rows), 1))


def _base_meta(spec: StoreSpec) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "version": __version__, "fingerprint": spec.fingerprint, "parts": spec.parts,
            **spec.attrs, "block_rows": spec.block_rows,
            "splits": {s.name: s.meta(spec.block_rows) for s in spec.splits}, "generations": [], "prepared": False,
            "commands": [], "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def check_out(path: Path) -> None:
    """--out may be absent, an empty directory or a cache; anything else is refused before any work."""
    if path.exists() and not path.is_dir():
        raise FeatcacheError(f"--out {path}: is a file, expected a cache directory (NAME.zarr)")
    if path.is_dir() and not (path / "zarr.json").exists() and any(path.iterdir()):
        raise FeatcacheError(f"--out {path}: exists and is not a featcache cache; refusing to write into it")


def check_store(spec: StoreSpec) -> dict[str, Any] | None:
    """The store's metadata when it is this fingerprint's; None when there is none yet (or overwrite will
    replace it); otherwise a refusal naming what changed, or why the store's format cannot take the request.
    Reads only: safe before taking the lock."""
    out = spec.path
    check_out(out)
    if not (out / "zarr.json").exists():
        return None
    try:
        existing = open_root(out, "r").attrs.get(META_KEY)
    except Exception as exc:  # noqa: BLE001 -- zarr's errors for a damaged zarr.json
        if spec.overwrite:
            return None
        raise FeatcacheError(f"--out {out}: damaged cache metadata ({str(exc).splitlines()[0][:160]}); use "
                             "--overwrite to replace it") from None
    if not isinstance(existing, dict):
        raise FeatcacheError(f"--out {out}: a Zarr store that is not a featcache cache; choose another path")
    if existing.get("fingerprint") == spec.fingerprint:
        if _format_takes(existing, spec):
            return existing
        if not spec.overwrite:
            raise FeatcacheError(_format_refusal(out, existing.get("format")))
        return None
    if not spec.overwrite:
        changes = describe_changes(existing.get("parts", {}), spec.parts)
        raise FeatcacheError(f"--out {out}: the cache was made from other inputs ({'; '.join(changes)}); "
                             "use --overwrite to replace it or choose another --out")
    return None


def _format_takes(existing: dict[str, Any], spec: StoreSpec) -> bool:
    """Whether a store with this fingerprint can take the request: one of this format, or an older readable one
    that already has every requested array (re-runs and resumes fill its blocks; formats never mix in a store)."""
    store_format = existing.get("format")
    if store_format == FORMAT_VERSION:
        return True
    present = {a["path"] for g in existing.get("generations", []) for a in g["arrays"]}
    return store_format in READABLE_FORMATS and all(array.path in present for array in spec.arrays)


def _format_refusal(out: Path, store_format: Any) -> str:
    if store_format in READABLE_FORMATS:
        return (f"--out {out}: a format-{store_format} cache (an older featcache wrote it); it stays readable, but "
                f"new arrays go only into a format-{FORMAT_VERSION} cache: use --overwrite to re-extract it, or "
                "choose another --out")
    return (f"--out {out}: cache format {store_format!r} is not one featcache {__version__} writes (format "
            f"{FORMAT_VERSION}); upgrade featcache, use --overwrite to replace it, or choose another --out")


def _existing_meta(spec: StoreSpec) -> dict[str, Any] | None:
    """check_store under the lock, removing a store that --overwrite replaces."""
    meta = check_store(spec)
    if meta is None and (spec.path / "zarr.json").exists():
        shutil.rmtree(spec.path)
    return meta


def prepare_store(spec: StoreSpec, read_labels: LabelReader) -> tuple[dict[str, Any], list[str]]:
    """Create or validate the store and add a generation for requested arrays it lacks.

    Returns the metadata and the paths of the arrays added. Only one process (rank 0) calls this, under the
    cache's exclusive lock.
    """
    meta = _existing_meta(spec)
    root = open_root(spec.path, "a")
    if meta is None or not meta.get("prepared"):
        meta = _base_meta(spec)
        root.attrs[META_KEY] = meta
        _create_base(root, spec, read_labels)
        meta["prepared"] = True
        root.attrs[META_KEY] = meta
    else:
        _add_row_hashes(root, spec)
    existing = {a["path"]: a for g in meta["generations"] for a in g["arrays"]}
    for array in spec.arrays:
        old = existing.get(array.path)
        if old and old.get("definition") != array.attrs.get("definition"):
            raise FeatcacheError(f"{spec.path}: '{array.path}' was computed with another definition "
                                 f"({old.get('definition')!r}); use --overwrite")
    new = [a for a in spec.arrays if a.path not in existing]
    added = _add_generation(root, meta, spec, new) if new else []
    meta["commands"] = [*meta.get("commands", []), spec.command][-20:]
    root.attrs[META_KEY] = meta
    return meta, added


def _add_generation(root: Any, meta: dict[str, Any], spec: StoreSpec, new: list[ArraySpec]) -> list[str]:
    gen_id = len(meta["generations"])
    order = [s.name for s in spec.splits]
    splits_in_gen = sorted({a.split for a in new}, key=order.index)
    for array in new:
        rows = min(spec.block_rows, array.shape[0])
        created = root.create_array(array.path, shape=array.shape, chunks=(rows, *array.shape[1:]),
                                    dtype=spec.store_dtype, fill_value=np.nan, overwrite=True,
                                    dimension_names=array.dimension_names)
        created.attrs.update({**array.attrs, "generation": gen_id})
    for split in splits_in_gen:
        n_blocks = meta["splits"][split]["n_blocks"]
        root.create_array(marker_path(gen_id, split), shape=(n_blocks,), chunks=(1,), dtype="bool",
                          fill_value=False, overwrite=True, dimension_names=marker_dims(split))
    meta["generations"].append({"id": gen_id, "arrays": [a.as_meta() for a in new], "splits": splits_in_gen,
                                "command": spec.command, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return [a.path for a in new]


@dataclass
class Block:
    """Rows [row_start, row_stop) of one split: the unit of work, of writing and of the done markers."""

    split: str
    block: int
    row_start: int
    row_stop: int
    generations: list[int]


class BlockWriter:
    """Writes finished blocks in a thread; marks a block done only after all its arrays are written."""

    def __init__(self, root: Any, depth: int = 2):
        self.root = root
        self.jobs: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="featcache-writer")
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is not None:
                continue
            try:
                block, outputs = job
                for path, values in outputs.items():
                    self.root[path][block.row_start:block.row_stop] = values
                for gen in block.generations:
                    self.root[marker_path(gen, block.split)][block.block] = True
            except BaseException as exc:  # noqa: BLE001 -- re-raised in the main thread
                self.error = exc

    def submit(self, block: Block, outputs: dict[str, np.ndarray]) -> None:
        if self.error is not None:
            raise self.error
        self.jobs.put((block, outputs))

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def consolidate(path: Path) -> None:
    """Write consolidated metadata (one read opens the whole store) once a run has completed the cache."""
    import zarr

    with quiet_zarr_warnings():
        zarr.consolidate_metadata(str(path))
