"""How `featcache pretrain` trains, by name, with its defaults (defined here once; the CLI shows them).

'auto' picks the T1 loss and generated noise when the train file has clean flux, else E2 on the file's
stored noisy array. Fields in RESUME_FREE may change when resuming; the others must match the checkpoint's.
Torch-free, so the command line reads the defaults without importing torch.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..common.errors import FeatcacheError, choices_message
from ..common.settings import Change, changes, format_changes

LOSSES = ("T1", "E1", "E2")
NOISE_SOURCES = ("generated", "stored")
TRAIN_NOISE = ("fresh", "fixed")
RESUME_FREE = ("max_epochs", "time_limit", "device", "save_every")
# spellings before 0.2, read from old checkpoints (and accepted, with a warning, from callers)
RENAMED = {"epochs": "max_epochs", "clip_grad": "grad_clip"}


@dataclass(frozen=True)
class PretrainRecipe:
    """Every knob of pretraining (the CLI's options by name)."""

    max_epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    loss: str = "auto"  # auto | T1 | E1 | E2
    noise: str = "auto"  # auto | generated | stored
    train_noise: str = "fresh"  # fresh: new draws every epoch | fixed: the same draw every epoch
    noise_level: float = 1.0
    seed: int = 0
    noise_seed: int | None = None  # None: the same as seed
    mask: str = "quantile:0.85"  # FILE.npy | quantile:R | none
    max_train: int | None = None  # the first N train rows
    max_val: int | None = None  # the first N val rows
    block_rows: int = 4096
    grad_clip: float = 1.0  # max gradient norm (0: no clipping)
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    min_lr: float = 1e-6
    time_limit: float | None = None  # minutes; stop after the epoch that passes it
    save_every: int | None = None  # also keep OUT-ep<E>.ckpt every this many epochs (probing over training)
    device: str = "auto"
    head_init: bool = True  # start mu_x and sigma_x at the data's flux level and spread (init_head)
    head_lr_mult: float = 10.0  # lr factor of the last BatchNorm (head_parameter_groups)

    def __post_init__(self) -> None:
        if self.noise == "fresh":  # the spelling before 0.2
            warnings.warn("PretrainRecipe(noise='fresh') is deprecated: use noise='generated'", DeprecationWarning,
                          stacklevel=3)
            object.__setattr__(self, "noise", "generated")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def effective_noise_seed(self) -> int:
        return int(self.seed if self.noise_seed is None else self.noise_seed)

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> PretrainRecipe:
        """A recipe from a checkpoint's metadata, old spellings included (before 0.2 the noise was keyed by
        the seed, and generated noise was called 'fresh')."""
        values = {RENAMED.get(k, k): v for k, v in saved.items()}
        if values.get("noise") == "fresh":
            values["noise"] = "generated"
        values.setdefault("noise_seed", values.get("seed", 0))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def validate_recipe(recipe: PretrainRecipe) -> None:
    """Every check that needs no file: one line naming the option."""
    level = float(recipe.noise_level)
    checks = [(recipe.max_epochs >= 0, f"--max-epochs must be >= 0, got {recipe.max_epochs}"),
              (recipe.batch_size >= 1, f"--batch-size must be >= 1, got {recipe.batch_size}"),
              (math.isfinite(recipe.lr) and recipe.lr > 0, f"--lr must be a finite number > 0, got {recipe.lr}"),
              (math.isfinite(level) and level > 0, f"--noise-level must be a positive finite number, got {level}"),
              (recipe.block_rows >= 1, f"--block-rows must be >= 1, got {recipe.block_rows}"),
              (recipe.save_every is None or recipe.save_every >= 1,
               f"--save-every must be >= 1 epochs, got {recipe.save_every}"),
              (recipe.max_train is None or recipe.max_train >= 1,
               f"--max-train must be >= 1, got {recipe.max_train}"),
              (recipe.max_val is None or recipe.max_val >= 1, f"--max-val must be >= 1, got {recipe.max_val}"),
              (0 <= recipe.seed < 2**63, f"--seed must be in 0..2**63-1, got {recipe.seed}"),
              (recipe.noise_seed is None or 0 <= recipe.noise_seed < 2**63,
               f"--noise-seed must be in 0..2**63-1, got {recipe.noise_seed}"),
              (math.isfinite(recipe.grad_clip) and recipe.grad_clip >= 0,
               f"--grad-clip must be a finite number >= 0, got {recipe.grad_clip}"),
              (0 < recipe.plateau_factor < 1, f"--plateau-factor must be in (0, 1), got {recipe.plateau_factor}")]
    for ok, message in checks:
        if not ok:
            raise FeatcacheError(message)
    if recipe.loss not in ("auto", *LOSSES):
        raise FeatcacheError("--loss: " + choices_message("loss", recipe.loss, ("auto", *LOSSES)))
    if recipe.noise not in ("auto", *NOISE_SOURCES):
        raise FeatcacheError("--noise: " + choices_message("noise source", recipe.noise, ("auto", *NOISE_SOURCES)))
    if recipe.train_noise not in TRAIN_NOISE:
        raise FeatcacheError("--train-noise: " + choices_message("train noise", recipe.train_noise, TRAIN_NOISE))
    from ..spectra.mask import parse_mask_spec

    parse_mask_spec(recipe.mask)


def recipe_differences(saved: PretrainRecipe, wanted: PretrainRecipe) -> str:
    """'lr 0.1 (saved 0.01); ...' for the settings a resume must keep (option spellings)."""
    found = [Change(c.path.replace("_", "-"), c.saved, c.wanted)
             for c in changes(saved.as_dict(), wanted.as_dict(), ignore=RESUME_FREE)]
    return format_changes(found, "{path} {wanted} (saved {saved})")
