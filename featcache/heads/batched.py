"""Many plain MLP heads trained as one module (`StackedMLPs`) by the heads' one loop (heads.loop.train_loop):
seeds of a cell, hyper-parameter settings, and cells of other features of one cache, as stacked weights and
batched matrix products; `train_heads` and `fit_heads` (compare's batched passes) run it.

The loop is the one every torch head trains in, so each head's result is what `train_head` gives it alone, up
to float32 summation order: its initialisation is the registry's (`create_head(seed=...)`, copied in), its
shuffle its own generator, its dropout masks its own `heads.dropout.MaskStream(seed)` drawn in the order and
shapes `train_head` draws them, its learning rate, plateau schedule, gradient-norm clip and early stopping its
own. Heads of other widths are zero-padded: a padded input column or hidden unit has zero weight, gets zero
gradient and stays zero under AdamW and weight decay, so it changes nothing. A head that stops early leaves the
stack, so the rest run at the cost of the heads still training.

The heads must agree on the depth of the MLP (linear, mlp_1 or mlp_2), the number of train rows and targets,
the batch size and the epoch budget; `batch_key` says which recipes can share a pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..common.device import torch_threads
from ..common.errors import FeatcacheError
from ..common.progress import progress as progress_bar
from .dropout import Dropout, MaskStream
from .loop import Objective, Scores, make_optimizer, regression_scores, train_loop
from .recipe import TrainRecipe
from .training import TrainResult, standardise


@dataclass
class HeadJob:
    """One head to train: its module (from create_head, seeded), its rows and its recipe."""

    model: nn.Sequential
    X_train: Any
    y_train: Any
    X_val: Any = None
    y_val: Any = None
    recipe: TrainRecipe | None = None
    target_names: Sequence[str] | None = None
    data_key: Any = None  # jobs with equal data_key share their standardised tensors (seeds of one feature)


def linear_layers(model: nn.Module) -> tuple[list[nn.Linear], float]:
    """The Linear layers of a registry MLP (Linear [-> GELU -> Dropout]* -> Linear) and its dropout."""
    if not isinstance(model, nn.Sequential):
        raise FeatcacheError(f"batched training takes the registry's MLP heads, got {type(model).__name__}")
    linears = [m for m in model if isinstance(m, nn.Linear)]
    dropouts = [m.p for m in model if isinstance(m, nn.Dropout)]
    kinds = [type(m) for m in model]
    expected = [nn.Linear, nn.GELU, Dropout] * (len(linears) - 1) + [nn.Linear]
    if kinds != expected:  # heads.dropout.Dropout: the masks train_head would draw
        raise FeatcacheError("batched training takes the registry's Linear [-> GELU -> Dropout]* -> Linear heads "
                             "(create_head)")
    return linears, (dropouts[0] if dropouts else 0.0)


def batch_key(recipe: TrainRecipe, blocks: int, n_train: int, n_targets: int, has_val: bool) -> tuple[Any, ...]:
    """What heads must share to train in one pass (seed, lr, weight decay, widths and dropout may differ)."""
    return (blocks, n_train, n_targets, has_val, recipe.batch_size, recipe.max_epochs, recipe.eval_batch_size)


class Stack:
    """The weights of some heads stacked, as leaf tensors: per run of one input width D_s a first-layer weight
    (H_s, D_s, pad_1), then the first bias (H, 1, pad_1) and every further layer's weight (H, pad_i, pad_i+1)
    and bias (H, 1, pad_i+1). `tensors[j]` holds the heads `ranges[j]` (positions in `heads`)."""

    def __init__(self, heads: list[int], rows: list[list[torch.Tensor]]):
        """rows[k]: head heads[k]'s padded tensors [W0 (D, pad_1), b0 (1, pad_1), W1, b1, ...], heads sorted by D."""
        self.heads = heads
        runs: list[list[int]] = []  # [start, stop) of heads with one input width
        for k, r in enumerate(rows):
            if runs and rows[runs[-1][0]][0].shape[0] == r[0].shape[0]:
                runs[-1][1] = k + 1
            else:
                runs.append([k, k + 1])
        self.n_first = len(runs)
        self.tensors = [torch.stack([rows[k][0] for k in range(a, b)]) for a, b in runs]
        self.ranges = [(a, b) for a, b in runs]
        for j in range(1, len(rows[0])):
            self.tensors.append(torch.stack([r[j] for r in rows]))
            self.ranges.append((0, len(heads)))
        for t in self.tensors:
            t.requires_grad_()
        self.buffers: dict[tuple[int, int], torch.Tensor] = {}

    def head_rows(self, k: int, tensors: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Head k's rows of each tensor (of `tensors` laid out like the weights: AdamW's moments)."""
        tensors = self.tensors if tensors is None else tensors
        first = next(j for j in range(self.n_first) if self.ranges[j][0] <= k < self.ranges[j][1])
        return [tensors[first][k - self.ranges[first][0]]] + [t[k] for t in tensors[self.n_first:]]

    def gather(self, xs: list[torch.Tensor], index: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each head's batch rows, stacked per run of one input width, gathered straight into buffers kept from
        step to step (each step's graph is freed before the next one writes)."""
        out = []
        for j in range(self.n_first):
            (a, b), w = self.ranges[j], self.tensors[j]
            key = (j, int(index[a].shape[0]))
            if key not in self.buffers:
                self.buffers[key] = torch.empty(b - a, key[1], w.shape[1], device=w.device)
            for k in range(a, b):
                torch.index_select(xs[k], 0, index[k], out=self.buffers[key][k - a])
            out.append(self.buffers[key])
        return out

    def forward(self, xs: list[torch.Tensor], masks: list[torch.Tensor] | None) -> torch.Tensor:
        """Per run of heads (H_s, B, D_s) -> (H, B, T): Linear [-> GELU -> dropout]* -> Linear per head."""
        rest = self.tensors[self.n_first:]
        # the first layer's bias added inside the product (as nn.Linear's addmm does), one run of widths each
        first = [torch.baddbmm(rest[0][a:b], x, self.tensors[j]) for j, (x, (a, b))
                 in enumerate(zip(xs, self.ranges[:self.n_first], strict=True))]
        x = torch.cat(first) if len(first) > 1 else first[0]
        for i in range(1, (len(rest) + 1) // 2):
            x = torch.nn.functional.gelu(x)
            if masks is not None:
                x = x * masks[i - 1]
            x = torch.baddbmm(rest[2 * i], x, rest[2 * i - 1])
        return x

    @torch.no_grad()
    def clip(self, max_norms: torch.Tensor) -> None:
        """Per-head gradient-norm clip (2-norm over all of a head's parameters, as clip_grad_norm)."""
        grads = [t.grad for t in self.tensors]
        sq = torch.zeros(len(self.heads), device=grads[0].device)
        for g, (a, b) in zip(grads, self.ranges, strict=True):
            sq[a:b] += torch.linalg.vector_norm(g.reshape(b - a, -1), dim=1) ** 2
        scale = torch.where(max_norms > 0, torch.clamp(max_norms / (sq.sqrt() + 1e-6), max=1.0),
                            torch.ones_like(sq))
        for g, (a, b) in zip(grads, self.ranges, strict=True):
            g.mul_(scale[a:b].view((b - a,) + (1,) * (g.dim() - 1)))


class StackedMLPs:
    """Registry MLPs (one depth) as one module for heads.loop.train_loop: the heads that share a learning rate
    and weight decay form one Stack (one AdamW parameter group); a head whose rate the plateau halves moves to
    another Stack, with its AdamW moments."""

    def __init__(self, models: list[nn.Sequential], rows: list[Any], recipes: list[TrainRecipe],
                 device: torch.device):
        layers = [linear_layers(m)[0] for m in models]
        self.widths = [[lin.in_features for lin in ls] + [ls[-1].out_features] for ls in layers]
        self.pad = [max(w[i] for w in self.widths) for i in range(len(self.widths[0]))]
        self.dropouts = [linear_layers(m)[1] for m in models]
        self.streams = [MaskStream(r.seed, device) for r in recipes]  # the stream train_head attaches to the head
        self.rows, self.device = rows, device
        self.objectives = [Objective() for _ in models]  # MSE: the plain MLPs' objective
        self.n_heads, self.n_train, self.has_val = len(models), rows[0].n_train, rows[0].has_val
        self.head_weights = [self._padded(ls, device) for ls in layers]
        self.stacks: list[Stack] = []
        self.order: list[int] = []
        self.last: dict[int, dict[str, torch.Tensor]] = {}  # heads that left: their last weights
        self._limits: dict[tuple[Any, ...], list[torch.Tensor]] = {}

    def _padded(self, linears: list[nn.Linear], device: torch.device) -> list[torch.Tensor]:
        out = []
        for i, lin in enumerate(linears):
            w = torch.zeros(lin.in_features if i == 0 else self.pad[i], self.pad[i + 1], device=device)
            w[:lin.in_features, :lin.out_features] = lin.weight.detach().t().to(device)
            b = torch.zeros(1, self.pad[i + 1], device=device)
            b[0, :lin.out_features] = lin.bias.detach().to(device)
            out += [w, b]
        return out  # W0, b0, W1, b1, ...

    def optimizer(self, active: list[int], lrs: list[float], wds: list[float], device: torch.device,
                  previous: torch.optim.Optimizer | None) -> torch.optim.Optimizer:
        """Regroup the active heads into one Stack per (lr, weight decay), each an AdamW parameter group; the
        moments and step count of `previous` move with each head's rows."""
        moments: dict[int, tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]] = {}
        for stack in self.stacks:  # take each head's current weights and moments out of the old stacks
            state = [previous.state.get(t, {}) if previous is not None else {} for t in stack.tensors]
            for k, h in enumerate(stack.heads):
                self.head_weights[h] = [t.detach() for t in stack.head_rows(k)]
                if state[0]:
                    moments[h] = (stack.head_rows(k, [s["exp_avg"] for s in state]),
                                  stack.head_rows(k, [s["exp_avg_sq"] for s in state]), state[0]["step"])
        keys: dict[tuple[float, float], list[int]] = {}
        for h, lr, wd in zip(active, lrs, wds, strict=True):
            keys.setdefault((lr, wd), []).append(h)
        self.stacks = [Stack(heads, [self.head_weights[h] for h in heads]) for heads in keys.values()]
        self._limits = {}
        self.order = [h for stack in self.stacks for h in stack.heads]
        opt = make_optimizer([{"params": s.tensors, "lr": lr, "weight_decay": wd}
                              for s, (lr, wd) in zip(self.stacks, keys, strict=True)], lrs[0], wds[0], device)
        for stack in self.stacks:
            if all(h in moments for h in stack.heads):
                for j, t in enumerate(stack.tensors):
                    rows = [moments[h] for h in stack.heads]
                    opt.state[t] = {"step": rows[0][2].clone(),
                                    "exp_avg": _restack(stack, j, [r[0] for r in rows]),
                                    "exp_avg_sq": _restack(stack, j, [r[1] for r in rows])}
        return opt

    def begin_epoch(self, h: int, epoch: int, batch_size: int) -> bool:
        return False

    def batches(self, active: list[int], gens: list[torch.Generator], batch_size: int) -> Iterator[Any]:
        """Each step: every stack's gathered inputs and the targets, heads in stack order."""
        perms = {h: self.rows[h].permutation(gens[h]) for h in active}
        for i in range(0, self.n_train, batch_size):
            index = {h: p[i:i + batch_size] for h, p in perms.items()}
            xs = [s.gather([self.rows[h].xs for h in s.heads], [index[h] for h in s.heads]) for s in self.stacks]
            y = torch.stack([self.rows[h].ys.index_select(0, index[h]) for h in self.order])
            yield xs, y

    def losses(self, batch: Any, active: list[int]) -> tuple[torch.Tensor, int]:
        xs, y = batch
        out = [s.forward(x, self._masks(s, y.shape[1])) for s, x in zip(self.stacks, xs, strict=True)]
        per_head = ((torch.cat(out) if len(out) > 1 else out[0]) - y).pow(2).mean(dim=(1, 2))
        return self._in_order(per_head, active), int(y.shape[1])

    def _in_order(self, values: torch.Tensor, active: list[int]) -> torch.Tensor:
        """Per-head values from stack order to `active` order."""
        if self.order == active:
            return values
        return values[torch.tensor([self.order.index(h) for h in active], device=values.device)]

    def clip(self, active: list[int], max_norms: list[float]) -> None:
        key = (tuple(active), tuple(max_norms))
        if key not in self._limits:  # built once per set of heads, not every step
            limit = dict(zip(active, max_norms, strict=True))
            self._limits = {key: [torch.tensor([limit[h] for h in s.heads], device=self.device) for s in self.stacks]}
        for stack, limits in zip(self.stacks, self._limits[key], strict=True):
            stack.clip(limits)

    def evaluate(self, active: list[int], batch_size: int) -> list[Scores]:
        """Per head: (MSE on standardised targets, mean R2 across targets, NaN), in one host sync."""
        n = self.rows[active[0]].xv.shape[0]
        with torch.inference_mode():
            preds = []
            for stack in self.stacks:
                chunks = []
                for start in range(0, n, batch_size):
                    runs = [torch.stack([self.rows[stack.heads[k]].xv[start:start + batch_size] for k in range(a, b)])
                            for a, b in stack.ranges[:stack.n_first]]
                    chunks.append(stack.forward(runs, None))
                preds.append(torch.cat(chunks, dim=1))
            loss, r2 = regression_scores(torch.cat(preds), torch.stack([self.rows[h].yv for h in self.order]))
            values = torch.stack([loss, r2]).t().tolist()
        by_head = dict(zip(self.order, values, strict=True))
        return [(by_head[h][0], by_head[h][1], float("nan")) for h in active]

    def state(self, h: int) -> dict[str, torch.Tensor]:
        """Head h's weights in nn.Sequential's keys ('0.weight', '3.weight', ...), unpadded."""
        if h in self.last:
            return self.last[h]
        stack = next(s for s in self.stacks if h in s.heads)
        tensors, widths = stack.head_rows(stack.heads.index(h)), self.widths[h]
        state = {}
        for i in range(len(widths) - 1):
            w, b = tensors[2 * i], tensors[2 * i + 1]
            state[f"{3 * i}.weight"] = w[:widths[i], :widths[i + 1]].detach().t().clone()
            state[f"{3 * i}.bias"] = b[0, :widths[i + 1]].detach().clone()
        return state

    def leave(self, active: list[int]) -> None:
        """The heads not in `active` keep their last weights (the optimizer call that follows regroups)."""
        for stack in self.stacks:
            for h in stack.heads:
                if h not in active:
                    self.last[h] = self.state(h)

    def report(self, bar: Any, train_loss: list[float], val: list[Scores | None]) -> None:
        if bar is not None:
            bar.set_postfix(heads=len(train_loss), refresh=False)
            bar.update(1)

    def _masks(self, stack: Stack, rows: int) -> list[torch.Tensor] | None:
        """Per hidden layer, the (H, B, width_pad) dropout masks (0 or 1 / (1 - p)) of a stack's heads: each
        head's drawn from its own stream in train_head's order and shape; a padded unit's mask is 0."""
        if all(self.dropouts[h] == 0 for h in stack.heads):
            return None
        masks = []
        for i in range(1, len(self.pad) - 1):
            mask = torch.ones(len(stack.heads), rows, self.pad[i], device=self.device)

            def draw(k: int, h: int, i: int = i, mask: torch.Tensor = mask) -> None:
                p, width = self.dropouts[h], self.widths[h][i]
                if p == 0:
                    return
                if width == self.pad[i]:
                    self.streams[h].draw_into(mask[k], p)  # contiguous: drawn in place
                else:
                    mask[k, :, :width] = self.streams[h].draw((rows, width), p)
                    mask[k, :, width:] = 0.0

            threads = torch.get_num_threads() if self.device.type == "cpu" else 1
            if threads > 1 and len(stack.heads) > 1:  # NumPy fills without the GIL: heads' masks side by side,
                list(mask_pool(threads).map(draw, range(len(stack.heads)), stack.heads))  # each its own stream
            else:
                for k, h in enumerate(stack.heads):
                    draw(k, h)
            masks.append(mask)
        return masks


def _restack(stack: Stack, j: int, rows: list[list[torch.Tensor]]) -> torch.Tensor:
    """Tensor j of a stack from its heads' rows (rows[k]: head k's [W0, b0, W1, ...]; a first-layer tensor
    holds only its run of heads)."""
    a, b = stack.ranges[j]
    c = 0 if j < stack.n_first else j - stack.n_first + 1  # the tensor's place in a head's row list
    return torch.stack([r[c] for r in rows[a:b]]).contiguous()


_MASK_POOLS: dict[int, Any] = {}


def mask_pool(threads: int) -> Any:
    """One thread pool per thread count, kept for the process (drawing masks every step)."""
    from concurrent.futures import ThreadPoolExecutor

    if threads not in _MASK_POOLS:
        _MASK_POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="featcache-masks")
    return _MASK_POOLS[threads]


def train_heads(jobs: Sequence[HeadJob], device: str | torch.device = "cpu", progress: bool = False,
                desc: str = "fit heads", num_threads: int | None = None,
                on_finished: Callable[[int], None] | None = None) -> list[TrainResult]:
    """Train every job's head in one pass over the rows; each result as `train_head` would give it.
    on_finished(k): told whenever k of the heads finish training (heads.loop.train_loop)."""
    if not jobs:
        return []
    order = sorted(range(len(jobs)), key=lambda i: linear_layers(jobs[i].model)[0][0].in_features)
    if order != list(range(len(jobs))):  # the stack wants heads of one input width side by side
        results = train_heads([jobs[i] for i in order], device, progress, desc, num_threads, on_finished)
        back = {i: r for i, r in zip(order, results, strict=True)}
        return [back[i] for i in range(len(jobs))]
    started = time.perf_counter()
    device = torch.device(device)
    recipes = [job.recipe or TrainRecipe() for job in jobs]
    for recipe in recipes:
        recipe.validate()
    with torch_threads(num_threads):
        rows, shared = [], {}
        for job in jobs:
            key = job.data_key if job.data_key is not None else id(job)
            if key not in shared:
                shared[key] = standardise(job.X_train, job.y_train, job.X_val, job.y_val, device, job.target_names)
            rows.append(shared[key])
        keys = {batch_key(r, len(linear_layers(j.model)[0]) - 1, d.n_train, d.ys.shape[1], d.has_val)
                for j, r, d in zip(jobs, recipes, rows, strict=True)}
        if len(keys) > 1:
            raise FeatcacheError("these heads cannot train in one pass (depth, rows, targets, batch size or epochs "
                                 "differ); group them with heads.batched.batch_key")
        group = StackedMLPs([j.model for j in jobs], rows, recipes, device)
        bar = progress_bar(total=recipes[0].max_epochs, desc=desc, unit="epoch") if progress else None
        try:
            histories, stoppers = train_loop(group, recipes, device, bar, on_finished)
        finally:
            if bar is not None:
                bar.close()
    seconds = (time.perf_counter() - started) / len(jobs)
    results = []
    for h, (job, recipe, d) in enumerate(zip(jobs, recipes, rows, strict=True)):
        stopper, model = stoppers[h], job.model
        model.load_state_dict(stopper.best_state if stopper.best_state is not None else group.state(h))
        model.to(device).eval()
        results.append(TrainResult(model=model, best_epoch=stopper.best_epoch,
                                   best_val_r2=group.objectives[h].best_val_r2(stopper.best_epoch, stopper.best_score,
                                                                               histories[h], d.has_val),
                                   history=histories[h], x_mean=d.x_mean, x_scale=d.x_scale, y_mean=d.y_mean,
                                   y_scale=d.y_scale, y_1d=np.asarray(job.y_train).ndim == 1, seconds=seconds,
                                   recipe=recipe.to_dict()))
    return results
