"""Fit a head on cached features and report it: `featcache fit` and `featcache predict` in Python.

Hyper-parameters (ridge alpha, MLP epochs) are chosen on the validation split only; the test split is
scored once, at the end, with a bootstrap interval. Training rows include every noise draw; validation
and test use draw 0.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..cache.reader import FeatureCache, open_cache
from ..common.device import resolve_device
from ..common.errors import FeatcacheError
from ..common.overlap import SplitRows, check_disjoint, check_rows_disjoint
from ..common.progress import status
from .batched import HeadJob, batch_key, train_heads
from .entry import FitRows
from .metrics import split_metrics
from .recipe import DEFAULT_DROPOUT, DEFAULT_HIDDEN, TrainRecipe
from .registry import create_head, head_info, list_heads
from .selection import RoleRows, RowSelection, role_rows
from .streaming import format_bytes

# Part of every fit's identity (compare's cell keys): bump when a change alters the numbers a fit produces.
FIT_CODE_VERSION = 3  # 2: near-constant float32 feature columns are treated as constant; 3: dropout masks
# from heads.dropout.MaskStream (PCG64), no longer torch's global RNG


def parse_features(layer: str | None, pool: str | None, features: list[str] | tuple[str, ...]
                   ) -> list[tuple[str, str]]:
    """--layer/--pool (one feature) and/or repeated --feature LAYER/POOL (concatenated in order)."""
    out: list[tuple[str, str]] = []
    if layer or pool:
        if not (layer and pool):
            raise FeatcacheError("give both --layer and --pool (or --feature LAYER/POOL)")
        out.append((layer, pool))
    for text in features:
        if text.count("/") != 1 or not all(text.split("/")):
            raise FeatcacheError(f"--feature {text}: expected LAYER/POOL, e.g. enc_pre_latent/seg_mean_K8")
        item = tuple(text.split("/"))
        if item not in out:
            out.append(item)  # type: ignore[arg-type]
    if not out:
        raise FeatcacheError("no features: give --layer and --pool, or --feature LAYER/POOL")
    return out


@dataclass
class FitSpec:
    """What to fit: features, targets, head and its recipe, and which splits play which role."""

    features: list[tuple[str, str]]
    targets: list[str]
    head: str = "ridge"
    hidden: int = DEFAULT_HIDDEN
    dropout: float = DEFAULT_DROPOUT
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    alphas: list[float] | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    test_split: str | None = "test"
    device: str = "auto"
    n_boot: int = 1000
    selection: RowSelection | None = None  # a nested train subset or one fold (heads.selection)
    # the heads' own options by name (heads.registry.head_option_schema: knn_ks, knn_weights, attn_heads, ...);
    # each head takes its own and ignores the others', a missing one is its default
    options: dict[str, Any] = field(default_factory=dict)
    # torch heads: above this many bytes (or '1GB', '25%'; None: half the available RAM) the train rows stream
    # from the cache (heads.streaming) instead of being loaded; not part of the fit's identity (the sampler
    # changes the batch order, not the recipe) but recorded in metrics.json
    max_memory: int | str | None = None
    # the spellings before 0.2 (accepted until 0.3, with a warning): they go into `options`
    knn_ks: InitVar[list[int] | None] = None
    knn_weights: InitVar[str | None] = None
    attn_heads: InitVar[int | None] = None

    def __post_init__(self, knn_ks: list[int] | None, knn_weights: str | None, attn_heads: int | None) -> None:
        old = {"knn_ks": knn_ks, "knn_weights": knn_weights, "attn_heads": attn_heads}
        given = {k: v for k, v in old.items() if v is not None}
        if given:
            warnings.warn(f"FitSpec({', '.join(given)}=...) is deprecated: give options={{...}} with the same names",
                          DeprecationWarning, stacklevel=3)
            self.options = {**self.options, **given}

    @property
    def head_options(self) -> dict[str, Any]:
        """This head's own options, each given or its default, checked against its constraint."""
        return head_info(self.head).resolve_options(self.options)

    def describe(self) -> dict[str, Any]:
        """The recipe as plain data (keys of a compare cell, config.yaml)."""
        entry = head_info(self.head)
        recipe = self.recipe.to_dict() if entry.trainable else {}
        out = {"features": [f"{layer}/{pool}" for layer, pool in self.features], "targets": list(self.targets),
               "head": self.head, "hidden": self.hidden if entry.trainable else None,
               "dropout": self.dropout if entry.trainable else None, "recipe": recipe,
               "alphas": self.alphas, "splits": [self.train_split, self.val_split, self.test_split],
               "code_version": FIT_CODE_VERSION}
        out.update(entry.describe_options(self.head_options))  # only a head with options adds a key
        rows = self.selection.describe() if self.selection is not None else None
        if rows:  # only then: the keys of whole-split fits stay what they were
            out["rows"] = rows
        return out


@dataclass
class FitResult:
    spec: FitSpec
    predictor: Any  # what the head's entry fitted (RidgeHead, KNNHead, TrainResult, ...)
    in_dim: int
    metrics: dict[str, Any]
    predictions: dict[str, dict[str, np.ndarray]]
    history: list[dict[str, Any]]
    seconds: float
    cache_path: str
    cache_fingerprint: str
    encoder_sha256: str
    provenance: dict[str, Any] | None = None  # how the features were computed (predict compares it)

    @property
    def chosen(self) -> dict[str, Any]:
        """What validation chose (the head's entry says what: alpha, k, best epoch, sigma scale)."""
        return head_info(self.spec.head).chosen(self.predictor)

    def summary(self) -> str:
        """The one-line summary `featcache fit` prints."""
        parts = [f"{self.spec.head} on {'+'.join(self.spec.describe()['features'])} (D={self.in_dim})"]
        for target in self.spec.targets:
            bits = [target + ":"]
            for split in (self.spec.val_split, self.spec.test_split):
                entry = self.metrics["splits"].get(split or "", {}).get("targets", {}).get(target)
                if entry:
                    ci = entry.get("r2_ci95")
                    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
                    bits.append(f"{split} R2 {entry['r2']:.3f}{ci_text} (n={entry['n']})")
                    if split == self.spec.test_split and "coverage_1sigma" in entry:
                        bits.append(f"(1-sigma coverage {entry['coverage_1sigma']:.3f}, std(z) {entry['z_std']:.3f})")
            parts.append(" ".join(bits))
        chosen = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.chosen.items())
        rows = getattr(self.predictor, "rows", {})
        if rows.get("sampler") == "block-shuffle":
            chosen += (f"; streamed from the cache in {rows['window_rows']}-row windows (features over the "
                       f"{format_bytes(rows['max_memory_bytes'])} memory budget)")
        elif rows.get("sampler") == "streamed-search":
            chosen += (f"; train rows searched in the cache in {rows['block_rows']}-row blocks (over the memory "
                       "budget; head.pt refers to the cache's rows)")
        return "; ".join(parts) + f"; {chosen}; training {self.seconds:.1f} s"


def _n_spectra(cache: FeatureCache, split: str, rows: RoleRows) -> int:
    """Distinct spectra behind a role's rows (training rows may hold several noise draws of each)."""
    if rows.index is not None:
        return len(rows.index)
    return len(rows.y) * cache.n_spectra(split) // cache.n_rows(split)


def check_roles(cache: FeatureCache, train: str, val: str | None, test: str | None) -> None:
    """Each role names a split of the cache, no two roles the same split, and no two share rows of a file
    (hyper-parameters are chosen on validation; test is scored once, on rows nothing was fitted or chosen on)."""
    roles = [("--train-split", train), ("--val-split", val), ("--test-split", test)]
    for flag, split in roles:
        if split is not None and split not in cache.splits:
            raise FeatcacheError(f"{cache.path}: no split '{split}' ({flag}); the cache has: {', '.join(cache.splits)}")
    given = [(flag, split) for flag, split in roles if split is not None]
    for i, (flag_a, a) in enumerate(given):
        for flag_b, b in given[i + 1:]:
            if a == b:
                raise FeatcacheError(f"{flag_a} and {flag_b} both name split '{a}': choose on validation and score "
                                     "test once, on different splits")
    check_disjoint([(split, cache.split_identity(split), *cache.split_rows(split)) for _, split in given],
                   what="cache splits")
    key = tuple(split for _, split in given)
    if key in cache.checked_roles:
        return
    rows = [SplitRows(split, f"rows {cache.split_rows(split)[0]}:{cache.split_rows(split)[1]} of "
                             f"{cache.split_info(split).path}",
                      cache.split_rows(split)[0], cache.row_hashes(split)) for _, split in given]
    check_rows_disjoint(rows, what=f"{cache.path}: cache splits", flag="--cache")
    if len(rows) > 1 and any(r.hashes is None for r in rows):
        status(f"note: {cache.path} was made before featcache kept row hashes: copies of one spectrum in two of "
               "its splits cannot be checked (re-extract it to check them)")
    cache.checked_roles.add(key)


def check_request(cache: FeatureCache, spec: FitSpec) -> None:
    """Everything a fit needs of the cache and the spec, checked before any row is read."""
    check_roles(cache, spec.train_split, spec.val_split, spec.test_split)
    if not spec.targets:
        raise FeatcacheError("give at least one --target")
    for target in spec.targets:
        cache.labels(spec.train_split, target, draw=0)  # names the available labels if unknown
    for layer, pool in spec.features:
        cache.feature_array(spec.train_split, layer, pool)  # lists the cache's layers / pools if unknown
    spec.head_options  # noqa: B018 - the head exists and its options meet their constraints


def fit_head(cache: FeatureCache | str | Path, spec: FitSpec, *, progress: bool = True,
             trained: Any = None, rows: dict[str, RoleRows] | None = None) -> FitResult:
    """Fit spec.head on the cached features; choose on validation, score test once: what `featcache fit` runs.

    Returns a FitResult: the fitted predictor, metrics (per split and target, with 95% bootstrap intervals on
    test), the validation and test predictions, the history and what validation chose (`chosen`);
    `heads.runs.save_run` writes it as a run folder. Example:

        spec = featcache.FitSpec(features=[("enc_3", "seg_mean_K8")], targets=["log_g"], head="mlp_1")
        result = featcache.fit_head("reports/demo-standard/cache.zarr", spec)
        result.metrics["splits"]["test"]["targets"]["log_g"]["r2_ci95"]

    trained: the head already
    trained on these rows (fit_heads trains many in one pass), to be scored and reported; rows:
    the fit's role rows when the caller has them already (the batched pass's loaded train and validation rows),
    so they are not read again."""
    cache = cache if isinstance(cache, FeatureCache) else open_cache(cache)
    check_request(cache, spec)
    entry = head_info(spec.head)
    started = time.perf_counter()
    data = rows if rows is not None else role_rows(cache, spec.features, spec.targets, spec.train_split,
                                                   spec.val_split, spec.test_split, spec.selection)
    if trained is None:
        in_dim = data["train"].x.shape[1]
        rows = FitRows({r: d.x for r, d in data.items()}, {r: d.y for r, d in data.items()}, spec, spec.head_options,
                       progress, entry.build_options_for(cache, spec, in_dim) if entry.needs_map else {})
        predictor, history = entry.fit(rows)
    else:
        predictor, history = trained, [dict(h) for h in trained.history]
    seconds = time.perf_counter() - started + (trained.seconds if trained is not None else 0.0)

    metrics: dict[str, Any] = {"splits": {}}
    predictions: dict[str, dict[str, np.ndarray]] = {}
    for role, split in (("train", spec.train_split), ("val", spec.val_split), ("test", spec.test_split)):
        if split is None:
            continue
        rows = data[role]
        if entry.uncertainty:  # uncertainty heads: a sigma per row and target
            mean, sigma = predictor.predict_dist(rows.x)
            pred, sigma = (np.asarray(a).reshape(len(rows.x), -1) for a in (mean, sigma))
        else:
            pred, sigma = np.asarray(predictor.predict(rows.x)).reshape(len(rows.x), -1), None
        metrics["splits"][split] = split_metrics(split, role, rows.y, pred, spec.targets,
                                                 n_spectra=_n_spectra(cache, split, rows), n_boot=spec.n_boot,
                                                 sigma=sigma)
        if spec.selection is not None and spec.selection.describe():
            metrics["splits"][split]["rows"] = spec.selection.describe()
        if role != "train":
            mixed = len(set(rows.splits.tolist())) > 1  # a fold's validation rows come from train and val
            predictions[role] = {"split": rows.splits if mixed else np.array(split), "index": rows.index,
                                 "true": rows.y, "pred": pred, **({} if sigma is None else {"sigma": sigma}),
                                 **{f"label_{name}": values for name, values in (rows.labels or {}).items()}}
    return FitResult(spec, predictor, data["train"].x.shape[1], metrics, predictions, history, seconds, str(cache.path),
                     cache.fingerprint, cache.metadata.encoder_sha256,
                     cache.provenance(spec.train_split, spec.features))


# -- many fits of one cache ---------------------------------------------------------------------------------
def fit_key(spec: Any, n_train: int) -> tuple[Any, ...]:
    """Which FitSpecs of one cache can train in one pass: same targets, rows, splits and device, and a
    batch_key-compatible recipe (features, seeds, widths, dropout, lr and weight decay may differ)."""
    blocks = head_info(spec.head).depth
    rows = spec.selection.describe() if spec.selection is not None else None
    return (blocks, tuple(spec.targets), repr(rows), spec.train_split, spec.val_split, spec.test_split, spec.device,
            batch_key(spec.recipe, blocks, n_train, len(spec.targets), spec.val_split is not None))


def fit_heads(cache: Any, specs: Sequence[Any], *, progress: bool = False,
              on_finished: Callable[[int], None] | None = None) -> list[Any]:
    """fit_head for many FitSpecs of one cache: the MLP heads that can share a pass are trained together by
    train_heads, then each is scored and reported exactly as fit_head reports it (FitResult per spec, in
    order). Every feature a group needs is held in memory at once: group the specs to bound it.
    on_finished(k): told whenever k of the heads finish training (a progress bar's count)."""
    cache = cache if isinstance(cache, FeatureCache) else open_cache(cache)
    for spec in specs:
        if not head_info(spec.head).batchable:
            batchable = ", ".join(name for name in list_heads() if head_info(name).batchable)
            raise FeatcacheError(f"head '{spec.head}' is not trained in batches (batched: {batchable})")
        check_request(cache, spec)
    loaded: dict[Any, dict[str, Any]] = {}  # per feature and row selection: the role rows, train and val loaded
    groups: dict[tuple[Any, ...], list[tuple[int, HeadJob]]] = {}
    for i, spec in enumerate(specs):
        rows_key = shared_rows_key(spec)
        if rows_key not in loaded:
            data = role_rows(cache, spec.features, spec.targets, spec.train_split, spec.val_split, spec.test_split,
                             spec.selection)
            loaded[rows_key] = {role: replace(r, x=r.x.load()) if role != "test" else r for role, r in data.items()}
        data = loaded[rows_key]
        X, y = data["train"].x, data["train"].y
        Xv, yv = (data["val"].x, data["val"].y) if "val" in data else (None, None)
        model = create_head(spec.head, X.shape[1], len(spec.targets), hidden=spec.hidden, dropout=spec.dropout,
                            seed=spec.recipe.seed)
        job = HeadJob(model, X, y, Xv, yv, spec.recipe, spec.targets, data_key=rows_key)
        groups.setdefault(fit_key(spec, X.shape[0]), []).append((i, job))
    trained: dict[int, Any] = {}
    for members in groups.values():
        device = resolve_device(specs[members[0][0]].device)  # one device per group (part of fit_key)
        results = train_heads([job for _, job in members], device=device, progress=progress,
                              desc=f"fit {len(members)} heads", on_finished=on_finished)
        trained.update({i: result for (i, _), result in zip(members, results, strict=True)})
    results = [fit_head(cache, spec, progress=False, trained=trained[i], rows=loaded[shared_rows_key(spec)])
               for i, spec in enumerate(specs)]
    loaded.clear()
    return results


def shared_rows_key(spec: Any) -> tuple[Any, ...]:
    """The rows a fit of a batched pass shares with others: its features, targets, selection and splits."""
    return (tuple(spec.features), tuple(spec.targets), repr(spec.selection), spec.train_split, spec.val_split,
            spec.test_split)
