"""`train_head`: one torch head trained by the heads' one loop (heads.loop, the group of one), and its result.

Features and targets are standardised on train and held as one in-memory tensor each (or streamed from the
cache, heads.streaming); every step gathers a batch of shuffled row indices (no DataLoader). Defaults are the
reference experiment's recipe: AdamW (lr 1e-3, weight decay 1e-4), batch 256, at most 50 epochs,
the plateau rule (0.5, patience 5) on validation loss, early stopping (patience 15) on validation R2 keeping
the best weights, gradient clipping at 0.5, MSE on standardised targets. The loop avoids per-step host syncs:
the train loss is summed on the device and read once per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..common.device import torch_threads
from ..common.errors import FeatcacheError
from ..common.progress import progress as progress_bar
from .dropout import mask_streams
from .loop import MemoryRows, ModuleGroup, clip_grad_norm, make_optimizer, train_loop
from .recipe import TrainRecipe
from .standardise import (
    check_val_targets,
    checked_targets,
    column_moments,
    is_constant,
    nonfinite_rows_error,
    target_moments,
)
from .streaming import StreamedRows, in_memory_bytes, parse_memory, streamed_rows

__all__ = ["TrainResult", "train_head", "training_rows", "standardise", "check_split", "clip_grad_norm",
           "make_optimizer", "PREDICT_BLOCK_BYTES"]  # clip_grad_norm, make_optimizer: heads.loop's, named here too

PREDICT_BLOCK_BYTES = 64 * 2**20


@dataclass
class TrainResult:
    """The head with its best weights, plus the standardisation that maps predictions to target units."""

    model: nn.Module
    best_epoch: int
    best_val_r2: float | None
    history: list[dict[str, float]]
    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: np.ndarray
    y_scale: np.ndarray
    y_1d: bool
    seconds: float
    recipe: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, Any] = field(default_factory=lambda: {"sampler": "in-memory"})  # how train rows were fed

    @property
    def gaussian(self) -> bool:
        """True for heads that predict a sigma per row (mlp_1_gauss: their module splits its output into a
        mean and a sigma)."""
        return callable(getattr(self.model, "split", None))

    def predict(self, X: Any, batch_size: int = 16_384, device: str | torch.device | None = None) -> np.ndarray:
        """Predictions (the mean of an uncertainty head) in the target's original units (float64)."""
        return self.predict_dist(X, batch_size, device)[0]

    def predict_sigma(self, X: Any, batch_size: int = 16_384) -> np.ndarray:
        """Per-row standard deviations in the target's units (uncertainty heads only)."""
        sigma = self.predict_dist(X, batch_size)[1]
        if sigma is None:
            raise FeatcacheError("this head predicts no uncertainty (use an uncertainty head such as mlp_1_gauss)")
        return sigma

    def predict_dist(self, X: Any, batch_size: int = 16_384, device: str | torch.device | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """(mean, sigma) in the target's original units (float64; sigma None for point heads), rows streamed
        in batches."""
        if device is None:
            device = next(self.model.parameters()).device
        mean = torch.as_tensor(self.x_mean, dtype=torch.float32, device=device)
        scale = torch.as_tensor(self.x_scale, dtype=torch.float32, device=device)
        n, gaussian = len(X), self.gaussian
        # wide rows (a --pool none map): at most PREDICT_BLOCK_BYTES of float32 features per batch
        batch_size = max(1, min(batch_size, PREDICT_BLOCK_BYTES // (4 * max(1, int(np.shape(X)[1])))))
        out = np.empty((n, self.y_mean.shape[0]), dtype=np.float64)
        sigma = np.empty_like(out) if gaussian else None
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                xb = torch.as_tensor(np.asarray(X[start:stop], dtype=np.float32), device=device)
                raw = self.model((xb - mean) / scale)
                if gaussian:
                    mu, sd = self.model.split(raw)
                    out[start:stop], sigma[start:stop] = mu.double().cpu().numpy(), sd.double().cpu().numpy()
                else:
                    out[start:stop] = raw.double().cpu().numpy()
        self.model.train(was_training)
        out = out * self.y_scale + self.y_mean
        if sigma is not None:
            sigma = sigma * self.y_scale
        if self.y_1d:
            return out[:, 0], None if sigma is None else sigma[:, 0]
        return out, sigma

    def to_state(self) -> dict[str, Any]:
        """Plain tensors and numbers (torch.load(weights_only=True) can read it back)."""
        return {
            "kind": "torch",
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "best_epoch": self.best_epoch,
            "best_val_r2": self.best_val_r2,
            "history": [dict(h) for h in self.history],
            "x_mean": torch.as_tensor(self.x_mean), "x_scale": torch.as_tensor(self.x_scale),
            "y_mean": torch.as_tensor(self.y_mean), "y_scale": torch.as_tensor(self.y_scale),
            "y_1d": self.y_1d, "seconds": self.seconds, "recipe": dict(self.recipe), "rows": dict(self.rows),
        }

    @classmethod
    def from_state(cls, model: nn.Module, state: dict[str, Any]) -> TrainResult:
        """Rebuild around a freshly created head of the same architecture (see heads.create_head)."""
        model.load_state_dict(state["state_dict"])
        model.eval()
        return cls(model=model, best_epoch=int(state["best_epoch"]), best_val_r2=state["best_val_r2"],
                   history=list(state["history"]), x_mean=state["x_mean"].double().numpy(),
                   x_scale=state["x_scale"].double().numpy(), y_mean=state["y_mean"].double().numpy(),
                   y_scale=state["y_scale"].double().numpy(), y_1d=bool(state["y_1d"]),
                   seconds=float(state["seconds"]), recipe=dict(state["recipe"]),
                   rows=dict(state.get("rows") or {"sampler": "in-memory"}))


def check_split(X: Any, y: Any, split: str, n_features: int | None,
                 target_names: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    if X.ndim != 2 or y.ndim != 2 or X.shape[0] != y.shape[0]:
        raise FeatcacheError(f"{split}: features and targets do not match: shapes {X.shape} and {y.shape}")
    if X.shape[0] == 0:
        raise FeatcacheError(f"the {split} split has no rows")
    if n_features is not None and X.shape[1] != n_features:
        raise FeatcacheError(f"{split} features have {X.shape[1]} columns; train has {n_features}")
    bad_rows = int(np.count_nonzero(~np.isfinite(X).all(axis=1)))
    if bad_rows:
        raise nonfinite_rows_error(bad_rows, X.shape[0], split)
    return X, checked_targets(y, split, target_names)


def _standardised_tensor(X: np.ndarray, mean: np.ndarray, scale: np.ndarray, device: torch.device) -> torch.Tensor:
    out = torch.from_numpy(np.array(X, dtype=np.float32, copy=True))
    out.sub_(torch.from_numpy(mean.astype(np.float32))).div_(torch.from_numpy(scale.astype(np.float32)))
    return out.to(device)


def standardise(X_train: Any, y_train: Any, X_val: Any, y_val: Any, device: torch.device,
                target_names: Sequence[str] | None) -> MemoryRows:
    """Check both splits and standardise them with the train split's mean and population std."""
    Xtr, ytr = check_split(X_train, y_train, "train", None, target_names)
    x_mean, x_std = column_moments(Xtr)
    x_scale = np.where(is_constant(x_std, x_mean), 1.0, x_std)  # constant columns: scale 1
    y_mean, y_scale = target_moments(ytr, target_names)
    xs = _standardised_tensor(Xtr, x_mean, x_scale, device)
    ys = torch.from_numpy(((ytr - y_mean) / y_scale).astype(np.float32)).to(device)
    xv = yvs = None
    if X_val is not None:
        Xv, yv = check_split(X_val, y_val, "validation", Xtr.shape[1], target_names)
        check_val_targets(yv, ytr.shape[1], target_names)
        xv = _standardised_tensor(Xv, x_mean, x_scale, device)
        yvs = torch.from_numpy(((yv - y_mean) / y_scale).astype(np.float32)).to(device)
    return MemoryRows(xs, ys, xv, yvs, x_mean, x_scale, y_mean, y_scale)


def train_head(model: nn.Module, X_train: Any, y_train: Any, X_val: Any = None, y_val: Any = None,
               recipe: TrainRecipe | None = None, device: str | torch.device = "cpu", progress: bool = True,
               target_names: Sequence[str] | None = None, desc: str = "fit",
               num_threads: int | None = None, max_memory: int | str | None = None,
               stream: bool | None = None) -> TrainResult:
    """Train `model` (standardised features in, standardised targets out) and return its best weights.

    Without validation rows the scheduler and early stopping follow the train loss and the last epoch is
    kept. Deterministic given recipe.seed: shuffling uses its own torch.Generator, the registry's Dropout
    modules draw from a MaskStream(recipe.seed) (heads.dropout), and anything else random runs under a seeded,
    forked global RNG (the caller's RNG state is left as it was). num_threads sets torch's CPU
    threads for this call only (a small head on a busy machine is often fastest on one thread).

    X_train / X_val may be lazy row-sliceable matrices (the cache's FeatureMatrix): when loading them (and
    their standardised copy) would exceed max_memory (bytes or '1GB' / '25%'; None: half the available RAM),
    the train rows stream from the cache through the block-shuffle sampler of heads.streaming instead
    (stream=True streams whatever the size, False never does).
    """
    started = time.perf_counter()
    recipe = recipe or TrainRecipe()
    recipe.validate()
    device = torch.device(device)
    with torch_threads(num_threads):
        rows = training_rows(X_train, y_train, X_val, y_val, device, target_names, max_memory, stream)
        group = ModuleGroup([model], [rows], [recipe], device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                mask_streams(model, recipe.seed, device):
            torch.manual_seed(recipe.seed)
            bar = progress_bar(total=recipe.max_epochs, desc=desc, unit="epoch") if progress else None
            try:
                (history,), (stopper,) = train_loop(group, [recipe], device, bar)
            finally:
                if bar is not None:
                    bar.close()
    stopper.restore(model)
    model.eval()
    objective = group.objectives[0]
    objective.finish(model, rows, recipe.eval_batch_size)
    best_val_r2 = objective.best_val_r2(stopper.best_epoch, stopper.best_score, history, rows.has_val)
    return TrainResult(model=model, best_epoch=stopper.best_epoch, best_val_r2=best_val_r2, history=history,
                       x_mean=rows.x_mean, x_scale=rows.x_scale, y_mean=rows.y_mean, y_scale=rows.y_scale,
                       y_1d=np.asarray(y_train).ndim == 1, seconds=time.perf_counter() - started,
                       recipe=recipe.to_dict(), rows=rows.describe())


def training_rows(X_train: Any, y_train: Any, X_val: Any, y_val: Any, device: torch.device,
                  target_names: Sequence[str] | None, max_memory: int | str | None, stream: bool | None
                  ) -> MemoryRows | StreamedRows:
    """Rows in memory, or streamed from the cache when a lazy matrix's rows would exceed the budget."""
    lazy = hasattr(X_train, "load")  # a lazy matrix (the cache's FeatureMatrix)
    if stream and not lazy:
        raise FeatcacheError("stream=True needs a lazy row-sliceable matrix (the cache's FeatureMatrix) as X_train")
    if lazy and stream is not False:
        budget = parse_memory(max_memory)
        n_val = len(X_val) if X_val is not None else 0
        if stream or in_memory_bytes(len(X_train), n_val, int(X_train.shape[1])) > budget:
            return streamed_rows(X_train, y_train, X_val, y_val, device, budget, target_names)
    if lazy:
        X_train = X_train.load()
        X_val = X_val.load() if hasattr(X_val, "load") else X_val
    return standardise(X_train, y_train, X_val, y_val, device, target_names)
