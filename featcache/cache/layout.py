"""The cache's layout in code: names and paths of its arrays, its metadata key, and how to open it.

FORMAT.md beside this file specifies the layout apart from the code that writes it (as zarr-python does
for Zarr itself); this module is the one place the code spells those paths.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 2
# formats this code reads; 1 lacks the dimension names and coordinates of 2 (FORMAT.md), its arrays are the same
READABLE_FORMATS = (1, 2)
META_KEY = "featcache"
# xarray's (CF) group attribute naming the variables of a group that are coordinates
COORDINATES_ATTR = "coordinates"
ROW_DIM = "row"
MASK_DIMS = ["pixel"]
WAVE_DIMS = ["kept_pixel"]
# a split group's own coordinates (its labels are the coordinates of its labels group)
SPLIT_COORDINATES = ["index", "draw"]
# each row's spectrum content hash (two uint64 words of a blake2b-128 of its flux): copies across splits and
# caches are judged by it; caches made before featcache kept it lack it
ROW_HASH = "row_hash"
ROW_HASH_DIMS = [ROW_DIM, "hash_word"]


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


def row_path(split: str, name: str) -> str:
    """A split's per-row array ('index' or 'draw')."""
    return f"{split}/{name}"


def label_path(split: str, name: str) -> str:
    return f"{split}/labels/{name}"


def marker_path(generation: int, split: str) -> str:
    return f"_done/g{generation}/{split}"


def feature_dim(pool: str) -> str:
    """Each pooling's feature dimension has its own name: poolings of one layer differ in width, and xarray
    opens a layer's group as one Dataset whose dimensions must agree."""
    return f"feature_{pool}"


def map_dims(layer: str) -> list[str]:
    """A map's channel and position dimensions, named per layer (the maps of a split share one group)."""
    return [f"channel_{layer}", f"position_{layer}"]


def marker_dims(split: str) -> list[str]:
    """Done markers of one generation share a group; each split has its own number of blocks."""
    return [f"block_{split}"]


@dataclass
class ArraySpec:
    """One array a generation adds: a pooled feature (R, D) or a raw map (R, C, L') of a split."""

    split: str
    kind: str  # 'features' | 'maps'
    layer: str
    pool: str | None
    shape: tuple[int, ...]
    attrs: dict[str, Any]

    @property
    def path(self) -> str:
        return feature_path(self.split, self.layer, self.pool or "") if self.kind == "features" \
            else map_path(self.split, self.layer)

    @property
    def dimension_names(self) -> list[str]:
        return [ROW_DIM, *([feature_dim(self.pool or "")] if self.kind == "features" else map_dims(self.layer))]

    def as_meta(self) -> dict[str, Any]:
        return {"path": self.path, "split": self.split, "kind": self.kind, "layer": self.layer, "pool": self.pool,
                "definition": self.attrs.get("definition")}


# -- the optional bounds group (FORMAT.md, "Bounds"): per-star information bounds beside the labels --------
BOUNDS_ATTR = "featcache_bounds"
# the order in which a report prefers a split's bound sources (the exact one first)
BOUND_SOURCES = ("synth", "cannon")


def bounds_group(split: str, source: str | None = None) -> str:
    """`<split>/bounds` or one source's group `<split>/bounds/<source>` (one (R,) array per parameter)."""
    return f"{split}/bounds" if source is None else f"{split}/bounds/{source}"
