"""Early stopping on a validation score, keeping the best weights: one rule for heads and fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn


class EarlyStopping:
    """Track the best validation score; `step` says when `patience` epochs in a row brought nothing better.

    Without validation (score None) every epoch is the best so far and nothing stops: the last epoch is kept.
    The best weights are a detached copy of the model's state dict (buffers too, e.g. BatchNorm statistics).
    """

    def __init__(self, patience: int):
        self.patience = int(patience)
        self.best_score = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best_state: dict[str, Any] | None = None

    def step(self, epoch: int, score: float | None, model: nn.Module | Callable[[], dict[str, Any]]) -> bool:
        """Record an epoch's score; True when training should stop. model: the module, or a function giving
        its state dict (a head inside a stack of heads)."""
        if score is None:
            self.best_epoch = epoch
            return False
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            state = model.state_dict() if isinstance(model, nn.Module) else model()
            self.best_state = {k: v.detach().clone() for k, v in state.items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best weights into `model` (nothing to do without validation)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (a weights-only checkpoint can hold it); weights copied to the CPU."""
        best = None if self.best_state is None else {k: v.detach().cpu() for k, v in self.best_state.items()}
        return {"best_epoch": self.best_epoch, "best_r2": float(self.best_score), "bad_epochs": self.bad_epochs,
                "best_model": best}

    def load_state_dict(self, state: dict[str, Any], device: Any = None) -> None:
        self.best_epoch, self.best_score = int(state["best_epoch"]), float(state["best_r2"])
        self.bad_epochs = int(state["bad_epochs"])
        best = state.get("best_model")
        self.best_state = None if best is None else {k: v.to(device) if device is not None else v
                                                     for k, v in best.items()}
