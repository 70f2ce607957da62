"""The torch heads' training recipe, by name, with its defaults (the reference experiment's): defined here
once; the command line shows these values. Torch-free, so reading the defaults imports nothing heavy."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..common.errors import FeatcacheError

DEFAULT_HIDDEN = 256
DEFAULT_DROPOUT = 0.1
MAX_SEED = 2**63 - 1  # seeds go to torch.manual_seed and numpy's SeedSequence: non-negative, 64-bit signed
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

    def validate(self) -> None:
        finite = all(math.isfinite(float(v)) for v in (self.lr, self.weight_decay, self.plateau_factor,
                                                        self.grad_clip or 0.0))
        checks = [
            (finite, f"--lr, --weight-decay and --grad-clip must be finite numbers, got lr {self.lr}, weight decay "
                     f"{self.weight_decay}, grad clip {self.grad_clip}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (is_seed(self.seed),
             f"--seed must be an integer in 0..2**63-1, got {self.seed}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.max_epochs >= 1, f"--max-epochs must be >= 1, got {self.max_epochs}"),
            (0 < self.plateau_factor < 1, f"plateau factor must be in (0, 1), got {self.plateau_factor}"),
            (self.plateau_patience >= 0, f"plateau patience must be >= 0, got {self.plateau_patience}"),
            (self.patience >= 1, f"--patience must be >= 1, got {self.patience}"),
            (self.grad_clip is None or self.grad_clip >= 0, f"--grad-clip must be >= 0, got {self.grad_clip}"),
            (self.eval_batch_size >= 1, f"eval batch size must be >= 1, got {self.eval_batch_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise FeatcacheError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
