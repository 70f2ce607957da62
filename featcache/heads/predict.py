"""`featcache predict` in Python: a fitted head applied to a split of a (possibly other) cache.

A head only means something on features computed the way it was fitted on: the same encoder weights and
code, mask, noise, direction, dtypes and the same definition of each layer/pooling. The head carries that
provenance; a cache whose features were made another way is refused, naming what differs (--force applies
the head anyway and says so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cache.reader import FeatureCache, FeatureMatrix, open_cache
from ..common.errors import FeatcacheError
from ..common.progress import warning
from ..common.settings import changes, format_changes
from .runs import LoadedHead, load_head

# What may differ when a head trained on simulations meets observed spectra (featcache transfer): where the
# noisy flux comes from is a property of the data source (generated noise on simulations, the noise an
# observation carries), not of how features are computed; encoder, mask, direction, dtypes and pooling must match.
DATA_SOURCE_PARTS = ("noise",)


def provenance_differences(loaded: LoadedHead, cache: FeatureCache, split: str, *,
                           ignore: tuple[str, ...] = ()) -> str:
    """'' when the cache's features were made the way the head's were (apart from the `ignore` parts), else
    what differs, in words."""
    if loaded.provenance is None:
        encoder = cache.metadata.encoder_sha256
        if encoder != loaded.encoder_sha256:
            return f"encoder.weights_sha256 {loaded.encoder_sha256[:12]} -> {encoder[:12]}"
        return "the head predates featcache 0.2's record of how its features were made (refit it to check)"
    found = changes(loaded.provenance, cache.provenance(split, loaded.features), ignore=ignore)
    return format_changes(found, quote=False)


def predict_split(run_dir: str | Path | LoadedHead, cache: FeatureCache | str | Path, split: str, *,
                  force: bool = False, other_source: bool = False) -> dict[str, np.ndarray]:
    """Apply a fitted head to a cache's split (draw 0): index, predictions and, where labelled, the truth.
    other_source: the split is another data source (observed spectra), so its noise may differ."""
    loaded = run_dir if isinstance(run_dir, LoadedHead) else load_head(run_dir)
    cache = cache if isinstance(cache, FeatureCache) else open_cache(cache)
    x = FeatureMatrix(cache, split, loaded.features, draw=0)
    differences = provenance_differences(loaded, cache, split, ignore=DATA_SOURCE_PARTS if other_source else ())
    if differences and not force:
        raise FeatcacheError(f"{cache.path}: made with another encoder or other settings than the head's training "
                             f"cache ({differences}); its features mean something else: use --force to apply it "
                             "anyway")
    if differences:
        warning(f"--force: applying the head to features made another way ({differences})")
    if x.shape[1] != loaded.in_dim:
        raise FeatcacheError(f"{cache.path}: features {'+'.join(f'{a}/{b}' for a, b in loaded.features)} are "
                             f"{x.shape[1]} wide in split '{split}', the head expects {loaded.in_dim}")
    sigma = None
    if getattr(loaded.predictor, "gaussian", False):  # uncertainty heads: sigma_<target> beside pred_<target>
        mean, sigma = loaded.predictor.predict_dist(x)
        pred, sigma = np.asarray(mean).reshape(len(x), -1), np.asarray(sigma).reshape(len(x), -1)
    else:
        pred = np.asarray(loaded.predictor.predict(x)).reshape(len(x), -1)
    out: dict[str, np.ndarray] = {"index": cache.index(split, draw=0), "targets": np.array(loaded.targets)}
    for j, target in enumerate(loaded.targets):
        out[f"pred_{target}"] = pred[:, j]
        if sigma is not None:
            out[f"sigma_{target}"] = sigma[:, j]
        if target in cache.label_names(split):
            out[f"true_{target}"] = cache.labels(split, target, draw=0)
    return out
