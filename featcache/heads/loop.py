"""The one training loop of the torch heads: N >= 1 heads at a time (DINOv2's linear evaluation trains its grid
of heads this way: the heads as one module, one optimiser with parameter groups).

`train_loop` is one flat epoch loop (nanoGPT-style, a comment per phase). What it trains is a head group:
`ModuleGroup` (any torch heads side by side, each its own module; a head trained alone is the group of one)
or `StackedMLPs` (the registry's plain MLPs as stacked weights and batched matrix products). Every head keeps
its own of everything that makes its numbers: its rows' shuffle (a torch.Generator of its seed), its dropout
masks (heads.dropout.MaskStream of its seed), its learning rate and plateau schedule, its gradient-norm clip,
its early stopping with its best weights, and its loss and scores: the module's objective (MSE and validation
R2 unless the module brings its own, as heads.gaussian does with its warm-up and NLL). So a head trained in a
group gets what it gets alone, up to float32 summation order, by construction.

The optimiser is torch's AdamW (fused where the device has it), one parameter group per distinct (learning
rate, weight decay) of the heads still training: a group of one head is exactly the loop `train_head` ran
before; a stack of heads that share their rate steps in one fused call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .early_stopping import EarlyStopping
from .recipe import TrainRecipe

Scores = tuple[float, float, float]  # validation (loss, mean R2, NLL or NaN)


# -- what a head optimises and how it is scored ---------------------------------------------------------------
def regression_scores(pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE over rows and targets, mean R2 across targets) in float64, over the last two dimensions (a leading
    dimension, if any, holds heads)."""
    err = (pred - y).double()
    yd = y.double()
    sse = (err * err).sum(dim=-2)
    sst = ((yd - yd.mean(dim=-2, keepdim=True)) ** 2).sum(dim=-2)
    return sse.sum(dim=-1) / (err.shape[-2] * err.shape[-1]), (1.0 - sse / sst).mean(dim=-1)


class Objective:
    """A point head's objective: MSE on standardised targets; the plateau schedule follows the validation
    loss (the train loss without validation rows); early stopping keeps the best validation R2."""

    def begin_epoch(self, epoch: int, model: nn.Module, rows: Any, batch_size: int) -> bool:
        """Called before each epoch; True restarts the head's plateau schedule."""
        return False

    def loss(self, model: nn.Module, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out, y)

    def val_scores(self, model: nn.Module, out: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, r2 = regression_scores(out, y)
        return loss, r2, torch.full((), float("nan"), dtype=torch.float64)

    def schedule_metric(self, train_loss: float, val: Scores | None) -> float:
        return train_loss if val is None else val[0]

    def score(self, val: Scores | None) -> float | None:
        """The early-stopping score (higher is better); None: every epoch is the best so far."""
        return None if val is None else val[1]

    def history_extra(self, val: Scores | None) -> dict[str, float]:
        return {}

    def finish(self, model: nn.Module, rows: Any, batch_size: int) -> None:
        """After the best weights are back (heads.gaussian sets its sigma scale here)."""

    def best_val_r2(self, best_epoch: int, best_score: float, history: list[dict[str, float]],
                    has_val: bool) -> float | None:
        return best_score if has_val else None


def objective_of(model: nn.Module, max_epochs: int) -> Objective:
    """The module's own objective (`model.objective(max_epochs)`), or MSE."""
    make = getattr(model, "objective", None)
    return make(max_epochs) if callable(make) else Objective()


class Plateau:
    """torch's ReduceLROnPlateau rule (mode min, relative threshold 1e-4, no cooldown, no floor) for one
    head's learning rate, so each head of a group has its own schedule (tested against torch's)."""

    def __init__(self, lr: float, factor: float, patience: int, threshold: float = 1e-4, eps: float = 1e-8):
        self.lr, self.factor, self.patience, self.threshold, self.eps = float(lr), factor, patience, threshold, eps
        self.reset()

    def reset(self) -> None:
        self.best, self.bad_epochs = math.inf, 0

    def step(self, metric: float) -> None:
        current = float(metric)
        if current < self.best * (1.0 - self.threshold):
            self.best, self.bad_epochs = current, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            new = self.lr * self.factor
            if self.lr - new > self.eps:
                self.lr = new
            self.bad_epochs = 0


# -- the optimiser: torch's AdamW over the heads still training ---------------------------------------------
def make_optimizer(params: Any, lr: float, weight_decay: float,
                   device: str | torch.device = "cpu") -> torch.optim.Optimizer:
    """AdamW, fused where the device supports it (one kernel per step instead of a per-parameter loop:
    a measurable share of a small head's step on CPU); same maths as the default implementation. params:
    tensors, or parameter groups (dicts with their own lr / weight_decay)."""
    params = list(params)
    if torch.device(device).type in ("cpu", "cuda"):
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def grouped_optimizer(params: list[list[torch.Tensor]], lrs: list[float], wds: list[float],
                      device: torch.device, previous: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
    """One AdamW whose parameter groups are the tensors grouped by (lr, weight decay) (params[i] trains at
    lrs[i], wds[i]); the moments and step counts of `previous` carry over (its `state` is keyed by tensor)."""
    groups: dict[tuple[float, float], list[torch.Tensor]] = {}
    for tensors, lr, wd in zip(params, lrs, wds, strict=True):
        groups.setdefault((lr, wd), []).extend(tensors)
    opt = make_optimizer([{"params": ts, "lr": lr, "weight_decay": wd} for (lr, wd), ts in groups.items()],
                         lrs[0], wds[0], device)
    if previous is not None:
        for tensors in params:
            for p in tensors:
                if p in previous.state:
                    opt.state[p] = previous.state[p]
    return opt


def clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (2-norm, foreach) without its per-call grouping: bitwise the same
    result, fewer dispatches per step (clipping is a visible share of a small head's step on CPU)."""
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


# -- one head's rows in memory -------------------------------------------------------------------------------
class MemoryRows:
    """Train (and validation) rows as standardised tensors on the device, and the standardisation."""

    def __init__(self, xs: torch.Tensor, ys: torch.Tensor, xv: torch.Tensor | None, yv: torch.Tensor | None,
                 x_mean: np.ndarray, x_scale: np.ndarray, y_mean: np.ndarray, y_scale: np.ndarray):
        self.xs, self.ys, self.xv, self.yv = xs, ys, xv, yv
        self.x_mean, self.x_scale, self.y_mean, self.y_scale = x_mean, x_scale, y_mean, y_scale

    @property
    def n_train(self) -> int:
        return int(self.xs.shape[0])

    @property
    def has_val(self) -> bool:
        return self.xv is not None

    def describe(self) -> dict[str, Any]:
        return {"sampler": "in-memory"}

    def permutation(self, gen: torch.Generator) -> torch.Tensor:
        """One epoch's order of the train rows."""
        return torch.randperm(self.n_train, generator=gen).to(self.xs.device)

    def train_batches(self, gen: torch.Generator, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch: a permutation of all train rows, gathered batch by batch."""
        perm = self.permutation(gen)
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


# -- the loop ------------------------------------------------------------------------------------------------
def train_loop(group: Any, recipes: Sequence[TrainRecipe], device: torch.device, bar: Any = None,
               on_finished: Callable[[int], None] | None = None
               ) -> tuple[list[list[dict[str, float]]], list[EarlyStopping]]:
    """Train every head of `group` (ModuleGroup or StackedMLPs) for at most max_epochs; each head leaves the
    group when its early stopping says so. Returns each head's history and its early stopping (best epoch,
    score and weights); the group holds each head's last weights. on_finished(k) is told whenever k heads
    finish training (compare's progress counts the fits of a batched pass as they finish)."""
    n_heads, n, bs = group.n_heads, group.n_train, int(recipes[0].batch_size)
    has_val, eval_bs = group.has_val, int(recipes[0].eval_batch_size)
    gens = [torch.Generator(device="cpu").manual_seed(r.seed) for r in recipes]
    plateaus = [Plateau(r.lr, r.plateau_factor, r.plateau_patience) for r in recipes]
    stoppers = [EarlyStopping(r.patience) for r in recipes]
    wds, clips = [float(r.weight_decay) for r in recipes], [float(r.grad_clip or 0.0) for r in recipes]
    histories: list[list[dict[str, float]]] = [[] for _ in range(n_heads)]
    active = list(range(n_heads))
    opt = group.optimizer(active, [p.lr for p in plateaus], wds, device, None)
    for epoch in range(1, recipes[0].max_epochs + 1):
        t0 = time.perf_counter()
        lrs = [plateaus[h].lr for h in active]
        for h in active:  # a head's objective may change phase (heads.gaussian: the warm-up ends)
            if group.begin_epoch(h, epoch, eval_bs):
                plateaus[h].reset()
        # one pass over each head's own shuffle of the train rows; losses summed on the device
        loss_sum = torch.zeros(len(active), device=device)
        for batch in group.batches(active, gens, bs):
            losses, rows = group.losses(batch, active)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            group.clip(active, [clips[h] for h in active])
            opt.step()
            loss_sum += losses.detach() * rows
        train_loss = [v / n for v in loss_sum.tolist()]
        # validation scores, then each head's plateau schedule, history and early stopping
        val = group.evaluate(active, eval_bs) if has_val else [None] * len(active)
        seconds = time.perf_counter() - t0
        stopped = []
        for k, h in enumerate(active):
            objective = group.objectives[h]
            plateaus[h].step(objective.schedule_metric(train_loss[k], val[k]))
            scores = val[k] or (math.nan,) * 3
            histories[h].append({"epoch": epoch, "train_loss": train_loss[k], "val_loss": scores[0],
                                 "val_r2": scores[1], **objective.history_extra(val[k]), "lr": lrs[k],
                                 "seconds": seconds})
            if stoppers[h].step(epoch, objective.score(val[k]), lambda h=h: group.state(h)):
                stopped.append(h)
        group.report(bar, train_loss, val)
        lr_changed = [plateaus[h].lr for h in active] != lrs
        if stopped:
            active = [h for h in active if h not in stopped]
            if on_finished is not None:
                on_finished(len(stopped))
            if not active:
                break
            group.leave(active)
        if stopped or lr_changed:  # the parameter groups follow the heads still training and their rates
            opt = group.optimizer(active, [plateaus[h].lr for h in active], [wds[h] for h in active], device, opt)
    if active and on_finished is not None:  # the heads that ran to max_epochs
        on_finished(len(active))
    return histories, stoppers


# -- any torch heads, side by side ---------------------------------------------------------------------------
class ModuleGroup:
    """Torch heads side by side, each its own module, rows and objective (a head trained alone is the group
    of one). Rows: MemoryRows or heads.streaming.StreamedRows, one per head, all with the same row count."""

    def __init__(self, models: Sequence[nn.Module], rows: Sequence[Any], recipes: Sequence[TrainRecipe],
                 device: torch.device):
        self.models, self.rows = list(models), list(rows)
        self.objectives = [objective_of(m, r.max_epochs) for m, r in zip(models, recipes, strict=True)]
        self.n_heads, self.n_train, self.has_val = len(self.models), self.rows[0].n_train, self.rows[0].has_val
        for model in self.models:
            model.to(device).train()
        self._params = [[p for p in m.parameters() if p.requires_grad] for m in self.models]

    def optimizer(self, active: list[int], lrs: list[float], wds: list[float], device: torch.device,
                  previous: torch.optim.Optimizer | None) -> torch.optim.Optimizer:
        """AdamW over the active heads' parameters, a group per (lr, weight decay)."""
        return grouped_optimizer([self._params[h] for h in active], lrs, wds, device, previous)

    def begin_epoch(self, h: int, epoch: int, batch_size: int) -> bool:
        return self.objectives[h].begin_epoch(epoch, self.models[h], self.rows[h], batch_size)

    def batches(self, active: list[int], gens: list[torch.Generator], batch_size: int) -> Iterator[Any]:
        return zip(*(self.rows[h].train_batches(gens[h], batch_size) for h in active), strict=True)

    def losses(self, batch: Any, active: list[int]) -> tuple[torch.Tensor, int]:
        losses = [self.objectives[h].loss(self.models[h], self.models[h](xb), yb)
                  for h, (xb, yb) in zip(active, batch, strict=True)]
        return torch.stack(losses), int(batch[0][1].shape[0])

    def clip(self, active: list[int], max_norms: list[float]) -> None:
        for h, max_norm in zip(active, max_norms, strict=True):
            if max_norm:
                clip_grad_norm([p.grad for p in self._params[h] if p.grad is not None], max_norm)

    def evaluate(self, active: list[int], batch_size: int) -> list[Scores]:
        """Each head's validation (loss, R2, NLL), in one host sync."""
        scores = []
        for h in active:
            model, objective = self.models[h], self.objectives[h]
            model.eval()
            with torch.inference_mode():
                outs, ys = zip(*[(model(xb), yb) for xb, yb in self.rows[h].val_blocks(batch_size)], strict=True)
                scores.append(torch.stack(objective.val_scores(model, torch.cat(outs), torch.cat(ys))))
            model.train()
        return [tuple(v) for v in torch.stack(scores).tolist()]  # type: ignore[misc]

    def state(self, h: int) -> dict[str, torch.Tensor]:
        return self.models[h].state_dict()

    def leave(self, active: list[int]) -> None:
        """Heads that stopped keep their modules as they are (their last weights)."""

    def report(self, bar: Any, train_loss: list[float], val: list[Scores | None]) -> None:
        if bar is None:
            return
        if self.n_heads == 1:
            bar.set_postfix(loss=f"{train_loss[0]:.4f}", val_r2=f"{(val[0] or (math.nan,) * 3)[1]:.4f}",
                            refresh=False)
        else:
            bar.set_postfix(heads=len(train_loss), refresh=False)
        bar.update(1)
