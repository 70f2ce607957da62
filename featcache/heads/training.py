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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..common.device import torch_threads
from ..common.errors import FeatcacheError
from ..common.progress import progress as progress_bar
from .dropout import mask_streams
from .early_stopping import EarlyStopping
from .gaussian import is_gaussian, warmup_epochs
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
        """True for heads that predict a sigma per row (mlp_1_gauss)."""
        return is_gaussian(self.model)

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
        raise nonfinite_rows_error(bad_rows, X.shape[0], split)
    return X, checked_targets(y, split, target_names)


def _standardised_tensor(X: np.ndarray, mean: np.ndarray, scale: np.ndarray, device: torch.device) -> torch.Tensor:
    out = torch.from_numpy(np.array(X, dtype=np.float32, copy=True))
    out.sub_(torch.from_numpy(mean.astype(np.float32))).div_(torch.from_numpy(scale.astype(np.float32)))
    return out.to(device)


def _evaluate(model: nn.Module, blocks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float, float]:
    """(MSE on standardised targets, mean R2 across targets, mean Gaussian NLL or NaN for point heads) over
    the validation blocks, in one host sync."""
    model.eval()
    with torch.inference_mode():
        outs, ys = zip(*[(model(xb), yb) for xb, yb in blocks], strict=True)
        out, y = torch.cat(outs), torch.cat(ys)
        pred = model.split(out)[0] if is_gaussian(model) else out
        err = (pred - y).double()
        yd = y.double()
        sse = (err * err).sum(dim=0)
        sst = ((yd - yd.mean(dim=0)) ** 2).sum(dim=0)
        loss = sse.sum() / err.numel()
        r2 = (1.0 - sse / sst).mean()
        # uncertainty heads: the validation NLL after the closed-form sigma scale (heads.gaussian)
        nll = (model.calibrated_nll(out, y)[0].double() if is_gaussian(model)
               else torch.full((), float("nan"), dtype=torch.float64))
        loss_f, r2_f, nll_f = torch.stack([loss, r2, nll]).tolist()
    model.train()
    return loss_f, r2_f, nll_f


@dataclass
class _Standardised:
    """Train (and validation) rows as standardised tensors on the device, and the standardisation."""

    xs: torch.Tensor
    ys: torch.Tensor
    xv: torch.Tensor | None
    yv: torch.Tensor | None
    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: np.ndarray
    y_scale: np.ndarray

    @property
    def n_train(self) -> int:
        return int(self.xs.shape[0])

    @property
    def has_val(self) -> bool:
        return self.xv is not None

    def describe(self) -> dict[str, Any]:
        return {"sampler": "in-memory"}

    def train_batches(self, gen: torch.Generator, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch: a permutation of all train rows, gathered batch by batch."""
        perm = torch.randperm(self.n_train, generator=gen).to(self.xs.device)
        for i in range(0, self.n_train, batch_size):
            idx = perm[i:i + batch_size]
            yield self.xs[idx], self.ys[idx]

    def train_blocks(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, self.n_train, batch_size):
            yield self.xs[i:i + batch_size], self.ys[i:i + batch_size]

    def val_blocks(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        assert self.xv is not None and self.yv is not None
        for i in range(0, self.xv.shape[0], batch_size):
            yield self.xv[i:i + batch_size], self.yv[i:i + batch_size]


def _standardise(X_train: Any, y_train: Any, X_val: Any, y_val: Any, device: torch.device,
                 target_names: Sequence[str] | None) -> _Standardised:
    """Check both splits and standardise them with the train split's mean and population std."""
    Xtr, ytr = _check_split(X_train, y_train, "train", None, target_names)
    x_mean, x_std = column_moments(Xtr)
    x_scale = np.where(is_constant(x_std, x_mean), 1.0, x_std)  # constant columns: scale 1
    y_mean, y_scale = target_moments(ytr, target_names)
    xs = _standardised_tensor(Xtr, x_mean, x_scale, device)
    ys = torch.from_numpy(((ytr - y_mean) / y_scale).astype(np.float32)).to(device)
    xv = yvs = None
    if X_val is not None:
        Xv, yv = _check_split(X_val, y_val, "validation", Xtr.shape[1], target_names)
        check_val_targets(yv, ytr.shape[1], target_names)
        xv = _standardised_tensor(Xv, x_mean, x_scale, device)
        yvs = torch.from_numpy(((yv - y_mean) / y_scale).astype(np.float32)).to(device)
    return _Standardised(xs, ys, xv, yvs, x_mean, x_scale, y_mean, y_scale)


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
        data = _training_rows(X_train, y_train, X_val, y_val, device, target_names, max_memory, stream)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                mask_streams(model, recipe.seed, device):
            torch.manual_seed(recipe.seed)
            bar = progress_bar(total=recipe.max_epochs, desc=desc, unit="epoch") if progress else None
            try:
                history, stopper = _train_loop(model, data, recipe, device, bar)
            finally:
                if bar is not None:
                    bar.close()
    stopper.restore(model)
    model.eval()
    has_val = data.has_val
    if has_val and is_gaussian(model):  # the sigma scale of the kept weights, from the validation rows
        with torch.inference_mode():
            outs, ys = zip(*[(model(xb), yb) for xb, yb in data.val_blocks(recipe.eval_batch_size)], strict=True)
            model.sigma_scale.copy_(model.calibrated_nll(torch.cat(outs), torch.cat(ys))[1])
    best_val_r2 = stopper.best_score if has_val else None
    if has_val and is_gaussian(model):  # chosen on validation NLL: report that epoch's validation R2
        best_val_r2 = next((h["val_r2"] for h in history if h["epoch"] == stopper.best_epoch), None)
    return TrainResult(model=model, best_epoch=stopper.best_epoch,
                       best_val_r2=best_val_r2, history=history,
                       x_mean=data.x_mean, x_scale=data.x_scale, y_mean=data.y_mean, y_scale=data.y_scale,
                       y_1d=np.asarray(y_train).ndim == 1, seconds=time.perf_counter() - started,
                       recipe=recipe.to_dict(), rows=data.describe())


def _train_loop(model: nn.Module, data: _Standardised | StreamedRows, recipe: TrainRecipe, device: torch.device,
                bar: Any) -> tuple[list[dict[str, float]], EarlyStopping]:
    """The epoch loop (nanoGPT-style: one flat loop, a comment per phase); leaves the last weights in model.
    `data` holds the rows in memory or streams them (heads.streaming); the loop is the same."""
    n, bs = data.n_train, int(recipe.batch_size)
    gen = torch.Generator(device="cpu").manual_seed(recipe.seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, recipe.lr, recipe.weight_decay, device)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=recipe.plateau_factor,
                                                       patience=recipe.plateau_patience)
    loss_fn, stopper, history = nn.MSELoss(), EarlyStopping(recipe.patience), []
    # uncertainty heads (heads.gaussian): MSE on the mean for the warm-up epochs, then sigma warm-started
    # and the Gaussian NLL; the NLL epochs are chosen by validation NLL (warm-up epochs are never kept)
    gaussian = is_gaussian(model)
    warm = warmup_epochs(recipe.max_epochs) if gaussian else 0
    for epoch in range(1, recipe.max_epochs + 1):
        t0, lr = time.perf_counter(), opt.param_groups[0]["lr"]
        nll_phase = gaussian and epoch > warm
        if nll_phase and epoch == warm + 1:
            _warm_start_sigma(model, data, recipe.eval_batch_size)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=recipe.plateau_factor,
                                                               patience=recipe.plateau_patience)
        # one pass over the shuffled train rows; the loss is summed on the device (no per-step host sync)
        loss_sum = torch.zeros((), device=device)
        for xb, yb in data.train_batches(gen, bs):
            out = model(xb)
            if nll_phase:
                loss = model.nll(out, yb)
            elif gaussian:
                loss = loss_fn(model.split(out)[0], yb)
            else:
                loss = loss_fn(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip:
                clip_grad_norm([p.grad for p in params if p.grad is not None], recipe.grad_clip)
            opt.step()
            loss_sum += loss.detach() * yb.shape[0]
        # validation scores, then the plateau schedule on the validation loss (train loss without one)
        train_loss = loss_sum.item() / n
        val_loss, val_r2, val_nll = (_evaluate(model, data.val_blocks(recipe.eval_batch_size))
                                     if data.has_val else (float("nan"),) * 3)
        sched.step((val_nll if nll_phase else val_loss) if data.has_val else train_loss)
        entry = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_r2": val_r2}
        if gaussian:
            entry["val_nll"] = val_nll
        history.append({**entry, "lr": lr, "seconds": time.perf_counter() - t0})
        if bar is not None:
            bar.set_postfix(loss=f"{train_loss:.4f}", val_r2=f"{val_r2:.4f}", refresh=False)
            bar.update(1)
        # early stopping on validation R2 (uncertainty heads: on validation NLL after the warm-up), keeping the
        # best weights
        score = None if not data.has_val else (-val_nll if nll_phase else None if gaussian else val_r2)
        if stopper.step(epoch, score, model):
            break
    return history, stopper


def _warm_start_sigma(model: nn.Module, data: _Standardised | StreamedRows, batch_size: int) -> None:
    """Sigma of an uncertainty head starts at the train residual RMS of the warmed-up mean (per target)."""
    model.eval()
    with torch.inference_mode():
        sse: torch.Tensor | int = 0
        for xb, yb in data.train_blocks(batch_size):
            mean = model.split(model(xb))[0]
            sse = sse + ((mean - yb).double() ** 2).sum(dim=0)
    model.train()
    model.warm_start_sigma((sse / data.n_train).sqrt().float())


def _training_rows(X_train: Any, y_train: Any, X_val: Any, y_val: Any, device: torch.device,
                   target_names: Sequence[str] | None, max_memory: int | str | None, stream: bool | None
                   ) -> _Standardised | StreamedRows:
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
    return _standardise(X_train, y_train, X_val, y_val, device, target_names)
