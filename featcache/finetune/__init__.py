"""Fine-tuning end to end: encoder and head trained together straight from the HDF5 files (no cache), on one
process or many (torchrun, srun). Options and resume settings, the distributed context, the model, the data
and its order, the evaluation passes, the loop, and the run directory it writes.

May import: featcache.common, featcache.spectra, featcache.model, featcache.heads, featcache.cache (its fingerprint
wording and provenance).
"""

from ..common.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "FinetuneOptions": "options", "parse_unfreeze": "options", "finetune": "run", "FinetuneResult": "run",
    "floored_scale": "model", "init_distributed": "distributed", "steps_per_epoch": "data",
})
