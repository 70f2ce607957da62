"""Fine-tuning speed: seconds per training epoch and train spectra/s, encoder frozen vs unfrozen."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..finetune.options import FinetuneOptions
from ..finetune.run import finetune
from ..heads.recipe import TrainRecipe


def benchmark_epoch(ckpt: str | Path, data: list[str], out_dir: str | Path, *, target: str = "log_g",
                    layer: str = "enc_pre_latent", pool: str = "seg_mean_K8", head: str = "mlp_1",
                    modes: tuple[str, ...] = ("none", "all"), batch_size: int = 64, epochs: int = 2,
                    mask: str = "quantile:0.85", device: str = "cpu") -> list[dict[str, Any]]:
    """Seconds per training epoch (reading, noise, forward, backward, step; validation excluded) and
    train spectra/s for each --unfreeze mode, on `data` (train= and optionally val=). The first epoch
    is reported apart (warm-up); the rest are averaged."""
    rows = []
    for mode in modes:
        names = [d.split("=", 1)[0] for d in data]
        opts = FinetuneOptions(ckpt=Path(ckpt), data=list(data), targets=[target], out=Path(out_dir) / mode,
                               layer=layer, pool=pool, head=head, unfreeze=mode, mask=mask, device=device,
                               recipe=TrainRecipe(max_epochs=epochs, batch_size=batch_size, patience=epochs + 1),
                               val_split="val" if "val" in names else None, test_split=None, progress=False,
                               overwrite=True)
        result = finetune(opts)
        steady = result.history[1:] or result.history
        seconds = float(np.mean([h["train_seconds"] for h in steady]))
        n_train = result.metrics["splits"][opts.train_split]["n"] if result.metrics else 0
        rows.append({"unfreeze": mode, "n_train": n_train, "batch_size": batch_size,
                     "first_epoch_s": result.history[0]["train_seconds"], "seconds_per_epoch": seconds,
                     "spectra_per_s": n_train / seconds if seconds > 0 else math.nan,
                     "trainable_blocks": len(result.unfreeze), "threads": torch.get_num_threads()})
    return rows
