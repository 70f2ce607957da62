"""featcache: run a frozen spectrum encoder once, cache its features in Zarr, fit heads in seconds.

    >>> import featcache
    >>> cache = featcache.open_cache("cache/demo.zarr")
    >>> X = cache.features("train", "enc_pre_latent", "seg_mean_K8")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .cache import FeatureCache, open_cache

__all__ = ["FeatureCache", "__version__", "open_cache"]


def __getattr__(name: str) -> Any:
    # Lazy so `featcache --help` does not pay for importing torch and zarr.
    if name in ("open_cache", "FeatureCache"):
        from . import cache

        return getattr(cache, name)
    raise AttributeError(f"module 'featcache' has no attribute {name!r}")
