"""Many torch heads trained in one pass (DINOv2's linear evaluation trains its heads this way): seeds of a
cell, hyper-parameter settings, and cells of other features of one cache, as stacked weights and batched
matrix products. Each head's result is what `train_head` gives it alone, up to float32 summation order.

Why it is exact: every head keeps its own of everything that makes its numbers. Its initialisation is the
registry's (`create_head(seed=...)`, copied in); its shuffle is its own `torch.Generator(seed)`; its dropout
masks come from its own `heads.dropout.MaskStream(seed)`, drawn in the order and shapes `train_head` draws
them; it has its own AdamW moments, step count and learning
rate, its own ReduceLROnPlateau (torch's, on a one-number stand-in optimiser), its own gradient-norm clip, its
own early stopping with its best weights. Heads of other widths are zero-padded: a padded input column or
hidden unit has zero weight, gets zero gradient and stays zero under AdamW and weight decay, so it changes
nothing. A head that stops early leaves the stack, so the rest run at the cost of the heads still training.

The heads must agree on the depth of the MLP (linear, mlp_1 or mlp_2), the number of train rows and targets,
the batch size and the epoch budget; `batch_key` says which recipes can share a pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..common.device import torch_threads
from ..common.errors import FeatcacheError
from ..common.progress import progress as progress_bar
from .dropout import Dropout, MaskStream
from .recipe import TrainRecipe
from .training import TrainResult, _standardise

# the fused AdamW's constants (torch defaults, as make_optimizer builds it)
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


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


class _Stack:
    """The active heads' weights, AdamW moments and per-head state as stacked tensors.

    The first layer is one (H_s, D_s, h_pad) tensor per run of heads with the same input width D_s (the
    heads come sorted by it), so no input column is padded; the hidden widths are zero-padded to the widest.
    Every parameter knows which heads (a contiguous range) its leading dimension holds."""

    def __init__(self, models: list[nn.Sequential], device: torch.device):
        layers = [linear_layers(m)[0] for m in models]
        self.widths = [[lin.in_features for lin in ls] + [ls[-1].out_features] for ls in layers]
        self.pad = [max(w[i] for w in self.widths) for i in range(len(self.widths[0]))]
        n = len(models)
        segments: list[list[int]] = []  # [start, stop) of heads with one input width
        for h, w in enumerate(self.widths):
            if segments and self.widths[segments[-1][0]][0] == w[0]:
                segments[-1][1] = h + 1
            else:
                segments.append([h, h + 1])
        self.params: list[torch.Tensor] = []
        self.ranges: list[tuple[int, int]] = []  # the heads each parameter holds
        for start, stop in segments:
            w = torch.zeros(stop - start, self.widths[start][0], self.pad[1], device=device)
            for h in range(start, stop):
                lin = layers[h][0]
                w[h - start, :, :lin.out_features] = lin.weight.detach().t().to(device)
            self._add(w, (start, stop))
        for i in range(len(self.pad) - 1):
            if i > 0:
                w = torch.zeros(n, self.pad[i], self.pad[i + 1], device=device)
                for h, ls in enumerate(layers):
                    w[h, :ls[i].in_features, :ls[i].out_features] = ls[i].weight.detach().t().to(device)
                self._add(w, (0, n))
            b = torch.zeros(n, 1, self.pad[i + 1], device=device)
            for h, ls in enumerate(layers):
                b[h, 0, :ls[i].out_features] = ls[i].bias.detach().to(device)
            self._add(b, (0, n))
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self._buffers: dict[tuple[int, int, int], torch.Tensor] = {}
        self.step_count = 0  # every active head steps every batch: one count for all
        self.n_heads = n

    def _add(self, tensor: torch.Tensor, heads: tuple[int, int]) -> None:
        self.params.append(tensor.requires_grad_())
        self.ranges.append(heads)

    @property
    def n_first(self) -> int:
        """How many first-layer tensors (runs of one input width) lead the parameter list."""
        return len(self.params) - 2 * (len(self.pad) - 1) + 1

    def first_layer(self) -> list[tuple[tuple[int, int], torch.Tensor]]:
        """((start, stop), weight) per run of heads with one input width."""
        return list(zip(self.ranges[:self.n_first], self.params[:self.n_first], strict=True))

    def gather(self, tensors: list[torch.Tensor], index: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each head's rows, stacked per run of one input width: [(H_s, B, D_s)], gathered straight into
        buffers kept from step to step (each step's graph is freed before the next one writes)."""
        rows = index[0].shape[0]
        out = []
        for (start, stop), w in self.first_layer():
            key = (start, stop, rows)
            if key not in self._buffers:
                self._buffers[key] = torch.empty(stop - start, rows, w.shape[1], device=w.device)
            buffer = self._buffers[key]
            for h in range(start, stop):
                torch.index_select(tensors[h], 0, index[h], out=buffer[h - start])
            out.append(buffer)
        return out

    def forward(self, xs: list[torch.Tensor], masks: list[torch.Tensor] | None) -> torch.Tensor:
        """Per run of heads (H_s, B, D_s) -> (H, B, T): Linear [-> GELU -> dropout]* -> Linear per head."""
        rest = self.params[self.n_first:]
        # the first layer's bias added inside the product (as nn.Linear's addmm does), one run of widths each
        first = [torch.baddbmm(rest[0][start:stop], x, w) for x, ((start, stop), w) in
                 zip(xs, self.first_layer(), strict=True)]
        x = torch.cat(first) if len(first) > 1 else first[0]
        rest = rest[1:]
        for i in range(len(self.pad) - 2):
            x = torch.nn.functional.gelu(x)
            if masks is not None:
                x = x * masks[i]
            x = torch.baddbmm(rest[2 * i + 1], x, rest[2 * i])
        return x

    def keep(self, index: list[int]) -> None:
        """Keep only the heads in `index` (sorted; the stopped ones leave) in every stacked tensor."""
        kept = len(index)
        with torch.no_grad():
            params, ranges, avg, avg_sq = [], [], [], []
            for p, (start, stop), m, v in zip(self.params, self.ranges, self.exp_avg, self.exp_avg_sq, strict=True):
                local = [h - start for h in index if start <= h < stop]
                if not local:
                    continue  # a first-layer run whose heads all stopped
                rows = torch.tensor(local, device=p.device)
                new_start = sum(1 for h in index if h < start)
                params.append(p.detach().index_select(0, rows).requires_grad_())
                ranges.append((new_start, new_start + len(local)) if (start, stop) != (0, self.n_heads)
                              else (0, kept))
                avg.append(m.index_select(0, rows))
                avg_sq.append(v.index_select(0, rows))
            self.params, self.ranges, self.exp_avg, self.exp_avg_sq = params, ranges, avg, avg_sq
            self.n_heads = kept
            self._buffers.clear()

    def head_state(self, h: int, widths: list[int]) -> dict[str, torch.Tensor]:
        """Head h's weights in nn.Sequential's keys ('0.weight', '3.weight', ... ), unpadded."""
        (start, _), w0 = next(((r, w) for r, w in self.first_layer() if r[0] <= h < r[1]))
        rest = self.params[self.n_first:]
        state = {"0.weight": w0[h - start, :, :widths[1]].detach().t().clone(),
                 "0.bias": rest[0][h, 0, :widths[1]].detach().clone()}
        for i in range(1, len(self.pad) - 1):
            w, b = rest[2 * i - 1], rest[2 * i]
            state[f"{3 * i}.weight"] = w[h, :widths[i], :widths[i + 1]].detach().t().clone()
            state[f"{3 * i}.bias"] = b[h, 0, :widths[i + 1]].detach().clone()
        return state

    @torch.no_grad()
    def clip_and_step(self, lr: list[float], weight_decay: list[float], grad_clip: torch.Tensor) -> None:
        """Per-head gradient-norm clip (2-norm over all of a head's parameters, as clip_grad_norm), then the
        fused AdamW kernel train_head's optimiser runs: once over the whole stack when the heads share their
        learning rate and weight decay, else once per group of heads that do (on views of their rows)."""
        grads = [p.grad for p in self.params]
        sq = torch.zeros(len(lr), device=grads[0].device)
        for g, (start, stop) in zip(grads, self.ranges, strict=True):
            sq[start:stop] += torch.linalg.vector_norm(g.reshape(stop - start, -1), dim=1) ** 2
        scale = torch.where(grad_clip > 0, torch.clamp(grad_clip / (sq.sqrt() + 1e-6), max=1.0),
                            torch.ones_like(sq))
        for g, (start, stop) in zip(grads, self.ranges, strict=True):
            g.mul_(scale[start:stop].view((stop - start,) + (1,) * (g.dim() - 1)))
        self.step_count += 1
        groups: dict[tuple[float, float], list[int]] = {}
        for h, key in enumerate(zip(lr, weight_decay, strict=True)):
            groups.setdefault(key, []).append(h)
        for (group_lr, group_wd), heads in groups.items():
            if len(groups) == 1:
                tensors = [self.params, grads, self.exp_avg, self.exp_avg_sq]
            else:
                tensors = [[t[h - start] for t, (start, stop) in zip(ts, self.ranges, strict=True)
                            for h in heads if start <= h < stop] for ts in (self.params, grads, self.exp_avg,
                                                                            self.exp_avg_sq)]
            steps = [torch.tensor(float(self.step_count))] * len(tensors[0])
            torch._fused_adamw_(*tensors, [], steps, lr=group_lr, beta1=BETA1,
                                beta2=BETA2, weight_decay=group_wd, eps=EPS, amsgrad=False, maximize=False)
        for p in self.params:
            p.grad = None


class _Plateau:
    """torch's ReduceLROnPlateau for one head, on a stand-in optimiser holding that head's learning rate."""

    def __init__(self, recipe: TrainRecipe):
        self.opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=recipe.lr)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, mode="min", factor=recipe.plateau_factor,
                                                                patience=recipe.plateau_patience)

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def step(self, metric: float) -> None:
        self.sched.step(metric)


def train_heads(jobs: Sequence[HeadJob], device: str | torch.device = "cpu", progress: bool = False,
                desc: str = "fit heads", num_threads: int | None = None) -> list[TrainResult]:
    """Train every job's head in one pass over the rows; each result as `train_head` would give it."""
    if not jobs:
        return []
    order = sorted(range(len(jobs)), key=lambda i: linear_layers(jobs[i].model)[0][0].in_features)
    if order != list(range(len(jobs))):  # the stack wants heads of one input width side by side
        results = train_heads([jobs[i] for i in order], device, progress, desc, num_threads)
        back = {i: r for i, r in zip(order, results, strict=True)}
        return [back[i] for i in range(len(jobs))]
    started = time.perf_counter()
    device = torch.device(device)
    recipes = [job.recipe or TrainRecipe() for job in jobs]
    for recipe in recipes:
        recipe.validate()
    with torch_threads(num_threads):
        data, shared = [], {}
        for job in jobs:
            key = job.data_key if job.data_key is not None else id(job)
            if key not in shared:
                shared[key] = _standardise(job.X_train, job.y_train, job.X_val, job.y_val, device, job.target_names)
            data.append(shared[key])
        keys = {batch_key(r, len(linear_layers(j.model)[0]) - 1, d.xs.shape[0], d.ys.shape[1], d.xv is not None)
                for j, r, d in zip(jobs, recipes, data, strict=True)}
        if len(keys) > 1:
            raise FeatcacheError("these heads cannot train in one pass (depth, rows, targets, batch size or epochs "
                                 "differ); group them with heads.batched.batch_key")
        histories, best = _train_loop([j.model for j in jobs], data, recipes, device, progress, desc)
    seconds = (time.perf_counter() - started) / len(jobs)
    results = []
    for job, recipe, d, history, (epoch, score, state) in zip(jobs, recipes, data, histories, best, strict=True):
        model = job.model
        if state is not None:
            model.load_state_dict(state)
        model.to(device).eval()
        results.append(TrainResult(model=model, best_epoch=epoch, best_val_r2=score if d.xv is not None else None,
                                   history=history, x_mean=d.x_mean, x_scale=d.x_scale, y_mean=d.y_mean,
                                   y_scale=d.y_scale, y_1d=np.asarray(job.y_train).ndim == 1, seconds=seconds,
                                   recipe=recipe.to_dict()))
    return results


def _evaluate(stack: _Stack, xs: list[torch.Tensor], ys: list[torch.Tensor], chunk: int
              ) -> tuple[list[float], list[float]]:
    """Per head: (MSE on standardised targets, mean R2 across targets), as training._evaluate computes them."""
    n = xs[0].shape[0]
    with torch.inference_mode():
        preds = []
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            runs = [torch.stack([xs[h][start:stop] for h in range(a, b)]) for (a, b), _ in stack.first_layer()]
            preds.append(stack.forward(runs, None))
        pred = torch.cat(preds, dim=1)
        y = torch.stack(ys)
        err = (pred - y).double()
        yd = y.double()
        sse = (err * err).sum(dim=1)
        sst = ((yd - yd.mean(dim=1, keepdim=True)) ** 2).sum(dim=1)
        loss = sse.sum(dim=1) / (n * y.shape[2])
        r2 = (1.0 - sse / sst).mean(dim=1)
    return loss.tolist(), r2.tolist()


def _train_loop(models: list[nn.Sequential], data: list[Any], recipes: list[TrainRecipe], device: torch.device,
                progress: bool, desc: str) -> tuple[list[list[dict[str, float]]], list[tuple[int, float, Any]]]:
    """The epoch loop of training._train_loop for a stack of heads (one flat loop, a comment per phase)."""
    n_heads, n, bs = len(models), data[0].xs.shape[0], int(recipes[0].batch_size)
    has_val, max_epochs = data[0].xv is not None, recipes[0].max_epochs
    widths = [[lin.in_features for lin in linear_layers(m)[0]] + [linear_layers(m)[0][-1].out_features]
              for m in models]
    dropouts = [linear_layers(m)[1] for m in models]
    shuffles = [torch.Generator(device="cpu").manual_seed(r.seed) for r in recipes]
    dropout_rngs = [MaskStream(r.seed, device) for r in recipes]  # the stream train_head attaches to the head
    plateaus = [_Plateau(r) for r in recipes]
    stack = _Stack(models, device)
    active = list(range(n_heads))  # heads still training, in stack order
    wd = [float(r.weight_decay) for r in recipes]
    clip = torch.tensor([float(r.grad_clip or 0.0) for r in recipes], device=device)
    histories: list[list[dict[str, float]]] = [[] for _ in models]
    best: list[list[Any]] = [[0, -math.inf, None] for _ in models]
    bad = [0] * n_heads
    head_wd, head_clip = wd, clip
    bar = progress_bar(total=max_epochs, desc=desc, unit="epoch") if progress else None
    try:
        for epoch in range(1, max_epochs + 1):
            t0 = time.perf_counter()
            lrs = [plateaus[h].lr for h in active]
            # one pass over each head's own shuffle of the train rows; losses summed on the device
            perms = [torch.randperm(n, generator=shuffles[h]).to(device) for h in active]
            xs = [data[h].xs for h in active]
            ys = torch.stack([data[h].ys for h in active])
            loss_sum = torch.zeros(len(active), device=device)
            for i in range(0, n, bs):
                idx = [p[i:i + bs] for p in perms]
                runs = stack.gather(xs, idx)
                y = torch.stack([ys[k].index_select(0, j) for k, j in enumerate(idx)])
                masks = _dropout_masks(stack, active, widths, dropouts, dropout_rngs, y.shape[1], device)
                per_head = ((stack.forward(runs, masks) - y) ** 2).mean(dim=(1, 2))
                per_head.sum().backward()
                stack.clip_and_step(lrs, head_wd, head_clip)
                loss_sum += per_head.detach() * y.shape[1]
            train_loss = (loss_sum / n).tolist()
            # validation scores per head, then each head's plateau schedule
            if has_val:
                val_loss, val_r2 = _evaluate(stack, [data[h].xv for h in active], [data[h].yv for h in active],
                                             recipes[0].eval_batch_size)
            else:
                val_loss = val_r2 = [float("nan")] * len(active)
            seconds = time.perf_counter() - t0
            stopped = []
            for k, h in enumerate(active):
                plateaus[h].step(val_loss[k] if has_val else train_loss[k])
                histories[h].append({"epoch": epoch, "train_loss": train_loss[k], "val_loss": val_loss[k],
                                     "val_r2": val_r2[k], "lr": lrs[k], "seconds": seconds})
                # early stopping on validation R2, keeping each head's best weights
                if not has_val:
                    best[h][0] = epoch
                elif val_r2[k] > best[h][1]:
                    best[h] = [epoch, val_r2[k], stack.head_state(k, widths[h])]
                    bad[h] = 0
                else:
                    bad[h] += 1
                    if bad[h] >= recipes[h].patience:
                        stopped.append(k)
            if bar is not None:
                bar.set_postfix(heads=len(active), refresh=False)
                bar.update(1)
            if stopped:
                for k in stopped:  # no epoch was better (validation R2 NaN): train_head keeps the last weights
                    if best[active[k]][2] is None:
                        best[active[k]][2] = stack.head_state(k, widths[active[k]])
                keep = [k for k in range(len(active)) if k not in stopped]
                if not keep:
                    break
                stack.keep(keep)
                active = [active[k] for k in keep]
                head_wd, head_clip = [wd[h] for h in active], clip[active]
    finally:
        if bar is not None:
            bar.close()
    for k, h in enumerate(active):  # still training at the end: the last weights where none was best
        if best[h][2] is None:
            best[h][2] = stack.head_state(k, widths[h])
    return histories, [(int(b[0]), float(b[1]), b[2]) for b in best]


def _dropout_masks(stack: _Stack, active: list[int], widths: list[list[int]], dropouts: list[float],
                   streams: list[MaskStream], rows: int, device: torch.device) -> list[torch.Tensor] | None:
    """Per hidden layer, the (H, B, width_pad) dropout masks (0 or 1 / (1 - p)): each head's drawn from its
    own stream in train_head's order and shape; a padded unit's mask is 0 (its weights are zero anyway)."""
    if all(dropouts[h] == 0 for h in active):
        return None
    masks = []
    for i in range(1, len(stack.pad) - 1):
        mask = torch.ones(len(active), rows, stack.pad[i], device=device)

        def draw(k: int, h: int, i: int = i, mask: torch.Tensor = mask) -> None:
            p = dropouts[h]
            if p == 0:
                return
            if widths[h][i] == stack.pad[i]:
                streams[h].draw_into(mask[k], p)  # contiguous: drawn in place
            else:
                mask[k, :, :widths[h][i]] = streams[h].draw((rows, widths[h][i]), p)
                mask[k, :, widths[h][i]:] = 0.0

        threads = torch.get_num_threads() if device.type == "cpu" else 1
        if threads > 1 and len(active) > 1:  # NumPy fills without the GIL: heads' masks side by side, each
            list(_mask_pool(threads).map(draw, range(len(active)), active))  # from its own stream
        else:
            for k, h in enumerate(active):
                draw(k, h)
        masks.append(mask)
    return masks


_MASK_POOLS: dict[int, Any] = {}


def _mask_pool(threads: int) -> Any:
    """One thread pool per thread count, kept for the process (drawing masks every step)."""
    from concurrent.futures import ThreadPoolExecutor

    if threads not in _MASK_POOLS:
        _MASK_POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="featcache-masks")
    return _MASK_POOLS[threads]


# -- many fits of one cache ---------------------------------------------------------------------------------
BATCHABLE = ("linear", "mlp_1", "mlp_2")  # the registry's plain MLPs (stackable Linear layers)


def fit_key(spec: Any, n_train: int) -> tuple[Any, ...]:
    """Which FitSpecs of one cache can train in one pass: same targets, rows, splits and device, and a
    batch_key-compatible recipe (features, seeds, widths, dropout, lr and weight decay may differ)."""
    blocks = BATCHABLE.index(spec.head)
    rows = spec.selection.describe() if spec.selection is not None else None
    return (blocks, tuple(spec.targets), repr(rows), spec.train_split, spec.val_split, spec.test_split, spec.device,
            batch_key(spec.recipe, blocks, n_train, len(spec.targets), spec.val_split is not None))


def fit_heads(cache: Any, specs: Sequence[Any], *, progress: bool = False) -> list[Any]:
    """fit_head for many FitSpecs of one cache: the MLP heads that can share a pass are trained together by
    train_heads, then each is scored and reported exactly as fit_head reports it (FitResult per spec, in
    order). Every feature a group needs is held in memory at once: group the specs to bound it."""
    from ..cache.reader import FeatureCache, open_cache
    from ..common.device import resolve_device
    from .fit import _check_request, fit_head
    from .registry import create_head
    from .selection import role_rows

    cache = cache if isinstance(cache, FeatureCache) else open_cache(cache)
    for spec in specs:
        if spec.head not in BATCHABLE:
            raise FeatcacheError(f"head '{spec.head}' is not trained in batches (batched: {', '.join(BATCHABLE)})")
        _check_request(cache, spec)
    loaded: dict[Any, tuple[np.ndarray, np.ndarray, Any, Any]] = {}
    groups: dict[tuple[Any, ...], list[tuple[int, HeadJob]]] = {}
    for i, spec in enumerate(specs):
        rows_key = (tuple(spec.features), tuple(spec.targets), repr(spec.selection), spec.train_split, spec.val_split)
        if rows_key not in loaded:
            data = role_rows(cache, spec.features, spec.targets, spec.train_split, spec.val_split, None,
                             spec.selection)
            val = data.get("val")
            loaded[rows_key] = (data["train"].x.load(), data["train"].y, val.x.load() if val is not None else None,
                                val.y if val is not None else None)
        X, y, Xv, yv = loaded[rows_key]
        model = create_head(spec.head, X.shape[1], len(spec.targets), hidden=spec.hidden, dropout=spec.dropout,
                            seed=spec.recipe.seed)
        job = HeadJob(model, X, y, Xv, yv, spec.recipe, spec.targets, data_key=rows_key)
        groups.setdefault(fit_key(spec, X.shape[0]), []).append((i, job))
    trained: dict[int, TrainResult] = {}
    for members in groups.values():
        device = resolve_device(specs[members[0][0]].device)  # one device per group (part of fit_key)
        results = train_heads([job for _, job in members], device=device, progress=progress,
                              desc=f"fit {len(members)} heads")
        trained.update({i: result for (i, _), result in zip(members, results, strict=True)})
    loaded.clear()
    return [fit_head(cache, spec, progress=False, trained=trained[i]) for i, spec in enumerate(specs)]
