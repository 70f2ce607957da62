"""The torch heads' training recipe, by name, with its defaults (the reference experiment's): defined here
once; the command line shows these values. Torch-free, so reading the defaults imports nothing heavy."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..common.constraints import FRACTION, NON_NEGATIVE, POSITIVE, SEED, SEED_MAX, at_least, validate
from ..common.errors import FeatcacheError

DEFAULT_HIDDEN = 256
DEFAULT_DROPOUT = 0.1
MAX_SEED = SEED_MAX  # seeds go to torch.manual_seed and numpy's SeedSequence: non-negative, 64-bit signed
KNN_WEIGHTS = ("uniform", "distance")  # knn's --knn-weights
DEFAULT_ATTN_HEADS = 4                 # attn's --attn-heads


def is_seed(value: object) -> bool:
    """A whole number in 0..MAX_SEED (bool is not a seed)."""
    try:
        return not isinstance(value, bool) and int(value) == value and 0 <= int(value) <= MAX_SEED  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return False


@dataclass
class TrainRecipe:
    """Every knob of the loop (the CLI's --lr, --weight-decay, --batch-size, --max-epochs, --patience, ...)."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 50
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    patience: int = 15          # early stopping on validation R2; >= max_epochs turns it off
    grad_clip: float | None = 0.5   # None or 0: no clipping
    seed: int = 0
    eval_batch_size: int = 16_384

    constraints = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "batch_size": at_least(1), "max_epochs": at_least(1),
                   "plateau_factor": FRACTION, "plateau_patience": at_least(0), "patience": at_least(1),
                   "grad_clip": (NON_NEGATIVE, None), "seed": SEED, "eval_batch_size": at_least(1)}
    flags = {"plateau_factor": "plateau factor", "plateau_patience": "plateau patience",
             "eval_batch_size": "eval batch size"}

    def validate(self) -> None:
        if not all(math.isfinite(float(v)) for v in (self.lr, self.weight_decay, self.plateau_factor,
                                                      self.grad_clip or 0.0)):  # one line for the three
            raise FeatcacheError(f"--lr, --weight-decay and --grad-clip must be finite numbers, got lr {self.lr}, "
                                 f"weight decay {self.weight_decay}, grad clip {self.grad_clip}")
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
