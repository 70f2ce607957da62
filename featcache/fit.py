"""Fit a head on cached features and report it: `featcache fit` and `featcache predict` in Python.

Hyper-parameters (ridge alpha, MLP epochs) are chosen on the validation split only; the test split is
scored once, at the end, with a bootstrap interval. Training rows include every noise draw; validation
and test use draw 0.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import FeatureCache, open_cache
from .errors import FeatcacheError
from .heads import create_head, head_info
from .metrics import bootstrap_r2_ci, regression_metrics
from .ridge import RidgeHead, StreamingStats
from .training import TrainRecipe, TrainResult, train_head

HEAD_FORMAT = 1
# Part of every fit's identity (compare's cell keys): bump when a change alters the numbers a fit produces.
FIT_CODE_VERSION = 2  # 2: near-constant float32 feature columns are treated as constant


class FeatureMatrix:
    """Several cached features side by side, sliced lazily by rows: X[a:b] reads only those chunks."""

    def __init__(self, cache: FeatureCache, split: str, features: list[tuple[str, str]], draw: int | None):
        self.arrays = [cache.feature_array(split, layer, pool) for layer, pool in features]
        n_rows = cache.n_rows(split)
        if draw is None:
            self.offset, self.n = 0, n_rows
        else:
            self.offset, self.n = draw * cache.n_spectra(split), cache.n_spectra(split)
        self.widths = [int(a.shape[1]) for a in self.arrays]

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, sum(self.widths)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.n)
        if step != 1:
            raise IndexError("FeatureMatrix takes contiguous row slices")
        sel = slice(self.offset + start, self.offset + stop)
        parts = [np.asarray(a[sel], dtype=np.float32) for a in self.arrays]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def load(self) -> np.ndarray:
        return self[0:self.n]


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
    hidden: int = 256
    dropout: float = 0.1
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    alphas: list[float] | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    test_split: str | None = "test"
    device: str = "auto"
    n_boot: int = 1000

    def describe(self) -> dict[str, Any]:
        """The recipe as plain data (keys of a compare cell, config.yaml)."""
        recipe = self.recipe.to_dict() if head_info(self.head).trainable else {}
        return {"features": [f"{layer}/{pool}" for layer, pool in self.features], "targets": list(self.targets),
                "head": self.head, "hidden": self.hidden if head_info(self.head).trainable else None,
                "dropout": self.dropout if head_info(self.head).trainable else None, "recipe": recipe,
                "alphas": self.alphas, "splits": [self.train_split, self.val_split, self.test_split],
                "code_version": FIT_CODE_VERSION}


@dataclass
class FitResult:
    spec: FitSpec
    predictor: RidgeHead | TrainResult
    in_dim: int
    metrics: dict[str, Any]
    predictions: dict[str, dict[str, np.ndarray]]
    history: list[dict[str, Any]]
    seconds: float
    cache_path: str
    cache_fingerprint: str
    encoder_sha256: str

    @property
    def chosen(self) -> dict[str, Any]:
        if isinstance(self.predictor, RidgeHead):
            return {"alpha": self.predictor.alpha_}
        return {"best_epoch": self.predictor.best_epoch, "epochs_run": len(self.predictor.history)}

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
            parts.append(" ".join(bits))
        chosen = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.chosen.items())
        return "; ".join(parts) + f"; {chosen}; {self.seconds:.1f} s"


def _labels(cache: FeatureCache, split: str, targets: list[str], draw: int | None) -> np.ndarray:
    return np.stack([cache.labels(split, t, draw=draw).astype(np.float64) for t in targets], axis=1)


def _check_request(cache: FeatureCache, spec: FitSpec) -> None:
    for split in (spec.train_split, spec.val_split, spec.test_split):
        if split is not None and split not in cache.splits:
            raise FeatcacheError(f"{cache.path}: no split '{split}'; the cache has: {', '.join(cache.splits)}")
    if not spec.targets:
        raise FeatcacheError("give at least one --target")
    for target in spec.targets:
        cache.labels(spec.train_split, target, draw=0)  # names the available labels if unknown
    for layer, pool in spec.features:
        cache.feature_array(spec.train_split, layer, pool)  # lists the cache's layers / pools if unknown
    head_info(spec.head)


def fit_head(cache: FeatureCache | str | Path, spec: FitSpec, *, progress: bool = True) -> FitResult:
    """Fit spec.head on the cached features; choose on validation, score test once."""
    from .extract import resolve_device

    cache = cache if isinstance(cache, FeatureCache) else open_cache(cache)
    _check_request(cache, spec)
    started = time.perf_counter()
    train_x = FeatureMatrix(cache, spec.train_split, spec.features, draw=None)
    train_y = _labels(cache, spec.train_split, spec.targets, draw=None)
    val_x = FeatureMatrix(cache, spec.val_split, spec.features, draw=0) if spec.val_split else None
    val_y = _labels(cache, spec.val_split, spec.targets, draw=0) if spec.val_split else None
    in_dim = train_x.shape[1]
    history: list[dict[str, Any]] = []
    predictor: RidgeHead | TrainResult
    if spec.head == "ridge":
        head = create_head("ridge", in_dim, len(spec.targets), alphas=spec.alphas)
        train_stats = StreamingStats()
        for start in range(0, len(train_x), 32_768):
            stop = min(start + 32_768, len(train_x))
            train_stats.update(train_x[start:stop], train_y[start:stop])
        val_stats = StreamingStats.from_arrays(val_x, val_y) if val_x is not None else None
        predictor = head.fit_stats(train_stats, val_stats, target_names=spec.targets)
        if predictor.val_r2_per_alpha_ is not None:
            curve = np.asarray(predictor.val_r2_per_alpha_).reshape(len(predictor.alphas_), -1)
            history = [{"alpha": float(a), **{f"val_r2_{t}": float(curve[i, j]) for j, t in enumerate(spec.targets)}}
                       for i, a in enumerate(predictor.alphas_)]
    else:
        device = resolve_device(spec.device)
        model = create_head(spec.head, in_dim, len(spec.targets), hidden=spec.hidden, dropout=spec.dropout,
                            seed=spec.recipe.seed)
        predictor = train_head(model, train_x.load(), train_y, val_x.load() if val_x is not None else None, val_y,
                               recipe=spec.recipe, device=device, progress=progress, target_names=spec.targets,
                               desc=f"fit {spec.head}")
        history = [dict(h) for h in predictor.history]
    seconds = time.perf_counter() - started

    metrics: dict[str, Any] = {"splits": {}}
    predictions: dict[str, dict[str, np.ndarray]] = {}
    for role, split in (("train", spec.train_split), ("val", spec.val_split), ("test", spec.test_split)):
        if split is None:
            continue
        draw = None if role == "train" else 0
        x = train_x if role == "train" else (val_x if role == "val" else
                                             FeatureMatrix(cache, split, spec.features, draw=0))
        y = train_y if role == "train" else (val_y if role == "val" else _labels(cache, split, spec.targets, 0))
        pred = np.asarray(predictor.predict(x)).reshape(len(x), -1)
        entry: dict[str, Any] = {"split": split, "role": role, "n": int(len(x)),
                                 "n_spectra": cache.n_spectra(split), "targets": {}}
        for j, target in enumerate(spec.targets):
            m = regression_metrics(y[:, j], pred[:, j])
            if role == "test":
                m["r2_ci95"] = list(bootstrap_r2_ci(y[:, j], pred[:, j], n_boot=spec.n_boot, seed=0))
            entry["targets"][target] = m
        metrics["splits"][split] = entry
        if role != "train":
            predictions[role] = {"split": np.array(split), "index": cache.index(split, draw=draw),
                                 "true": y, "pred": pred}
    return FitResult(spec, predictor, in_dim, metrics, predictions, history, seconds, str(cache.path),
                     cache.fingerprint, str(cache.meta["parts"]["encoder"]["weights_sha256"]))


# -- run directories --------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def save_run(result: FitResult, out: Path, *, config: dict[str, Any] | None = None, command: str = "",
             extra: dict[str, Any] | None = None) -> Path:
    """metrics.json (with `extra` facts on top), predictions.npz, head.pt, history.csv, config.yaml in OUT."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    spec = result.spec
    metrics = {"head": spec.head, "features": spec.describe()["features"], "in_dim": result.in_dim,
               "targets": spec.targets, **result.metrics, "chosen": result.chosen, "fit_seconds": result.seconds,
               "cache": result.cache_path, "cache_fingerprint": result.cache_fingerprint,
               "encoder_sha256": result.encoder_sha256, "recipe": spec.describe()["recipe"], "command": command,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})}
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, default=_plain) + "\n")
    os.replace(tmp, out / "metrics.json")
    arrays = {}
    for role, pred in result.predictions.items():
        for key, value in pred.items():
            arrays[f"{role}_{key}"] = value
    arrays["targets"] = np.array(spec.targets)
    np.savez(out / "predictions.npz", **arrays)
    torch.save({"format": HEAD_FORMAT, "head": spec.head, "hidden": spec.hidden, "dropout": spec.dropout,
                "in_dim": result.in_dim, "targets": list(spec.targets),
                "features": [list(f) for f in spec.features], "state": result.predictor.to_state(),
                "cache_fingerprint": result.cache_fingerprint, "encoder_sha256": result.encoder_sha256},
               out / "head.pt")
    if result.history:
        with open(out / "history.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(result.history[0]))
            writer.writeheader()
            writer.writerows(result.history)
    (out / "config.yaml").write_text(yaml.safe_dump(config or spec.describe(), sort_keys=False))
    return out


@dataclass
class LoadedHead:
    """A fitted head read back from a run directory."""

    head: str
    predictor: RidgeHead | TrainResult
    features: list[tuple[str, str]]
    targets: list[str]
    in_dim: int
    encoder_sha256: str
    cache_fingerprint: str


def load_head(run_dir: str | Path) -> LoadedHead:
    path = Path(run_dir) / "head.pt" if Path(run_dir).is_dir() else Path(run_dir)
    if not path.exists():
        raise FeatcacheError(f"--head {run_dir}: no head.pt (expected a run directory written by featcache fit)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for foreign files
        raise FeatcacheError(f"{path}: not a featcache head ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(saved, dict) or saved.get("format") != HEAD_FORMAT:
        raise FeatcacheError(f"{path}: not a featcache head file (format {HEAD_FORMAT})")
    state = saved["state"]
    if saved["head"] == "ridge":
        predictor: RidgeHead | TrainResult = RidgeHead.from_state(state)
    else:
        model = create_head(saved["head"], saved["in_dim"], len(saved["targets"]), hidden=saved["hidden"],
                            dropout=saved["dropout"])
        predictor = TrainResult.from_state(model, state)
    return LoadedHead(saved["head"], predictor, [tuple(f) for f in saved["features"]], list(saved["targets"]),
                      int(saved["in_dim"]), str(saved["encoder_sha256"]), str(saved["cache_fingerprint"]))


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
