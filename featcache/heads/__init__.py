"""Heads on cached features: the registry of named heads (each head one module with its entry: `entry`,
`registry`), exact streaming ridge, kNN, the one torch training loop (`loop`: N >= 1 heads at a time) and
its recipe, early stopping, `fit_head` (choose on validation, score test once), run directories, predict,
the regression metrics with their bootstrap intervals, and the scikit-learn probes (`probes`, public as
featcache.sklearn).

May import: featcache.common, featcache.cache (never extraction: fitting needs no encoder).
"""

from ..common.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "create_head": "registry", "head_info": "registry", "is_trainable": "registry", "list_heads": "registry",
    "head_option_schema": "registry", "count_parameters": "registry",
    "HeadEntry": "entry", "HeadOption": "entry", "register": "entry",
    "RidgeHead": "ridge", "StreamingStats": "ridge", "alpha_grid": "ridge",
    "TrainRecipe": "recipe", "TrainResult": "training", "train_head": "training",
    "EarlyStopping": "early_stopping",
    "FitSpec": "fit", "FitResult": "fit", "fit_head": "fit", "fit_heads": "fit", "parse_features": "fit",
    "train_heads": "batched", "HeadJob": "batched",
    "save_run": "runs", "load_head": "runs", "LoadedHead": "runs", "predict_split": "predict",
    "RidgeProbe": "probes", "MLPProbe": "probes",
})
