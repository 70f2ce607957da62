"""The search over encoders (`featcache search`): an Optuna study whose trials pretrain an encoder and score it
with a probe per CPU-minute of pretraining, resumable and shared through an RDB storage (the optional extra
`featcache[search]`): options, the space, one trial, the study, the run folder's report.

May import: featcache.common, featcache.spectra, featcache.model, featcache.pretrain, featcache.extraction,
featcache.heads.
"""

from ..common.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "SearchOptions": "options", "search": "run", "SearchResult": "run", "objective_value": "trial",
    "run_trial": "trial", "write_report": "report", "default_space": "options",
})
