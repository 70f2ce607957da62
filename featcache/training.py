"""The training loop for torch heads: compact, deterministic, and close to a bare PyTorch loop in speed.

Features and targets are standardised on train and held as one in-memory tensor each; every step gathers a
batch of shuffled row indices (no DataLoader). Defaults are the reference experiment's recipe: AdamW
(lr 1e-3, weight decay 1e-4), batch 256, at most 50 epochs, ReduceLROnPlateau(0.5, patience 5) on
validation loss, early stopping (patience 15) on validation R2 keeping the best weights, gradient clipping
at 0.5, MSE on standardised targets. The loop avoids per-step host syncs: the train loss is summed on the
device and read once per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import FeatcacheError
from .progress import progress as progress_bar
from .ridge import is_constant

_MOMENT_CHUNK = 65_536


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
        checks = [
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
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

    def predict(self, X: Any, batch_size: int = 16_384, device: str | torch.device | None = None) -> np.ndarray:
        """Predictions in the target's original units (float64), rows streamed in batches."""
        if device is None:
            device = next(self.model.parameters()).device
        mean = torch.as_tensor(self.x_mean, dtype=torch.float32, device=device)
        scale = torch.as_tensor(self.x_scale, dtype=torch.float32, device=device)
        n = len(X)
        out = np.empty((n, self.y_mean.shape[0]), dtype=np.float64)
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                xb = torch.as_tensor(np.asarray(X[start:stop], dtype=np.float32), device=device)
                out[start:stop] = self.model((xb - mean) / scale).double().cpu().numpy()
        self.model.train(was_training)
        out = out * self.y_scale + self.y_mean
        return out[:, 0] if self.y_1d else out

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
            "y_1d": self.y_1d, "seconds": self.seconds, "recipe": dict(self.recipe),
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
                   seconds=float(state["seconds"]), recipe=dict(state["recipe"]))


def make_optimizer(params: Any, lr: float, weight_decay: float,
                   device: str | torch.device = "cpu") -> torch.optim.Optimizer:
    """AdamW, fused where the device supports it (one kernel per step instead of a per-parameter loop:
    a measurable share of a small head's step on CPU); same maths as the default implementation."""
    params = list(params)
    if torch.device(device).type in ("cpu", "cuda"):
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (2-norm, foreach) without its per-call grouping: bitwise the same
    result, fewer dispatches per step (clipping is a visible share of a small head's step on CPU)."""
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def _target_name(names: Sequence[str] | None, j: int) -> str:
    return str(names[j]) if names is not None and j < len(names) else str(j)


def _column_moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean and population std per column, in chunks (no full float64 copy), shifted for accuracy."""
    n = X.shape[0]
    shift = X[: min(n, _MOMENT_CHUNK)].mean(axis=0, dtype=np.float64)
    s1 = np.zeros(X.shape[1])
    s2 = np.zeros(X.shape[1])
    for start in range(0, n, _MOMENT_CHUNK):
        block = X[start:start + _MOMENT_CHUNK].astype(np.float64) - shift
        s1 += block.sum(axis=0)
        s2 += np.einsum("ij,ij->j", block, block)
    mean = shift + s1 / n
    var = np.clip(s2 / n - (s1 / n) ** 2, 0.0, None)
    return mean, np.sqrt(var)


def _check_split(X: Any, y: Any, split: str, n_features: int | None,
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
        raise FeatcacheError(f"features contain NaN or inf values ({bad_rows} of {X.shape[0]} {split} rows); "
                             "check the cache (or the spectra it was built from)")
    for j in range(y.shape[1]):
        bad = int(np.count_nonzero(~np.isfinite(y[:, j])))
        if bad:
            raise FeatcacheError(f"target '{_target_name(target_names, j)}' has {bad} NaN or inf values on the "
                                 f"{split} split; drop or fill those rows")
    return X, y


def _standardised_tensor(X: np.ndarray, mean: np.ndarray, scale: np.ndarray, device: torch.device) -> torch.Tensor:
    out = torch.from_numpy(np.array(X, dtype=np.float32, copy=True))
    out.sub_(torch.from_numpy(mean.astype(np.float32))).div_(torch.from_numpy(scale.astype(np.float32)))
    return out.to(device)


def _evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(MSE on standardised targets, mean R2 across targets) in one pass and one host sync."""
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(X[i:i + batch_size]) for i in range(0, X.shape[0], batch_size)])
        err = (pred - y).double()
        yd = y.double()
        sse = (err * err).sum(dim=0)
        sst = ((yd - yd.mean(dim=0)) ** 2).sum(dim=0)
        loss = sse.sum() / err.numel()
        r2 = (1.0 - sse / sst).mean()
        loss_f, r2_f = torch.stack([loss, r2]).tolist()
    model.train()
    return loss_f, r2_f


def train_head(model: nn.Module, X_train: Any, y_train: Any, X_val: Any = None, y_val: Any = None,
               recipe: TrainRecipe | None = None, device: str | torch.device = "cpu", progress: bool = True,
               target_names: Sequence[str] | None = None, desc: str = "fit",
               num_threads: int | None = None) -> TrainResult:
    """Train `model` (standardised features in, standardised targets out) and return its best weights.

    Without validation rows the scheduler and early stopping follow the train loss and the last epoch is
    kept. Deterministic given recipe.seed: shuffling uses its own torch.Generator and dropout runs under a
    seeded, forked global RNG (the caller's RNG state is left as it was). num_threads sets torch's CPU
    threads for this call only (a small head on a busy machine is often fastest on one thread).
    """
    if num_threads is None:
        return _train_head(model, X_train, y_train, X_val, y_val, recipe, device, progress, target_names, desc)
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(num_threads)))
    try:
        return _train_head(model, X_train, y_train, X_val, y_val, recipe, device, progress, target_names, desc)
    finally:
        torch.set_num_threads(previous)


def _train_head(model: nn.Module, X_train: Any, y_train: Any, X_val: Any, y_val: Any,
                recipe: TrainRecipe | None, device: str | torch.device, progress: bool,
                target_names: Sequence[str] | None, desc: str) -> TrainResult:
    start_time = time.perf_counter()
    recipe = recipe or TrainRecipe()
    recipe.validate()
    device = torch.device(device)
    Xtr, ytr = _check_split(X_train, y_train, "train", None, target_names)
    y_1d = np.asarray(y_train).ndim == 1
    n, d = Xtr.shape
    x_mean, x_std = _column_moments(Xtr)
    x_scale = np.where(is_constant(x_std, x_mean), 1.0, x_std)  # constant columns: scale 1
    y_mean = ytr.mean(axis=0)
    y_std = ytr.std(axis=0)
    for j in np.flatnonzero(is_constant(y_std, y_mean)):
        raise FeatcacheError(f"target '{_target_name(target_names, j)}' is constant on the train split "
                             f"(every value is {y_mean[j]:.6g}); nothing to fit")
    y_scale = y_std
    xs = _standardised_tensor(Xtr, x_mean, x_scale, device)
    ys = torch.from_numpy(((ytr - y_mean) / y_scale).astype(np.float32)).to(device)
    has_val = X_val is not None
    if has_val:
        Xv, yv = _check_split(X_val, y_val, "validation", d, target_names)
        if yv.shape[1] != ytr.shape[1]:
            raise FeatcacheError(f"validation has {yv.shape[1]} targets; train has {ytr.shape[1]}")
        v_std = yv.std(axis=0)
        for j in np.flatnonzero(is_constant(v_std, yv.mean(axis=0))):
            raise FeatcacheError(f"target '{_target_name(target_names, j)}' is constant on the validation "
                                 "split; validation R2 is undefined")
        xv = _standardised_tensor(Xv, x_mean, x_scale, device)
        yvs = torch.from_numpy(((yv - y_mean) / y_scale).astype(np.float32)).to(device)

    fork_devices = [device] if device.type == "cuda" else []
    history: list[dict[str, float]] = []
    best_epoch, best_r2, best_state = 0, -float("inf"), None
    bs = int(recipe.batch_size)
    clip = recipe.grad_clip if recipe.grad_clip else None
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(recipe.seed)
        gen = torch.Generator(device="cpu").manual_seed(recipe.seed)
        model.to(device)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(params, recipe.lr, recipe.weight_decay, device)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=recipe.plateau_factor,
                                                           patience=recipe.plateau_patience)
        loss_fn = nn.MSELoss()
        bad_epochs = 0
        bar = progress_bar(total=recipe.max_epochs, desc=desc, unit="epoch") if progress else None
        for epoch in range(1, recipe.max_epochs + 1):
            t0 = time.perf_counter()
            lr = opt.param_groups[0]["lr"]
            perm = torch.randperm(n, generator=gen).to(device)
            loss_sum = torch.zeros((), device=device)
            for i in range(0, n, bs):
                idx = perm[i:i + bs]
                loss = loss_fn(model(xs[idx]), ys[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if clip is not None:
                    clip_grad_norm([p.grad for p in params if p.grad is not None], clip)
                opt.step()
                loss_sum += loss.detach() * idx.shape[0]
            train_loss = loss_sum.item() / n
            if has_val:
                val_loss, val_r2 = _evaluate(model, xv, yvs, recipe.eval_batch_size)
            else:
                val_loss, val_r2 = float("nan"), float("nan")
            monitor = val_loss if has_val else train_loss
            sched.step(monitor)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_r2": val_r2,
                            "lr": lr, "seconds": time.perf_counter() - t0})
            if bar is not None:
                bar.set_postfix(loss=f"{train_loss:.4f}", val_r2=f"{val_r2:.4f}", refresh=False)
                bar.update(1)
            if not has_val:
                best_epoch = epoch
                continue
            if val_r2 > best_r2:
                best_r2, best_epoch, bad_epochs = val_r2, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
                if bad_epochs >= recipe.patience:
                    break
        if bar is not None:
            bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model=model, best_epoch=best_epoch, best_val_r2=best_r2 if has_val else None,
                       history=history, x_mean=x_mean, x_scale=x_scale, y_mean=y_mean, y_scale=y_scale,
                       y_1d=y_1d, seconds=time.perf_counter() - start_time, recipe=recipe.to_dict())
