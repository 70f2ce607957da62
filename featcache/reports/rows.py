"""Rows of the compare table: a cell's seeds aggregated, and rows read from fit / finetune run directories.

Test R2 carries a 95% percentile bootstrap interval over test spectra (draw 0; 1000 draws, seed 0). With
several seeds the point estimate is the mean R2 over seeds and the interval is that of the same statistic:
each bootstrap draw resamples the test spectra once and scores every seed on it (so the interval is about
the test sample, the +- beside it about the seeds).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError
from ..heads.metrics import CALIBRATION, bootstrap_r2, percentile_interval, regression_metrics
from .cells import Task
from .options import N_BOOT

BOOT_SEED = 0
CI_LEVEL = 0.95
METRICS = ("r2", "rmse", "mae", "bias", "sigma_mad")


def seed_mean_r2_ci(y_true: np.ndarray, preds: np.ndarray, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                    level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean-over-seeds test R2, resampling test spectra (one resample scores all
    seeds). preds is (n, S); with S = 1 this is exactly metrics.bootstrap_r2_ci."""
    preds = np.asarray(preds, dtype=np.float64).reshape(len(y_true), -1)
    truth = np.repeat(np.asarray(y_true, dtype=np.float64).reshape(-1, 1), preds.shape[1], axis=1)
    draws = bootstrap_r2(truth, preds, n_boot=n_boot, seed=seed)
    with np.errstate(invalid="ignore"):
        stat = draws.mean(axis=1)
    lo, hi = percentile_interval(stat[:, None], level)
    return float(lo[0]), float(hi[0])


def _mean(values: list[float]) -> float:
    clean = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(clean)) if clean else float("nan")


def _std(values: list[float]) -> float:
    clean = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.std(clean, ddof=1)) if len(clean) > 1 else float("nan")


def cell_row(tasks: list[Task], fits: list[tuple[dict[str, Any], dict[str, np.ndarray]]],
              n_boot: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """One table row from a cell's seeds; also the test truth and the seed-mean test prediction (plots)."""
    first = tasks[0]
    records = [r for r, _ in fits]
    truth = fits[0][1]["test_true"]
    preds = np.stack([a["test_pred"] for _, a in fits], axis=1)
    lo, hi = seed_mean_r2_ci(truth, preds, n_boot=n_boot)
    row: dict[str, Any] = {"target": first.target, "encoder": first.encoder, "kind": first.kind,
                           "layer": first.layer, "pool": first.pool, "width": first.width, "head": first.head,
                           "seeds": len(fits)}
    for role in ("test", "val"):
        for metric in METRICS:
            row[f"{role}_{metric}"] = _mean([r["metrics"][role].get(metric, math.nan) for r in records])
        row[f"{role}_r2_std"] = _std([r["metrics"][role]["r2"] for r in records])
        if role == "test":
            row["test_r2_lo"], row["test_r2_hi"] = lo, hi
    _calibration_columns(row, [r["metrics"] for r in records])
    row["train_r2"] = _mean([r["metrics"]["train"]["r2"] for r in records])
    alphas = [r["chosen"].get("alpha") for r in records if r["chosen"].get("alpha") is not None]
    epochs = [r["chosen"].get("best_epoch") for r in records if r["chosen"].get("best_epoch") is not None]
    ks = [r["chosen"].get("k") for r in records if r["chosen"].get("k") is not None]
    row["chosen_alpha"] = float(alphas[0]) if alphas else float("nan")
    row["chosen_k"] = float(ks[0]) if ks else float("nan")
    row["chosen_epoch"] = _mean([float(e) for e in epochs]) if epochs else float("nan")
    row["chosen_epochs"] = ";".join(str(int(e)) for e in epochs)
    row["fit_seconds"] = float(sum(r["fit_seconds"] for r in records))
    row["n_train_rows"], row["n_val"], row["n_test"] = (records[0]["n"][k] for k in ("train", "val", "test"))
    row["cache_fingerprint"] = first.source.cache.fingerprint
    row["source"] = str(first.source.path)
    row["keys"] = ";".join(t.key for t in tasks)
    return row, truth, preds.mean(axis=1)


def _calibration_columns(row: dict[str, Any], metrics: list[dict[str, Any]]) -> None:
    """Uncertainty heads: test and validation coverage, std(z) and NLL (mean over seeds; NaN for point heads),
    with the test interval of a single fit (several seeds: the +- of the seeds instead)."""
    for role in ("test", "val"):
        for name in CALIBRATION:
            row[f"{role}_{name}"] = _mean([m[role].get(name, math.nan) for m in metrics])
    for name in CALIBRATION:
        ci = metrics[0]["test"].get(f"{name}_ci95") if len(metrics) == 1 else None
        row[f"test_{name}_lo"], row[f"test_{name}_hi"] = ci if ci else (math.nan, math.nan)
        row[f"test_{name}_std"] = _std([m["test"].get(name, math.nan) for m in metrics])


@dataclass
class RunRows:
    """Rows from a `featcache fit` / `finetune` run directory, one per target it predicts."""

    name: str
    path: Path
    metrics: dict[str, Any]
    arrays: dict[str, np.ndarray]


def read_run(path: str | Path, name: str | None = None, flag: str = "--run") -> RunRows:
    """A fit or finetune run directory's metrics and test predictions, checked: a file that is not what fit
    writes (damaged, hand-edited, of another tool) is a one-line error naming it, never a traceback later."""
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    if not (path / "metrics.json").exists():
        raise FeatcacheError(f"{where}: no metrics.json (expected a run directory written by featcache fit "
                             "or finetune)")
    try:
        metrics = json.loads((path / "metrics.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FeatcacheError(f"{where}: metrics.json is not readable JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("splits", {}), dict) \
            or not isinstance(metrics.get("features", []), list):
        raise FeatcacheError(f"{where}: metrics.json is not a run's metrics (expected an object with 'splits' and "
                             "'features' as featcache fit writes them)")
    if not (path / "predictions.npz").exists():
        raise FeatcacheError(f"{where}: no predictions.npz (needed for the test interval)")
    try:
        with np.load(path / "predictions.npz", allow_pickle=False) as arrays:
            data = {k: arrays[k] for k in arrays.files}
    except Exception as exc:  # noqa: BLE001 -- numpy and zipfile raise many kinds for a damaged archive
        raise FeatcacheError(f"{where}: predictions.npz is not a readable .npz archive "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    for key in ("test_true", "test_pred"):
        if key not in data:
            raise FeatcacheError(f"{where}: predictions.npz has no '{key}' (was the run scored on test?)")
    _check_predictions(where, data, metrics)
    return RunRows(name or path.resolve().name, path, metrics, data)


def _check_predictions(where: str, data: dict[str, np.ndarray], metrics: dict[str, Any]) -> None:
    """test_true, test_pred (and test_sigma, the test labels) as fit writes them: numbers, one row per test
    spectrum, one column per target."""
    truth = data["test_true"]
    if "targets" in data and data["targets"].dtype.kind not in "US":
        raise FeatcacheError(f"{where}: predictions.npz 'targets' holds {data['targets'].dtype}, not names")
    targets = [str(t) for t in np.atleast_1d(data["targets"])] if "targets" in data else \
        [str(t) for t in metrics.get("targets") or []]
    n_targets = max(len(targets), 1)
    for key in ("test_true", "test_pred", "test_sigma"):
        if key not in data:
            continue
        value = data[key]
        if value.dtype.kind not in "fiu" or value.ndim not in (1, 2) or len(value) != len(truth) or \
                value.size != len(truth) * n_targets:
            raise FeatcacheError(f"{where}: predictions.npz '{key}' is {value.dtype} of shape {value.shape}; expected "
                                 f"numbers, {len(truth)} rows x {n_targets} target(s) ({', '.join(targets) or '?'})")
    for key, value in data.items():
        if key.startswith("test_label_") and len(np.atleast_1d(value)) != len(truth):
            raise FeatcacheError(f"{where}: predictions.npz '{key}' has {len(np.atleast_1d(value))} rows, the test "
                                 f"predictions {len(truth)}")


def run_targets(run: RunRows) -> list[str]:
    if "targets" in run.arrays:
        return [str(t) for t in np.atleast_1d(run.arrays["targets"])]
    return [str(t) for t in run.metrics.get("targets", [])]


def run_split(run: RunRows, role: str) -> dict[str, Any]:
    splits = run.metrics.get("splits") or {}
    for entry in splits.values():
        if isinstance(entry, dict) and entry.get("role") == role:
            return entry
    return splits.get(role) or {}


def run_row(run: RunRows, target: str, n_boot: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    targets = run_targets(run)
    j = targets.index(target)
    truth = np.asarray(run.arrays["test_true"], dtype=np.float64).reshape(len(run.arrays["test_true"]), -1)[:, j]
    pred = np.asarray(run.arrays["test_pred"], dtype=np.float64).reshape(len(truth), -1)[:, j]
    features = [str(f) for f in run.metrics.get("features") or []]
    kind_word = str(run.metrics.get("kind") or "fit")
    if len(features) == 1 and "/" in features[0]:
        layer, pool = features[0].split("/", 1)
    elif features:
        layer, pool = "+".join(features), ""
    else:
        layer, pool = str(run.metrics.get("layer") or f"({kind_word})"), str(run.metrics.get("pool") or "")
    width = run.metrics.get("in_dim")
    row: dict[str, Any] = {"target": target, "encoder": run.name, "kind": "run", "layer": layer, "pool": pool,
                           "width": int(width) if isinstance(width, int | float) else -1,
                           "head": str(run.metrics.get("head") or kind_word), "seeds": 1}
    test = regression_metrics(truth, pred)
    lo, hi = seed_mean_r2_ci(truth, pred[:, None], n_boot=n_boot)
    val = (run_split(run, "val").get("targets") or {}).get(target) or {}
    for metric in METRICS:
        row[f"test_{metric}"] = float(test[metric])
        row[f"val_{metric}"] = float(val.get(metric, float("nan")))
    row["test_r2_std"] = row["val_r2_std"] = float("nan")
    row["test_r2_lo"], row["test_r2_hi"] = lo, hi
    test_entry = (run_split(run, "test").get("targets") or {}).get(target) or {}
    _calibration_columns(row, [{"test": test_entry, "val": val}])
    train = (run_split(run, "train").get("targets") or {}).get(target) or {}
    row["train_r2"] = float(train.get("r2", float("nan")))
    chosen = run.metrics.get("chosen") or {}
    row["chosen_alpha"] = float(chosen.get("alpha", float("nan")))
    row["chosen_k"] = float(chosen.get("k", float("nan")))
    row["chosen_epoch"] = float(chosen.get("best_epoch", float("nan")))
    row["chosen_epochs"] = str(chosen.get("best_epoch", ""))
    row["fit_seconds"] = float(run.metrics.get("fit_seconds") or run.metrics.get("seconds") or float("nan"))
    row["n_train_rows"] = int(run_split(run, "train").get("n", -1))
    row["n_val"] = int(run_split(run, "val").get("n", -1))
    row["n_test"] = len(truth)
    row["cache_fingerprint"] = str(run.metrics.get("cache_fingerprint") or "")  # finetune runs have none
    row["source"] = str(run.path)
    row["keys"] = ""
    return row, truth, pred
