"""The feature cache, the format in one place: its layout (layout.py, specified in FORMAT.md), the writer
(stores, generations, done markers), the reader API (`open_cache(path).features(split, layer, pool)`, and
`.to_xarray(split)` with the optional extra featcache[xarray]), the writers' lock, the fingerprint and
`featcache inspect`'s description of a cache.

May import: featcache.common.
"""

from ..common.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "FeatureCache": "reader", "open_cache": "reader", "FeatureMatrix": "reader",
    "CacheLock": "lock", "open_root": "layout", "describe_cache": "describe",
})
