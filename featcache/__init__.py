"""featcache: run a frozen spectrum encoder once, cache its features in Zarr, fit heads in seconds.

    >>> import featcache
    >>> cache = featcache.open_cache("cache/demo.zarr")
    >>> X = cache.features("train", "enc_pre_latent", "seg_mean_K8")

The package follows the data (ARCHITECTURE.md): spectra -> model -> extraction -> cache -> heads -> reports,
with finetune, pretrain, synth and bench beside them and common under all. The names below are the
Python API of the command line (fine-tuning and pretraining: featcache.finetune.finetune and
featcache.pretrain.pretrain); everything else is reached through its sub-package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__
from .common.lazy import lazy_exports

if TYPE_CHECKING:
    from .cache.reader import FeatureCache, open_cache
    from .common.errors import FeatcacheError
    from .extraction.options import ExtractOptions
    from .extraction.run import run_extract
    from .finetune.options import FinetuneOptions
    from .heads.fit import FitSpec, fit_head
    from .heads.predict import predict_split
    from .heads.recipe import TrainRecipe
    from .information.api import bounds
    from .pretrain.recipe import PretrainRecipe
    from .reports.comparison import compare
    from .synth.generate import write_synth

# Lazy, so `featcache --help` does not pay for importing torch and zarr.
__getattr__, __dir__ = lazy_exports(__name__, {
    "open_cache": "cache.reader", "FeatureCache": "cache.reader", "FeatcacheError": "common.errors",
    "ExtractOptions": "extraction.options", "run_extract": "extraction.run",
    "FitSpec": "heads.fit", "fit_head": "heads.fit", "TrainRecipe": "heads.recipe", "predict_split": "heads.predict",
    "compare": "reports.comparison", "FinetuneOptions": "finetune.options", "PretrainRecipe": "pretrain.recipe",
    "write_synth": "synth.generate", "bounds": "information.api",
})

__all__ = ["ExtractOptions", "FeatcacheError", "FeatureCache", "FinetuneOptions", "FitSpec", "PretrainRecipe",
           "TrainRecipe", "__version__", "bounds", "compare", "fit_head", "open_cache", "predict_split",
           "run_extract", "write_synth"]
