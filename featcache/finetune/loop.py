"""The fine-tuning loop: fit's recipe (AdamW, plateau schedule on validation loss, early stopping on
validation R2 keeping the best weights, gradient clipping) over encoder and head, on one process or many.

OUT/last.pt is written after every epoch (model, best weights, optimizer, scheduler, per-rank RNG, history;
torch.load(weights_only=True) reads it), so --resume continues to the same result. Under DDP, BatchNorm
running statistics follow rank 0's (broadcast after each epoch, as DDP's broadcast_buffers does before each
step) and only rank 0 writes.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..common.errors import FeatcacheError
from ..common.files import save_torch
from ..common.progress import progress, status
from ..heads.dropout import MaskStream, mask_streams
from ..heads.early_stopping import EarlyStopping
from ..heads.training import clip_grad_norm, make_optimizer
from .data import RANK_SEED_STRIDE, RunContext, SplitData, steps_per_epoch, train_batches
from .model import FinetuneModel, params_digest
from .passes import validation_scores

CHECKPOINT_FORMAT = 1


@dataclass
class TrainOutcome:
    history: list[dict[str, float]]
    best_epoch: int
    best_val_r2: float | None
    stopped: str  # 'max-epochs' | 'early-stop' | 'already-done'
    steps: int


@dataclass
class Progress:
    """Where the loop stands: what last.pt restores on --resume."""

    epochs_done: int = 0
    global_step: int = 0
    early_stopped: bool = False
    seconds_before: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    rng: list[dict[str, torch.Tensor]] | None = None


def _rng_state(device: torch.device, masks: MaskStream | None) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if masks is not None:
        state["dropout"] = masks.state()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device, masks: MaskStream | None) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    if masks is not None and "dropout" in state:  # a last.pt of an earlier featcache has none: reseeded
        masks.set_state(state["dropout"])


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def debug_line(text: str) -> None:
    """One write per line (ranks share stderr under torchrun), shown even with --quiet."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _restore(state: dict[str, Any], model: nn.Module, opt: Any, sched: Any, stopper: EarlyStopping,
             ctx: RunContext) -> Progress:
    """Model, optimizer, schedule, best weights and the loop's place from a last.pt."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    stopper.load_state_dict(state, device=ctx.device)
    saved = Progress(int(state["epoch"]), int(state["global_step"]), bool(state["early_stopped"]),
                     float(state["seconds"]), [dict(h) for h in state["history"]],
                     state["rng"] if len(state["rng"]) == ctx.dist.world else None)
    if ctx.dist.main:
        status(f"resuming {ctx.opts.out / 'last.pt'} after epoch {saved.epochs_done}"
               + ("" if saved.rng is not None else f" (saved with {len(state['rng'])} processes: RNG reseeded)"))
    return saved


def _checkpoint(ctx: RunContext, model: nn.Module, opt: Any, sched: Any, stopper: EarlyStopping, at: Progress,
                extra: dict[str, Any], started: float, masks: MaskStream | None = None) -> None:
    """Every rank's RNG (and dropout stream) to rank 0, which writes OUT/last.pt atomically."""
    rng_all = ctx.dist.gather(_rng_state(ctx.device, masks))
    if not ctx.dist.main:
        return
    payload = {"format": CHECKPOINT_FORMAT, "kind": "finetune", "version": __version__, "epoch": at.epochs_done,
               "global_step": at.global_step, "early_stopped": at.early_stopped, "model": cpu_state(model),
               **stopper.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
               "rng": rng_all, "history": at.history, **extra, "world_size": ctx.dist.world,
               "seconds": at.seconds_before + time.perf_counter() - started}
    save_torch(ctx.opts.out / "last.pt", payload)


def _epoch_steps(net: nn.Module, batches: Any, opt: Any, params: list[torch.Tensor], clip: float | None,
                 at: Progress, ctx: RunContext, model: nn.Module, bar: Any) -> tuple[float, int]:
    """One epoch's optimiser steps on this rank's batches; (summed loss x rows, rows)."""
    loss_fn = nn.MSELoss()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    count = 0
    for xb, yb in batches:
        xb, yb = xb.to(ctx.device, non_blocking=True), yb.to(ctx.device, non_blocking=True)
        loss = loss_fn(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            clip_grad_norm([p.grad for p in params if p.grad is not None], clip)
        opt.step()
        at.global_step += 1
        loss_sum += loss.detach().double() * xb.shape[0]
        count += xb.shape[0]
        if ctx.opts.check_sync and ctx.dist.world > 1 and len(set(ctx.dist.gather(params_digest(model)))) != 1:
            raise FeatcacheError(f"--check-sync: ranks hold different weights after step {at.global_step}")
        if bar is not None:
            bar.update(1)
            if at.global_step % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / count:.4f}", refresh=False)
    return loss_sum.item(), count


class Loop:
    """The optimiser, schedule, early stopping and the loop's place for one run (the pieces last.pt saves)."""

    def __init__(self, model: FinetuneModel, ctx: RunContext, state: dict[str, Any] | None, extra: dict[str, Any]):
        opts, device, recipe = ctx.opts, ctx.device, ctx.opts.recipe
        self.model, self.ctx, self.extra = model, ctx, extra
        self.net: nn.Module = model
        if ctx.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.opt = make_optimizer(model.parameter_groups(recipe.lr, opts.encoder_lr), recipe.lr,
                                  recipe.weight_decay, device)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, mode="min", factor=recipe.plateau_factor,
                                                                patience=recipe.plateau_patience)
        self.params = [p for group in self.opt.param_groups for p in group["params"]]
        self.stopper = EarlyStopping(recipe.patience)
        self.at = _restore(state, model, self.opt, self.sched, self.stopper, ctx) if state is not None else Progress()
        self.started = time.perf_counter()
        self.masks: MaskStream | None = None  # the head's dropout stream while the loop runs

    def save(self) -> None:
        _checkpoint(self.ctx, self.model, self.opt, self.sched, self.stopper, self.at, self.extra, self.started,
                    self.masks)


def train(model: FinetuneModel, ctx: RunContext, train_split: SplitData, val: SplitData | None,
          y_mean: np.ndarray, y_scale: np.ndarray, state: dict[str, Any] | None, extra: dict[str, Any]
          ) -> TrainOutcome:
    """The epoch loop; leaves the best weights in `model`. `extra` goes into every last.pt (mask, settings)."""
    dist, device, recipe = ctx.dist, ctx.device, ctx.opts.recipe
    loop = Loop(model, ctx, state, extra)
    at, first_step = loop.at, loop.at.global_step
    stopped = "already-done" if at.early_stopped or at.epochs_done >= recipe.max_epochs else "max-epochs"
    y_std = ((train_split.y - y_mean) / y_scale).astype(np.float32)
    seed = recipe.seed + RANK_SEED_STRIDE * dist.rank + 7919 * at.epochs_done
    # the head's dropout draws from the stream train_head gives it (heads.dropout): a frozen encoder's fixed-noise
    # run then trains exactly as `fit` on the cache does
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            mask_streams(model, seed, device) as loop.masks:
        if at.rng is not None:
            _set_rng_state(at.rng[dist.rank], device, loop.masks)
        else:
            torch.manual_seed(seed)
        stopped = _epochs(loop, train_split, val, y_std, y_mean, y_scale, stopped)
    if ctx.opts.check_sync and dist.world > 1 and dist.main:
        debug_line(f"featcache finetune: --check-sync: weights identical on all {dist.world} ranks after each "
                   f"of {at.global_step - first_step} steps")
    loop.stopper.restore(model)
    model.eval()
    has_best = val is not None and loop.stopper.best_state is not None
    return TrainOutcome(at.history, loop.stopper.best_epoch, loop.stopper.best_score if has_best else None,
                        stopped, at.global_step)


def _epochs(loop: Loop, train_split: SplitData, val: SplitData | None, y_std: np.ndarray, y_mean: np.ndarray,
            y_scale: np.ndarray, stopped: str) -> str:
    """The flat loop over epochs, one comment per phase; returns why it stopped."""
    ctx, model, at, opt = loop.ctx, loop.model, loop.at, loop.opt
    recipe, dist = ctx.opts.recipe, ctx.dist
    show = ctx.opts.progress and dist.main
    steps = steps_per_epoch(train_split.n, dist.world, recipe.batch_size)
    clip = recipe.grad_clip if recipe.grad_clip else None
    epoch_bar = progress(total=recipe.max_epochs, initial=min(at.epochs_done, recipe.max_epochs),
                         desc="finetune", unit="epoch") if show else None
    try:
        for epoch in range(at.epochs_done + 1, recipe.max_epochs + 1):
            if at.early_stopped:
                break
            t0 = time.perf_counter()
            lr = float(opt.param_groups[0]["lr"])
            encoder_lr = float(opt.param_groups[1]["lr"]) if len(opt.param_groups) > 1 else math.nan
            # train: this rank's shuffled blocks, fresh (or fixed) noise, one optimiser step per batch
            model.train()
            bar = progress(total=steps, desc=f"epoch {epoch}/{recipe.max_epochs}", unit="step") if show else None
            loss_sum, count = _epoch_steps(loop.net, train_batches(train_split, ctx, epoch, y_std), opt,
                                           loop.params, clip, at, ctx, model, bar)
            if bar is not None:
                bar.close()
            # reduce: rank 0's BatchNorm statistics everywhere, the train loss over all ranks
            dist.sync_buffers(model)
            totals = dist.all_sum(torch.tensor([loss_sum, float(count)], dtype=torch.float64))
            train_loss, train_seconds = float(totals[0] / totals[1]), time.perf_counter() - t0
            if not math.isfinite(train_loss):
                raise FeatcacheError(f"the train loss became {train_loss} at epoch {epoch}; lower --lr / "
                                     "--encoder-lr or check the data")
            # validate on the extract noise, then the plateau schedule
            val_loss, val_r2 = (validation_scores(model, val, ctx, y_mean, y_scale) if val is not None
                                else (math.nan, math.nan))
            loop.sched.step(val_loss if val is not None else train_loss)
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_r2": val_r2, "lr": lr,
                   "encoder_lr": encoder_lr, "seconds": time.perf_counter() - t0, "train_seconds": train_seconds,
                   "spectra_per_s": float(totals[1]) / max(train_seconds, 1e-9)}
            at.history.append(row)
            # early stopping on validation R2 (best weights kept), then the epoch's checkpoint
            if loop.stopper.step(epoch, val_r2 if val is not None else None, model):
                at.early_stopped, stopped = True, "early-stop"
            at.epochs_done = epoch
            loop.save()
            if epoch_bar is not None:
                epoch_bar.set_postfix(loss=f"{train_loss:.4f}", val_r2=f"{val_r2:.4f}", refresh=False)
                epoch_bar.update(1)
            if dist.main:
                status(_epoch_line(row, recipe.max_epochs))
    finally:
        if epoch_bar is not None:
            epoch_bar.close()
    return stopped


def _epoch_line(row: dict[str, float], epochs: int) -> str:
    text = f"epoch {int(row['epoch'])}/{epochs}: train loss {row['train_loss']:.4f}"
    if math.isfinite(row["val_loss"]):
        text += f", val loss {row['val_loss']:.4f}, val R2 {row['val_r2']:.4f}"
    return text + (f", lr {row['lr']:.3g}, {row['seconds']:.1f} s "
                   f"({row['spectra_per_s']:.0f} train spectra/s)")
