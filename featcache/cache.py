"""The feature cache: a Zarr v3 store with one array per split x layer x pooling, and its Python API.

Layout (stable, readable with plain zarr, xarray and dask):

    CACHE.zarr/                     attrs['featcache']: version, fingerprint and its parts, encoder,
                                    mask, noise, splits, generations, commands
      mask  (P,) bool               wave (P_kept,)
      <split>/index   (R,) int64    row in the source file (R = N x draws, draw-major)
      <split>/draw    (R,) int32
      <split>/labels/<column>   (R,)
      <split>/features/<layer>/<pool>   (R, D)   attrs: D, C, L, pooling, definition, generation
      <split>/maps/<layer>      (R, C, L')       with --keep-maps
      _done/g<k>/<split>  (n_blocks,) bool       one chunk per block: the explicit done markers

Work is done in row blocks aligned with the chunks. Each `extract` run that adds arrays is a generation;
a block of a generation is marked done only after all its arrays' data for that block is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FeatcacheError, choices_message

FORMAT_VERSION = 1
META_KEY = "featcache"


def _zarr():
    import zarr

    return zarr


@contextlib.contextmanager
def quiet_zarr_warnings() -> Iterator[None]:
    """zarr warns that consolidated metadata is not in the v3 spec yet; we know, and it is optional."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        yield


def open_root(path: str | os.PathLike[str], mode: str = "r") -> Any:
    """Open the store's root group, ignoring consolidated metadata (it may be stale while a run adds arrays)."""
    return _zarr().open_group(str(path), mode=mode, use_consolidated=False)


def feature_path(split: str, layer: str, pool: str) -> str:
    return f"{split}/features/{layer}/{pool}"


def map_path(split: str, layer: str) -> str:
    return f"{split}/maps/{layer}"


def marker_path(generation: int, split: str) -> str:
    return f"_done/g{generation}/{split}"


class CacheLock:
    """A flock beside the cache: two independent runs cannot write one cache.

    A plain run (or the rank that prepares a sharded one) holds it exclusively; the ranks of a sharded run
    hold it shared, each also holding its own shard's lock exclusively. The kernel drops a lock when its
    holder dies (even by SIGKILL), so no stale lock survives a crash.
    """

    def __init__(self, cache_path: Path, name: str = "lock"):
        self.path = cache_path.with_name(cache_path.name + f".{name}")
        self._handle: Any = None

    def acquire(self, description: str, *, shared: bool = False) -> CacheLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 -- held open for the lock's lifetime
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "the ranks of a sharded featcache extract"
            handle.close()
            raise FeatcacheError(f"cache {self.path.with_suffix('')} is being written by {holder}; wait for it "
                                 f"to finish (the lock {self.path} frees itself when that process ends)") from None
        if not shared:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({description})")
            handle.flush()
        self._handle = handle
        self._shared = shared
        return self

    def release(self) -> None:
        if self._handle is not None:
            if not self._shared:
                self._handle.truncate(0)
                self._handle.flush()
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> CacheLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class FeatureCache:
    """Read access to a feature cache: `featcache.open_cache(path).features("train", layer, pool)`."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise FeatcacheError(f"{self.path}: not a featcache cache (no zarr.json; run featcache extract)")
        self.root = open_root(self.path, "r")
        meta = self.root.attrs.get(META_KEY)
        if not isinstance(meta, dict):
            raise FeatcacheError(f"{self.path}: a Zarr store but not a featcache cache (no '{META_KEY}' attrs)")
        self.meta: dict[str, Any] = meta

    # -- description --------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    def _split(self, split: str) -> dict[str, Any]:
        if split not in self.meta["splits"]:
            raise FeatcacheError(f"{self.path}: " + choices_message("split", split, self.splits))
        return self.meta["splits"][split]

    def n_rows(self, split: str) -> int:
        return int(self._split(split)["n_rows"])

    def n_spectra(self, split: str) -> int:
        """Distinct spectra of a split (rows / draws)."""
        return int(self._split(split)["n_source"])

    def _arrays(self, split: str) -> dict[str, dict[str, Any]]:
        """{array path: {generation, layer, pool, ...}} for a split."""
        out: dict[str, dict[str, Any]] = {}
        for gen in self.meta["generations"]:
            for item in gen["arrays"]:
                if item["split"] == split:
                    out[item["path"]] = {**item, "generation": gen["id"]}
        return out

    def layers(self, split: str) -> list[str]:
        self._split(split)
        seen: list[str] = []
        for item in self._arrays(split).values():
            if item["kind"] == "features" and item["layer"] not in seen:
                seen.append(item["layer"])
        return seen

    def pools(self, split: str, layer: str) -> list[str]:
        layers = self.layers(split)
        if layer not in layers:
            raise FeatcacheError(f"{self.path}: " + choices_message(f"layer in split '{split}'", layer, layers))
        return [i["pool"] for i in self._arrays(split).values() if i["kind"] == "features" and i["layer"] == layer]

    def label_names(self, split: str) -> list[str]:
        return list(self._split(split)["labels"])

    # -- completion ---------------------------------------------------------------------------------
    def done_blocks(self, generation: int, split: str) -> np.ndarray:
        """Boolean per block: True where the generation's arrays are durably written."""
        try:
            return np.asarray(self.root[marker_path(generation, split)][:], dtype=bool)
        except KeyError:
            return np.zeros(int(self._split(split)["n_blocks"]), dtype=bool)

    def missing_blocks(self) -> dict[str, list[int]]:
        """{'g<k>/<split>': [block, ...]} for every block not yet done."""
        missing: dict[str, list[int]] = {}
        for gen in self.meta["generations"]:
            for split in gen["splits"]:
                todo = np.flatnonzero(~self.done_blocks(gen["id"], split)).tolist()
                if todo:
                    missing[f"g{gen['id']}/{split}"] = todo
        return missing

    def is_complete(self) -> bool:
        return not self.missing_blocks()

    def _require_complete(self, split: str, path: str) -> dict[str, Any]:
        arrays = self._arrays(split)
        if path not in arrays:
            raise KeyError(path)
        gen = arrays[path]["generation"]
        done = self.done_blocks(gen, split)
        if not done.all():
            raise FeatcacheError(f"{self.path}: '{path}' is incomplete ({int((~done).sum())} of {done.size} blocks "
                                 "missing); re-run the same featcache extract command to finish it")
        return arrays[path]

    # -- data ---------------------------------------------------------------------------------------
    def feature_array(self, split: str, layer: str, pool: str):
        """The lazy zarr array (R, D) of a feature (slicing reads only the chunks needed)."""
        self._split(split)
        path = feature_path(split, layer, pool)
        try:
            self._require_complete(split, path)
        except KeyError:
            if layer not in self.layers(split):
                raise FeatcacheError(f"{self.path}: " + choices_message(f"layer in split '{split}'", layer,
                                                                        self.layers(split))) from None
            raise FeatcacheError(f"{self.path}: " + choices_message(
                f"pooling of {layer} in split '{split}'", pool, self.pools(split, layer))) from None
        return self.root[path]

    def features(self, split: str, layer: str, pool: str, rows: slice | np.ndarray | None = None,
                 draw: int | None = None, dtype: Any = np.float32) -> np.ndarray:
        """Features (R, D) as numpy; `draw=0` keeps one noise draw per spectrum, `rows` slices."""
        array = self.feature_array(split, layer, pool)
        selection = self._select(split, rows, draw)
        return np.asarray(array[selection], dtype=dtype)

    def _select(self, split: str, rows: slice | np.ndarray | None, draw: int | None) -> slice | np.ndarray:
        if draw is not None:
            n = self.n_spectra(split)
            draws = int(self._split(split)["draws"])
            if not 0 <= draw < draws:
                raise FeatcacheError(f"{self.path}: split '{split}' has draws 0..{draws - 1}, not {draw}")
            base = slice(draw * n, (draw + 1) * n)  # draw-major: draw d is one contiguous block of rows
            if rows is None:
                return base
            return np.arange(base.start, base.stop)[rows]
        return slice(None) if rows is None else rows

    def maps(self, split: str, layer: str) -> Any:
        path = map_path(split, layer)
        try:
            self._require_complete(split, path)
        except KeyError:
            raise FeatcacheError(f"{self.path}: no maps of '{layer}' in split '{split}' (extract with "
                                 "--keep-maps)") from None
        return self.root[path]

    def labels(self, split: str, name: str, draw: int | None = None) -> np.ndarray:
        names = self.label_names(split)
        if name not in names:
            raise FeatcacheError(f"{self.path}: unknown label '{name}' in split '{split}'; available: "
                                 + ", ".join(names))
        return np.asarray(self.root[f"{split}/labels/{name}"][self._select(split, None, draw)])

    def index(self, split: str, draw: int | None = None) -> np.ndarray:
        self._split(split)
        return np.asarray(self.root[f"{split}/index"][self._select(split, None, draw)])

    def draws(self, split: str) -> np.ndarray:
        self._split(split)
        return np.asarray(self.root[f"{split}/draw"][:])

    @property
    def mask(self) -> np.ndarray:
        return np.asarray(self.root["mask"][:], dtype=bool)

    @property
    def wave(self) -> np.ndarray:
        return np.asarray(self.root["wave"][:])

    def feature_info(self, split: str, layer: str, pool: str) -> dict[str, Any]:
        return dict(self.feature_array(split, layer, pool).attrs)

    def info(self) -> dict[str, Any]:
        """Everything `featcache inspect CACHE` prints, as a dict."""
        splits = {}
        for split in self.splits:
            entry = dict(self.meta["splits"][split])
            entry["features"] = {layer: self.pools(split, layer) for layer in self.layers(split)}
            splits[split] = entry
        return {"path": str(self.path), "format": self.meta.get("format"), "version": self.meta.get("version"),
                "fingerprint": self.fingerprint, "parts": self.meta.get("parts"),
                "encoder": self.meta.get("encoder"), "mask": self.meta.get("mask"), "noise": self.meta.get("noise"),
                "direction": self.meta.get("direction"), "store_dtype": self.meta.get("store_dtype"),
                "splits": splits, "complete": self.is_complete(), "missing_blocks": self.missing_blocks(),
                "commands": self.meta.get("commands", [])}

    def __repr__(self) -> str:
        return f"FeatureCache('{self.path}', splits={self.splits}, fingerprint={self.fingerprint[:12]})"


def open_cache(path: str | os.PathLike[str]) -> FeatureCache:
    """Open a feature cache written by `featcache extract` for reading."""
    path = Path(path)
    if not path.exists():
        raise FeatcacheError(f"{path}: no such cache (run featcache extract first)")
    return FeatureCache(path)


def describe_cache(path: Path):
    """Text for `featcache inspect CACHE.zarr`."""
    from .inspection import Description

    cache = open_cache(path)
    info = cache.info()
    enc = info["encoder"] or {}
    lines = [f"feature cache {path}  (featcache {info['version']}, format {info['format']})",
             f"  fingerprint      {info['fingerprint']}",
             f"  encoder          {enc.get('tag', '?')} from {enc.get('source', '?')} "
             f"(dilation {enc.get('dilation')} from {enc.get('dilation_source', '?')})",
             f"  mask             {info['mask'].get('spec')}: {info['mask'].get('n_kept')} of "
             f"{info['mask'].get('n_pixels')} pixels kept",
             f"  noise            {json.dumps(info['noise'])}",
             f"  direction        {info['direction']}, stored as {info['store_dtype']}",
             f"  complete         {'yes' if info['complete'] else 'NO'}"]
    for key, blocks in info["missing_blocks"].items():
        shown = ", ".join(map(str, blocks[:20])) + (" ..." if len(blocks) > 20 else "")
        lines.append(f"    missing {key}: {len(blocks)} blocks ({shown})")
    for split, entry in info["splits"].items():
        lines.append(f"  split {split}: {entry['n_rows']} rows = {entry['n_source']} spectra x {entry['draws']} "
                     f"draws, from {entry['path']}[{entry['start']}:{entry['stop']}]")
        lines.append(f"    labels         {', '.join(entry['labels'])}")
        for layer, pools in entry["features"].items():
            widths = []
            for pool in pools:
                attrs = cache.root[feature_path(split, layer, pool)].attrs
                widths.append(f"{pool} ({attrs.get('D')})")
            lines.append(f"    {layer:<14} {', '.join(widths)}")
    return Description(info, "\n".join(lines))
