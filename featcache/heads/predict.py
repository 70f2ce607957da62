"""`featcache predict` in Python: a fitted head applied to a split of a (possibly other) cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cache.reader import FeatureCache, FeatureMatrix, open_cache
from ..common.errors import FeatcacheError
from .runs import load_head


def predict_split(run_dir: str | Path, cache: FeatureCache | str | Path, split: str, *, force: bool = False
                  ) -> dict[str, np.ndarray]:
    """Apply a fitted head to a cache's split (draw 0): index, predictions and, where labelled, the truth."""
    loaded = load_head(run_dir)
    cache = cache if isinstance(cache, FeatureCache) else open_cache(cache)
    encoder = str(cache.meta["parts"]["encoder"]["weights_sha256"])
    if encoder != loaded.encoder_sha256 and not force:
        raise FeatcacheError(f"{cache.path}: made with another encoder (weights {encoder[:12]}) than the head's "
                             f"training cache ({loaded.encoder_sha256[:12]}); use --force to apply it anyway")
    x = FeatureMatrix(cache, split, loaded.features, draw=0)
    if x.shape[1] != loaded.in_dim:
        raise FeatcacheError(f"{cache.path}: features {'+'.join(f'{a}/{b}' for a, b in loaded.features)} are "
                             f"{x.shape[1]} wide in split '{split}', the head expects {loaded.in_dim}")
    pred = np.asarray(loaded.predictor.predict(x)).reshape(len(x), -1)
    out: dict[str, np.ndarray] = {"index": cache.index(split, draw=0), "targets": np.array(loaded.targets)}
    for j, target in enumerate(loaded.targets):
        out[f"pred_{target}"] = pred[:, j]
        if target in cache.label_names(split):
            out[f"true_{target}"] = cache.labels(split, target, draw=0)
    return out
