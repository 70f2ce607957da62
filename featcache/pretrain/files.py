"""The files a pretraining run keeps beside its checkpoint (<stem>.yaml, .mask.npy, .log.csv), and the
checkpoint's own featcache metadata that --resume continues from."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError
from ..common.files import write_text
from ..common.resume import load_resume_checkpoint
from ..model.config import EncoderConfig
from .recipe import PretrainRecipe

LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "val_snr_noisy", "val_snr_denoised", "lr", "seconds")
AUX_LOG_COLUMNS = ("train_aux_mse", "aux_rows")  # with --aux-target: the labelled rows' MSE and how many were seen


def mask_path_for(out: str | os.PathLike[str]) -> Path:
    """<stem>.mask.npy beside the checkpoint."""
    out = Path(out)
    return out.with_name(out.stem + ".mask.npy")


def epoch_path_for(out: str | os.PathLike[str], epoch: int) -> Path:
    """<stem>-ep<E>.ckpt beside the checkpoint: the encoder after epoch E (pretrain --save-every)."""
    out = Path(out)
    return out.with_name(f"{out.stem}-ep{epoch}{out.suffix}")


def log_path_for(out: str | os.PathLike[str]) -> Path:
    """<stem>.log.csv beside the checkpoint."""
    out = Path(out)
    return out.with_name(out.stem + ".log.csv")


def checkpoint_mask(ckpt: str | os.PathLike[str]) -> np.ndarray:
    """The wavelength mask a pretrained encoder was trained with (<stem>.mask.npy beside it)."""
    path = mask_path_for(ckpt)
    if not path.exists():
        raise FeatcacheError(f"{path}: no mask beside the checkpoint (pretrain writes <stem>.mask.npy)")
    return np.load(path, allow_pickle=False).astype(bool)


def write_log(path: Path, history: list[dict[str, float]]) -> None:
    """<stem>.log.csv: one row per epoch (written atomically after each)."""
    buffer = io.StringIO()
    columns = list(LOG_COLUMNS) + [c for c in AUX_LOG_COLUMNS if history and c in history[0]]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in columns})
    write_text(path, buffer.getvalue())


def read_log(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The per-epoch metrics a run wrote to <stem>.log.csv."""
    with open(path, newline="") as handle:
        return [{k: (int(v) if k in ("epoch", "aux_rows") else float(v)) for k, v in row.items()}
                for row in csv.DictReader(handle)]


def load_resume_state(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint dict of an earlier pretrain run (with its 'featcache' metadata) to resume from
    (common.resume: the helper finetune's --resume reads its last.pt with too)."""
    return load_resume_checkpoint(out, "pretrain (no optimizer state and pretrain metadata to continue from)",
                                  is_pretrain_checkpoint)


def is_pretrain_checkpoint(state: Any) -> bool:
    meta = state.get("featcache") if isinstance(state, dict) else None
    return isinstance(meta, dict) and meta.get("kind") == "pretrain" and "optimizer_states" in state


def saved_settings(state: dict[str, Any]) -> tuple[EncoderConfig, PretrainRecipe]:
    """The architecture and recipe stored in a pretrain checkpoint's metadata."""
    meta = state["featcache"]
    return EncoderConfig(**meta["config"]), PretrainRecipe.from_saved(meta["recipe"])
