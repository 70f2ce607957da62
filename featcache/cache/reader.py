"""Reading a cache: `featcache.open_cache(path).features("train", layer, pool)` and the lazy row views that
the heads stream from. A reader never sees a half-written array: every accessor refuses one whose blocks are
not all marked done."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..common.errors import FeatcacheError, choices_message
from .fingerprint import provenance
from .layout import (
    BOUND_SOURCES,
    BOUNDS_ATTR,
    META_KEY,
    READABLE_FORMATS,
    ROW_HASH,
    bounds_group,
    feature_path,
    label_path,
    map_path,
    marker_path,
    open_root,
    row_path,
)
from .metadata import CacheMetadata, SplitMetadata


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:160] if text else type(exc).__name__)


def read_rows(array: Any, selection: Any, cache_path: Path, dtype: Any = None) -> np.ndarray:
    """array[selection] as numpy; a damaged chunk is an error naming the cache, the array and the rows."""
    try:
        values = array[selection]
    except Exception as exc:  # zarr and its codecs raise many kinds for truncated or corrupt chunks
        rows = f"{selection.start}:{selection.stop}" if isinstance(selection, slice) else "selected"
        raise FeatcacheError(f"{cache_path}: cannot read '{array.path}' rows {rows} (a damaged chunk? "
                             f"{_reason(exc)}); re-extract the cache with --overwrite") from None
    return np.asarray(values) if dtype is None else np.asarray(values, dtype=dtype)


class FeatureCache:
    """Read access to a feature cache: `featcache.open_cache(path).features("train", layer, pool)`."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise FeatcacheError(f"{self.path}: not a featcache cache (no zarr.json; run featcache extract)")
        try:
            self.root = open_root(self.path, "r")
            meta = self.root.attrs.get(META_KEY)
        except Exception as exc:  # zarr raises JSON, value and key errors for damaged metadata
            raise FeatcacheError(f"{self.path}: damaged cache metadata (zarr.json: {_reason(exc)}); re-extract "
                                 "it with --overwrite") from None
        if not isinstance(meta, dict):
            raise FeatcacheError(f"{self.path}: a Zarr store but not a featcache cache (no '{META_KEY}' attrs)")
        if meta.get("format") not in READABLE_FORMATS:
            raise FeatcacheError(f"{self.path}: cache format {meta.get('format')!r} is not one featcache {__version__} "
                                 f"reads ({', '.join(map(str, READABLE_FORMATS))}); upgrade featcache")
        self.meta: dict[str, Any] = meta  # the attrs as stored (cache/ only; everything else asks `metadata`)
        self.metadata = CacheMetadata.from_dict(meta, str(self.path))
        self.checked_roles: set[tuple[str, ...]] = set()  # role splits whose spectra were found disjoint

    # -- description --------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.metadata.fingerprint

    @property
    def format(self) -> int:
        """The layout version (FORMAT.md): 2 names every dimension for xarray; 1 is read the same way."""
        return self.metadata.format

    @property
    def splits(self) -> list[str]:
        return list(self.metadata.splits)

    def split_info(self, split: str) -> SplitMetadata:
        """A split's metadata (rows, spectra, draws, labels, blocks, file identity); an unknown name lists them."""
        if split not in self.metadata.splits:
            raise FeatcacheError(f"{self.path}: " + choices_message("split", split, self.splits))
        return self.metadata.splits[split]

    def n_rows(self, split: str) -> int:
        return int(self.split_info(split).n_rows)

    def n_spectra(self, split: str) -> int:
        """Distinct spectra of a split (rows / draws)."""
        return int(self.split_info(split).n_source)

    def _arrays(self, split: str) -> dict[str, dict[str, Any]]:
        """{array path: {generation, layer, pool, ...}} for a split."""
        out: dict[str, dict[str, Any]] = {}
        for gen in self.metadata.generations:
            for item in gen.arrays:
                if item["split"] == split:
                    out[item["path"]] = {**item, "generation": gen.id}
        return out

    def layers(self, split: str) -> list[str]:
        self.split_info(split)
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

    def split_rows(self, split: str) -> tuple[int, int]:
        """[start, stop) of the split's source rows in its file."""
        entry = self.split_info(split)
        return int(entry.start), int(entry.stop)

    def split_identity(self, split: str) -> str:
        """The split's file content hash (the same for copies of one file), else its real path."""
        entry = self.split_info(split)
        return str((entry.identity or {}).get("hash") or os.path.realpath(entry.path))

    def row_hashes(self, split: str) -> np.ndarray | None:
        """(N, 2) uint64: the content hash of each spectrum of the split (draw 0's rows, in order), or None for
        a cache made before featcache kept them (FORMAT.md)."""
        self.split_info(split)
        try:
            array = self.root[row_path(split, ROW_HASH)]
        except KeyError:
            return None
        return read_rows(array, self.row_selection(split, None, 0), self.path, np.uint64)

    def label_names(self, split: str) -> list[str]:
        return list(self.split_info(split).labels)

    # -- completion ---------------------------------------------------------------------------------
    def done_blocks(self, generation: int, split: str) -> np.ndarray:
        """Boolean per block: True where the generation's arrays are durably written."""
        try:
            return read_rows(self.array(marker_path(generation, split)), slice(None), self.path, bool)
        except KeyError:
            return np.zeros(int(self.split_info(split).n_blocks), dtype=bool)

    def missing_blocks(self) -> dict[str, list[int]]:
        """{'g<k>/<split>': [block, ...]} for every block not yet done."""
        missing: dict[str, list[int]] = {}
        for gen in self.metadata.generations:
            for split in gen.splits:
                todo = np.flatnonzero(~self.done_blocks(gen.id, split)).tolist()
                if todo:
                    missing[f"g{gen.id}/{split}"] = todo
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
        """The lazy zarr array (R, D) of a feature (slicing reads only the chunks needed). Pool 'maps' is the
        raw (C, L') maps kept with --keep-maps, read flattened like --pool none (heads that pool the map)."""
        self.split_info(split)
        if pool == MAPS_POOL:
            return FlatMaps(self.maps(split, layer))
        path = feature_path(split, layer, pool)
        try:
            self._require_complete(split, path)
        except KeyError:
            if layer not in self.layers(split):
                raise FeatcacheError(f"{self.path}: " + choices_message(f"layer in split '{split}'", layer,
                                                                        self.layers(split))) from None
            raise FeatcacheError(f"{self.path}: " + choices_message(
                f"pooling of {layer} in split '{split}'", pool, self.pools(split, layer))) from None
        return self.array(path)

    def array(self, path: str) -> Any:
        """The zarr array at `path`; damaged array metadata, or an array the metadata lists but the store lacks
        (a deleted folder), is a one-line error (a done marker that is absent is KeyError: not done)."""
        try:
            return self.root[path]
        except KeyError:
            if path.startswith("_done/"):
                raise
            raise FeatcacheError(f"{self.path}: '{path}' is missing from the cache (deleted or never written?); "
                                 "re-extract it with --overwrite") from None
        except Exception as exc:  # noqa: BLE001 -- zarr raises several kinds for damaged metadata
            raise FeatcacheError(f"{self.path}: damaged metadata of '{path}' ({_reason(exc)}); re-extract the "
                                 "cache with --overwrite") from None

    def features(self, split: str, layer: str, pool: str, rows: slice | np.ndarray | None = None,
                 draw: int | None = None, dtype: Any = np.float32) -> np.ndarray:
        """Features (R, D) as numpy; `draw=0` keeps one noise draw per spectrum, `rows` slices."""
        array = self.feature_array(split, layer, pool)
        return read_rows(array, self.row_selection(split, rows, draw), self.path, dtype)

    def provenance(self, split: str, features: list[tuple[str, str]]) -> dict[str, Any]:
        """How these features were computed (encoder, mask, noise, direction, dtypes, each feature's
        definition), apart from which rows: what a head fitted on them records and predict compares."""
        attrs = {f"{layer}/{pool}": self.feature_info(split, layer, pool) for layer, pool in features}
        return provenance(dict(self.metadata.parts or {}), attrs)

    def row_selection(self, split: str, rows: slice | np.ndarray | None = None, draw: int | None = None
                      ) -> slice | np.ndarray:
        """The split's rows to read: `rows` of all rows, or of draw `draw`'s rows (draw-major layout)."""
        if draw is not None:
            n = self.n_spectra(split)
            draws = int(self.split_info(split).draws)
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
        return self.array(path)

    def labels(self, split: str, name: str, draw: int | None = None) -> np.ndarray:
        names = self.label_names(split)
        if name not in names:
            raise FeatcacheError(f"{self.path}: unknown label '{name}' in split '{split}'; available: "
                                 + ", ".join(names))
        return read_rows(self.array(label_path(split, name)), self.row_selection(split, None, draw), self.path)

    def index(self, split: str, draw: int | None = None) -> np.ndarray:
        self.split_info(split)
        return read_rows(self.array(row_path(split, "index")), self.row_selection(split, None, draw), self.path)

    def draws(self, split: str, draw: int | None = None) -> np.ndarray:
        """The noise draw of each row (of draw `draw`'s rows only, when given)."""
        self.split_info(split)
        return read_rows(self.array(row_path(split, "draw")), self.row_selection(split, None, draw), self.path)

    # -- information bounds (FORMAT.md "Bounds"; written by featcache bounds) ----------------------------
    def bound_sources(self, split: str) -> list[str]:
        """The complete bound sources of a split, the exact one (synth) first; [] when it has none."""
        self.split_info(split)
        try:
            group = self.root[bounds_group(split)]
        except KeyError:
            return []
        found = []
        for name, child in group.groups():
            info = dict(child.attrs).get(BOUNDS_ATTR) or {}
            if info.get("complete") and not name.startswith("_"):
                found.append(name)
        return sorted(found, key=lambda s: (BOUND_SOURCES.index(s) if s in BOUND_SOURCES else len(BOUND_SOURCES), s))

    def bounds_info(self, split: str, source: str) -> dict[str, Any]:
        """What made a source's bounds: parameters, prior ranges, settings (the group's attributes)."""
        sources = self.bound_sources(split)
        if source not in sources:
            raise FeatcacheError(f"{self.path}: " + choices_message(f"bound source of split '{split}' (run featcache "
                                                                    "bounds)", source, sources))
        return dict(dict(self.root[bounds_group(split, source)].attrs)[BOUNDS_ATTR])

    def bounds(self, split: str, source: str | None = None, draw: int | None = None) -> dict[str, np.ndarray]:
        """Per-row bounds {parameter: (R,)} of a source (default: the preferred one, bound_sources()[0])."""
        sources = self.bound_sources(split)
        if not sources:
            raise FeatcacheError(f"{self.path}: split '{split}' has no bounds; run featcache bounds --cache "
                                 f"{self.path}")
        source = source or sources[0]
        info = self.bounds_info(split, source)
        group = bounds_group(split, source)
        return {name: read_rows(self.array(f"{group}/{name}"), self.row_selection(split, None, draw), self.path,
                                np.float64) for name in info["parameters"]}

    @property
    def mask(self) -> np.ndarray:
        return read_rows(self.array("mask"), slice(None), self.path, bool)

    @property
    def wave(self) -> np.ndarray:
        return read_rows(self.array("wave"), slice(None), self.path)

    def to_xarray(self, split: str, features: list[str] | list[tuple[str, str]] | None = None,
                  draw: int | None = None) -> Any:
        """The split as a lazy xarray Dataset: one dask-backed variable per feature ('LAYER/POOL', dims row and
        feature_LAYER_POOL), with index, draw and the labels as coordinates on row. features: 'LAYER/POOL'
        strings or (layer, pool) pairs (default: every feature of the split); draw=d keeps one noise draw.
        Needs the optional extra: pip install 'featcache[xarray]'. Works on format-1 caches too."""
        from .xarray_view import split_dataset

        return split_dataset(self, split, features, draw)

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


MAPS_POOL = "maps"


class FlatMaps:
    """A maps array (R, C, L') seen as (R, C*L') rows, channel-major (element c*L' + t) like --pool none."""

    def __init__(self, array: Any):
        rows, channels, length = array.shape
        self.array, self.path, self.shape = array, array.path, (int(rows), int(channels) * int(length))
        self.attrs = {**dict(array.attrs), "D": self.shape[1], "pooling": MAPS_POOL,
                      "definition": "the raw (C, L') map kept with --keep-maps, flattened channel-major -> C*L'"}

    def __getitem__(self, rows: Any) -> np.ndarray:
        values = np.asarray(self.array[rows])
        return values.reshape(values.shape[0], -1)


def open_cache(path: str | os.PathLike[str]) -> FeatureCache:
    """Open a feature cache written by `featcache extract` for reading."""
    path = Path(path)
    if not path.exists():
        raise FeatcacheError(f"{path}: no such cache (run featcache extract first)")
    return FeatureCache(path)


class FeatureMatrix:
    """Several cached features side by side, sliced lazily by rows: X[a:b] reads only those chunks.

    draw=None takes every row (all noise draws: training); draw=d takes the d-th draw of each spectrum.
    rows (sorted positions within those) keeps only some of them (a nested subset, a fold): a slice of the
    kept rows is read block by block over the span it covers, so memory stays that of one block.
    """

    READ_BLOCK = 8192  # rows read at once when gathering a subset

    def __init__(self, cache: FeatureCache, split: str, features: list[tuple[str, str]], draw: int | None,
                 rows: np.ndarray | None = None):
        self.arrays = [cache.feature_array(split, layer, pool) for layer, pool in features]
        self.path = cache.path
        self.fingerprint, self.split, self.features, self.draw = cache.fingerprint, split, list(features), draw
        n_rows = cache.n_rows(split)
        if draw is None:
            self.offset, n = 0, n_rows
        else:
            self.offset, n = draw * cache.n_spectra(split), cache.n_spectra(split)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        if self.rows is not None and len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= n
                                                         or np.any(np.diff(self.rows) <= 0)):
            raise ValueError("FeatureMatrix rows must be sorted, distinct positions within the selection")
        self.n = n if self.rows is None else len(self.rows)
        self.widths = [int(a.shape[1]) for a in self.arrays]

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, sum(self.widths)

    def __len__(self) -> int:
        return self.n

    def _read(self, start: int, stop: int) -> np.ndarray:
        sel = slice(self.offset + start, self.offset + stop)
        parts = [read_rows(a, sel, self.path, np.float32) for a in self.arrays]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.n)
        if step != 1:
            raise IndexError("FeatureMatrix takes contiguous row slices")
        if self.rows is None:
            return self._read(start, stop)
        wanted = self.rows[start:stop]
        out = np.empty((len(wanted), self.shape[1]), dtype=np.float32)
        done = 0
        while done < len(wanted):
            block_start = int(wanted[done])
            block_stop = min(block_start + self.READ_BLOCK, int(wanted[-1]) + 1)
            take = wanted[done:np.searchsorted(wanted, block_stop)]
            out[done:done + len(take)] = self._read(block_start, block_stop)[take - block_start]
            done += len(take)
        return out

    def load(self) -> np.ndarray:
        return self[0:self.n]


class StackedMatrix:
    """Row-sliceable matrices one after another (train and validation rows of a fold), read lazily."""

    def __init__(self, parts: list[Any]):
        widths = {p.shape[1] for p in parts}
        if len(widths) != 1:
            raise ValueError(f"stacked matrices differ in width: {sorted(widths)}")
        self.parts = parts
        self.bounds = np.cumsum([0] + [len(p) for p in parts])
        self.n = int(self.bounds[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, int(self.parts[0].shape[1])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.n)
        if step != 1:
            raise IndexError("StackedMatrix takes contiguous row slices")
        pieces = []
        for part, lo, hi in zip(self.parts, self.bounds[:-1], self.bounds[1:], strict=True):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                pieces.append(part[int(a - lo):int(b - lo)])
        if not pieces:
            return np.empty((0, self.shape[1]), dtype=np.float32)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)

    def load(self) -> np.ndarray:
        return self[0:self.n]


def read_metadata(path: str | os.PathLike[str]) -> CacheMetadata | None:
    """A store's featcache metadata as it stands now, or None while there is none (a writer preparing it)."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        return None
    meta = open_root(path, "r").attrs.get(META_KEY)
    return CacheMetadata.from_dict(meta, str(path)) if isinstance(meta, dict) else None
