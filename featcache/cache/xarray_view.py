"""`FeatureCache.to_xarray(split)`: one split as a lazy xarray Dataset of its features and labels.

The Dataset is built from the cache's zarr arrays through the reader (so it refuses incomplete arrays and
reads format-1 caches as well as format-2 ones), not by xarray's zarr engine: `xarray.open_datatree(cache,
engine="zarr")` opens a format-2 cache as it is stored, one node per group. Features stay on disk as dask
arrays read chunk by chunk; index, draw and the labels (R values each) are loaded, so selecting rows by a
label (`ds.where(ds.log_g > 3, drop=True)`) needs no computation.

Variables are named LAYER/POOL (as `--feature`); each has its own feature dimension `feature_LAYER_POOL`,
because two layers' poolings of one name differ in width (a Dataset's dimensions must agree). Labels keep
their column names (one named index or draw becomes label_index, label_draw).

xarray and dask are the optional extra `featcache[xarray]`.
"""

from __future__ import annotations

from typing import Any

from ..common.errors import FeatcacheError
from .layout import ROW_DIM

XARRAY_EXTRA = "pip install 'featcache[xarray]'"


def require_xarray() -> tuple[Any, Any]:
    """(xarray, dask.array), or a one-line error naming the extra that provides them."""
    try:
        import dask.array
        import xarray
    except ImportError as exc:
        missing = (exc.name or "xarray").split(".")[0]
        raise FeatcacheError(f"to_xarray needs xarray and dask ({missing} is not installed): {XARRAY_EXTRA}") from None
    return xarray, dask.array


def feature_dim_name(layer: str, pool: str) -> str:
    return f"feature_{layer}_{pool}"


def _chosen_features(cache: Any, split: str, features: Any) -> list[tuple[str, str]]:
    """(layer, pool) pairs from 'LAYER/POOL' strings or pairs; every feature of the split by default."""
    if features is None:
        return [(layer, pool) for layer in cache.layers(split) for pool in cache.pools(split, layer)]
    chosen: list[tuple[str, str]] = []
    for item in features:
        pair = tuple(item.split("/")) if isinstance(item, str) else tuple(item)
        if len(pair) != 2 or not all(isinstance(part, str) and part for part in pair):
            raise FeatcacheError(f"feature {item!r}: expected 'LAYER/POOL', e.g. 'enc_pre_latent/seg_mean_K8'")
        if pair not in chosen:
            chosen.append(pair)  # type: ignore[arg-type]
    return chosen


def split_dataset(cache: Any, split: str, features: Any = None, draw: int | None = None) -> Any:
    """The Dataset FeatureCache.to_xarray returns (see the module docstring)."""
    xr, da = require_xarray()
    rows = cache.row_selection(split, None, draw)
    data_vars = {}
    for layer, pool in _chosen_features(cache, split, features):
        array = cache.feature_array(split, layer, pool)  # refuses unknown names and incomplete arrays
        lazy = da.from_zarr(array)[rows]
        data_vars[f"{layer}/{pool}"] = ((ROW_DIM, feature_dim_name(layer, pool)), lazy, dict(array.attrs))
    coords = {"index": (ROW_DIM, cache.index(split, draw)), "draw": (ROW_DIM, cache.draws(split, draw))}
    for name in cache.label_names(split):
        key = f"label_{name}" if name in coords else name  # a params column named index or draw
        coords[key] = (ROW_DIM, cache.labels(split, name, draw))
    attrs = {"cache": str(cache.path), "split": split, "fingerprint": cache.fingerprint, "format": cache.format}
    if draw is not None:
        attrs["draw"] = int(draw)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
