"""Run directories: what `featcache fit` (and finetune) write, and how a fitted head is read back.

OUT/metrics.json (per split and target, the chosen alpha or epoch, the cache fingerprint, the command),
predictions.npz (validation and test: index, true, pred), head.pt (weights-only loadable), history.csv and
config.yaml (the resolved options, for replay). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.errors import FeatcacheError
from ..common.files import check_not_inside_store, json_text, write_text, write_together
from ..common.serialise import plain
from .binning import Binning, binned_table
from .fit import FitResult
from .knn import KNNHead
from .registry import head_info, list_heads

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
    check_not_inside_store(out, folder=True)
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
             extra: dict[str, Any] | None = None, binning: Binning | None = None,
             replaces: tuple[str, ...] = ()) -> Path:
    """metrics.json (with `extra` facts on top), predictions.npz, head.pt, history.csv, config.yaml and
    binned.csv in OUT, written together (common.files.write_together): all of them or, on a failure such as a
    full disk, none, with the earlier run's files untouched. replaces: the earlier run's files to remove once the
    new ones are in place (fit --overwrite passes RUN_FILES; check_run_dir before the work)."""
    import yaml

    spec = result.spec
    metrics = {"head": spec.head, "features": spec.describe()["features"], "in_dim": result.in_dim,
               "feature_provenance": result.provenance,
               "targets": spec.targets, **result.metrics, "chosen": result.chosen, "fit_seconds": result.seconds,
               "cache": result.cache_path, "cache_fingerprint": result.cache_fingerprint,
               "encoder_sha256": result.encoder_sha256, "recipe": spec.describe()["recipe"],
               **({"train_rows": dict(result.predictor.rows)} if hasattr(result.predictor, "rows") else {}),
               "command": command,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})}
    arrays = {f"{role}_{key}": value for role, pred in result.predictions.items() for key, value in pred.items()}
    arrays["targets"] = np.array(spec.targets)
    head = {"format": HEAD_FORMAT, "head": spec.head, "hidden": spec.hidden, "dropout": spec.dropout,
            "in_dim": result.in_dim, "targets": list(spec.targets), "features": [list(f) for f in spec.features],
            "head_options": head_info(spec.head).saved_build_options(result.predictor),
            "state": head_info(spec.head).to_state(result.predictor), "cache_fingerprint": result.cache_fingerprint,
            "encoder_sha256": result.encoder_sha256, "provenance": plain(result.provenance)}
    writers: dict[str, Callable[[Path], Any]] = {
        "metrics.json": lambda tmp: tmp.write_text(json_text(metrics)),
        "predictions.npz": lambda tmp: _save_npz(tmp, arrays),
        "head.pt": lambda tmp: torch.save(head, tmp)}
    if result.history:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(result.history[0]))
        writer.writeheader()
        writer.writerows(result.history)
        history = buffer.getvalue()
        writers["history.csv"] = lambda tmp: tmp.write_text(history)
    settings = yaml.safe_dump(config or spec.describe(), sort_keys=False)
    writers["config.yaml"] = lambda tmp: tmp.write_text(settings)
    if "test" in result.predictions:
        binned = binned_text(result.predictions["test"], list(spec.targets), binning)
        writers["binned.csv"] = lambda tmp: tmp.write_text(binned)
    write_together(out, writers, replaces=replaces)
    return out


def role_labels(arrays: dict[str, np.ndarray], role: str = "test") -> dict[str, np.ndarray]:
    """The labels of a role's rows kept beside its predictions ('test_label_<name>' keys)."""
    prefix = f"{role}_label_"
    return {k[len(prefix):]: np.asarray(v) for k, v in arrays.items() if k.startswith(prefix)}


def write_binned(path: Path, prediction: dict[str, np.ndarray], targets: list[str],
                 binning: Binning | None = None) -> Path:
    """binned.csv: the test residuals per population, target, axis (S/N, each label) and bin."""
    return write_text(path, binned_text(prediction, targets, binning))


def binned_text(prediction: dict[str, np.ndarray], targets: list[str], binning: Binning | None = None) -> str:
    """binned.csv's content (write_binned)."""
    labels = {k[len("label_"):]: np.asarray(v) for k, v in prediction.items() if k.startswith("label_")}
    true = np.asarray(prediction["true"]).reshape(len(prediction["true"]), -1)
    pred = np.asarray(prediction["pred"]).reshape(len(true), -1)
    rows = binned_table({t: true[:, j] for j, t in enumerate(targets)}, {t: pred[:, j] for j, t in enumerate(targets)},
                        labels, binning)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["population"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


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
    missing = [key for key in HEAD_KEYS if key not in saved]
    if missing:
        raise FeatcacheError(f"{path}: a damaged head file: no {', '.join(repr(k) for k in missing)}; refit the head")
    try:
        head_info(str(saved["head"]))
    except FeatcacheError as exc:
        raise FeatcacheError(f"{path}: {exc}") from None
    if not isinstance(saved["state"], dict):
        raise FeatcacheError(f"{path}: its 'state' is not a mapping; a damaged head file: refit the head")
    closed_form = [name for name in list_heads() if not head_info(name).trainable]  # their states say their kind
    if (saved["head"] in closed_form or saved["state"].get("kind") in closed_form) and \
            saved["state"].get("kind") != saved["head"]:
        raise FeatcacheError(f"{path}: the head file says {saved['head']!r} but holds a {saved['state'].get('kind')!r} "
                             "state; a damaged head file: refit the head")
    try:
        loaded = _rebuild(saved)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise FeatcacheError(f"{path}: a damaged {saved.get('head')!r} head file ({type(exc).__name__}: {reason}); "
                             "refit the head") from None
    if not isinstance(loaded.predictor, KNNHead) or loaded.predictor.train_source_ is None:
        _check_predicts(loaded, path)  # a streamed knn head searches its cache: its rows are checked there
    return loaded


# what every head.pt holds (save_run writes them all)
HEAD_KEYS = ("head", "hidden", "dropout", "in_dim", "targets", "features", "state", "cache_fingerprint",
             "encoder_sha256")


def _rebuild(saved: dict[str, Any]) -> LoadedHead:
    """The predictor a head.pt describes, with its kind and shapes checked."""
    kind = saved["head"]
    predictor = head_info(kind).from_state(saved)  # the head's entry knows its state
    return LoadedHead(kind, predictor, [tuple(f) for f in saved["features"]], list(saved["targets"]),
                      int(saved["in_dim"]), str(saved["encoder_sha256"]), str(saved["cache_fingerprint"]),
                      saved.get("provenance"))


def _check_predicts(loaded: LoadedHead, path: Path) -> None:
    """A head that takes in_dim features gives one finite prediction per target: a wrong coefficient shape or
    NaN / inf weights are refused here, not met as a numpy error or as NaN predictions."""
    probe = np.zeros((2, loaded.in_dim), dtype=np.float32)
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(loaded.predictor.predict(probe), dtype=np.float64)
    except (ValueError, RuntimeError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise FeatcacheError(f"{path}: the head's weights do not fit its {loaded.in_dim} features and "
                             f"{len(loaded.targets)} target(s) ({reason}); a damaged head file: refit the head"
                             ) from None
    if out.size != 2 * len(loaded.targets):
        raise FeatcacheError(f"{path}: the head gives {out.size // 2} values per spectrum for "
                             f"{len(loaded.targets)} target(s); a damaged head file: refit the head")
    if not np.isfinite(out).all():
        raise FeatcacheError(f"{path}: the head's weights hold NaN or infinite values (its predictions are not "
                             "finite numbers); refit the head")
