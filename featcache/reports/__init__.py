"""Reports: `compare` fills the layer x pooling x head table from caches (and fit / finetune runs), with
raw-input and random-encoder baselines, bootstrap intervals, the best cell chosen on validation, markdown,
CSV, JSON and plots. Sources, the cell store, the rows, the rendering and the plots each have a module.

May import: featcache.common, featcache.cache, featcache.heads, featcache.model.taps (names only),
featcache.information.
"""

from ..common.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "compare": "comparison", "CompareResult": "comparison", "open_sources": "sources", "parse_cache_args": "sources",
    "seed_mean_r2_ci": "rows", "read_run": "rows",
})
