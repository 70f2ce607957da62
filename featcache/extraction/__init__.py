"""Extraction: one frozen-encoder pass over every spectrum into the cache. The plan (options validated,
inputs opened, fingerprint computed, before anything is written), the run (reader thread -> encoder ->
writer thread, resumable block by block) and the shards of a run across processes or nodes.

May import: featcache.common, featcache.spectra, featcache.model, featcache.cache.
"""

from ..common.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ExtractOptions": "options", "build_plan": "plan", "ExtractPlan": "plan",
    "run_extract": "run", "ExtractReport": "run", "detect_shard": "shards",
})
