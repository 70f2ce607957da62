"""Run directories: what `featcache fit` (and finetune) write, and how a fitted head is read back.

OUT/metrics.json (per split and target, the chosen alpha or epoch, the cache fingerprint, the command),
predictions.npz (validation and test: index, true, pred), head.pt (weights-only loadable), history.csv and
config.yaml (the resolved options, for replay). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.errors import FeatcacheError
from ..common.files import atomic_write, save_torch, write_json, write_text
from .fit import FitResult
from .registry import create_head
from .ridge import RidgeHead
from .training import TrainResult

HEAD_FORMAT = 1


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
    write_json(out / "metrics.json", metrics)
    arrays = {f"{role}_{key}": value for role, pred in result.predictions.items() for key, value in pred.items()}
    arrays["targets"] = np.array(spec.targets)
    atomic_write(out / "predictions.npz", lambda tmp: _save_npz(tmp, arrays))
    save_torch(out / "head.pt", {
        "format": HEAD_FORMAT, "head": spec.head, "hidden": spec.hidden, "dropout": spec.dropout,
        "in_dim": result.in_dim, "targets": list(spec.targets), "features": [list(f) for f in spec.features],
        "state": result.predictor.to_state(), "cache_fingerprint": result.cache_fingerprint,
        "encoder_sha256": result.encoder_sha256})
    if result.history:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(result.history[0]))
        writer.writeheader()
        writer.writerows(result.history)
        write_text(out / "history.csv", buffer.getvalue())
    write_text(out / "config.yaml", yaml.safe_dump(config or spec.describe(), sort_keys=False))
    return out


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:  # a file object: np.savez would otherwise append .npz to the name
        np.savez(handle, **arrays)


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
    """The head of a `featcache fit` run (its head.pt, read weights-only)."""
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
