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
from ..common.serialise import plain
from .binning import Binning, binned_table
from .fit import FitResult
from .registry import head_info

HEAD_FORMAT = 1
# every file a fit or finetune run directory holds: --overwrite removes them all, so no mix of two runs remains
RUN_FILES = ("metrics.json", "predictions.npz", "head.pt", "history.csv", "config.yaml", "binned.csv",
             "encoder.ckpt", "encoder.yaml", "mask.npy", "last.pt")


def check_run_dir(out: Path, *, overwrite: bool = False, resume: bool = False) -> list[str]:
    """Refuse an --out that is a file, or that holds an earlier run unless --overwrite (or --resume, which
    continues it); returns the earlier run's files. Touches nothing: call it before the work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FeatcacheError(f"--out {out}: is a file, expected a run directory")
    earlier = [name for name in RUN_FILES if (out / name).exists()]
    if earlier and not (overwrite or resume):
        hint = "pass --resume to continue it or --overwrite to start again" if "last.pt" in earlier else \
            "pass --overwrite to replace it or choose another --out"
        raise FeatcacheError(f"--out {out}: holds an earlier run ({', '.join(earlier)}); {hint}")
    return earlier


def clear_run_dir(out: Path) -> None:
    """Remove every file of an earlier run (after the new run succeeded, just before it is written), so a fit
    over a finetune directory leaves no encoder.ckpt of the old run beside the new head."""
    for name in RUN_FILES:
        (Path(out) / name).unlink(missing_ok=True)


def save_run(result: FitResult, out: Path, *, config: dict[str, Any] | None = None, command: str = "",
             extra: dict[str, Any] | None = None, binning: Binning | None = None) -> Path:
    """metrics.json (with `extra` facts on top), predictions.npz, head.pt, history.csv, config.yaml and
    binned.csv in OUT (check_run_dir before the work, clear_run_dir before this: it writes over the files
    it names)."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    spec = result.spec
    metrics = {"head": spec.head, "features": spec.describe()["features"], "in_dim": result.in_dim,
               "feature_provenance": result.provenance,
               "targets": spec.targets, **result.metrics, "chosen": result.chosen, "fit_seconds": result.seconds,
               "cache": result.cache_path, "cache_fingerprint": result.cache_fingerprint,
               "encoder_sha256": result.encoder_sha256, "recipe": spec.describe()["recipe"],
               **({"train_rows": dict(result.predictor.rows)} if hasattr(result.predictor, "rows") else {}),
               "command": command,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})}
    write_json(out / "metrics.json", metrics)
    arrays = {f"{role}_{key}": value for role, pred in result.predictions.items() for key, value in pred.items()}
    arrays["targets"] = np.array(spec.targets)
    atomic_write(out / "predictions.npz", lambda tmp: _save_npz(tmp, arrays))
    save_torch(out / "head.pt", {
        "format": HEAD_FORMAT, "head": spec.head, "hidden": spec.hidden, "dropout": spec.dropout,
        "in_dim": result.in_dim, "targets": list(spec.targets), "features": [list(f) for f in spec.features],
        "head_options": head_info(spec.head).saved_build_options(result.predictor),
        "state": head_info(spec.head).to_state(result.predictor), "cache_fingerprint": result.cache_fingerprint,
        "encoder_sha256": result.encoder_sha256, "provenance": plain(result.provenance)})
    if result.history:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(result.history[0]))
        writer.writeheader()
        writer.writerows(result.history)
        write_text(out / "history.csv", buffer.getvalue())
    write_text(out / "config.yaml", yaml.safe_dump(config or spec.describe(), sort_keys=False))
    if "test" in result.predictions:
        write_binned(out / "binned.csv", result.predictions["test"], list(spec.targets), binning)
    return out


def role_labels(arrays: dict[str, np.ndarray], role: str = "test") -> dict[str, np.ndarray]:
    """The labels of a role's rows kept beside its predictions ('test_label_<name>' keys)."""
    prefix = f"{role}_label_"
    return {k[len(prefix):]: np.asarray(v) for k, v in arrays.items() if k.startswith(prefix)}


def write_binned(path: Path, prediction: dict[str, np.ndarray], targets: list[str],
                 binning: Binning | None = None) -> Path:
    """binned.csv: the test residuals per population, target, axis (S/N, each label) and bin."""
    labels = {k[len("label_"):]: np.asarray(v) for k, v in prediction.items() if k.startswith("label_")}
    true = np.asarray(prediction["true"]).reshape(len(prediction["true"]), -1)
    pred = np.asarray(prediction["pred"]).reshape(len(true), -1)
    rows = binned_table({t: true[:, j] for j, t in enumerate(targets)}, {t: pred[:, j] for j, t in enumerate(targets)},
                        labels, binning)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["population"])
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:  # a file object: np.savez would otherwise append .npz to the name
        np.savez(handle, **arrays)


@dataclass
class LoadedHead:
    """A fitted head read back from a run directory."""

    head: str
    predictor: Any  # what the head's entry loads (RidgeHead, KNNHead, TrainResult, ...)
    features: list[tuple[str, str]]
    targets: list[str]
    in_dim: int
    encoder_sha256: str
    cache_fingerprint: str
    provenance: dict[str, Any] | None = None  # None: fitted before featcache 0.2 recorded it


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
    predictor = head_info(saved["head"]).from_state(saved)
    return LoadedHead(saved["head"], predictor, [tuple(f) for f in saved["features"]], list(saved["targets"]),
                      int(saved["in_dim"]), str(saved["encoder_sha256"]), str(saved["cache_fingerprint"]),
                      saved.get("provenance"))
