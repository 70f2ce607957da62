"""Passes over a split in eval mode (BatchNorm running statistics, no dropout): the standardisation's
feature moments, validation scores, and the final predictions. Each rank reads its contiguous shard; sums
are all-reduced (exact global R2) and rows gathered in order."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .data import RunContext, SplitData
from .model import FinetuneModel


def eval_pass(model: FinetuneModel, split: SplitData, ctx: RunContext, features: bool = False
               ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(file rows, outputs) per batch of this rank's shard, in eval mode (BatchNorm running statistics)."""
    was_training = model.training
    model.eval()
    bs = ctx.opts.eval_batch_size
    try:
        for rows, x in ctx.eval_stream(split):
            for i in range(0, len(rows), bs):
                with torch.inference_mode():
                    xb = x[i:i + bs].to(ctx.device, non_blocking=True)
                    out = (model.features(xb) if features else model(xb)).float()
                yield rows[i:i + bs], out
    finally:
        model.train(was_training)


Moments = tuple[int, "np.ndarray | None", "np.ndarray | None"]


def _merge(a: Moments, b: Moments) -> Moments:
    """Chan's parallel update of (n, mean, sum of squared deviations)."""
    (n, mean, m2), (nb, mb, m2b) = a, b
    if not nb:
        return a
    if mean is None or m2 is None or not n:
        return b
    total = n + nb
    delta = mb - mean
    return total, mean + delta * nb / total, m2 + m2b + delta**2 * n * nb / total


def feature_moments(model: FinetuneModel, split: SplitData, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of the pooled train features (float64, Chan's merge across batches and
    ranks): the standardisation fit computes on the cache of the same encoder and noise."""
    local: Moments = (0, None, None)
    for _, out in eval_pass(model, split, ctx, features=True):
        block = out.double().cpu().numpy()
        mb = block.mean(axis=0)
        local = _merge(local, (block.shape[0], mb, ((block - mb) ** 2).sum(axis=0)))
    total: Moments = (0, None, None)
    for part in ctx.dist.gather(local):
        total = _merge(total, part)
    n, mean, m2 = total
    assert mean is not None and m2 is not None
    return mean, np.sqrt(np.clip(m2 / n, 0.0, None))


def calibrate_batchnorm(model: FinetuneModel, split: SplitData, ctx: RunContext) -> int:
    """Set the running statistics of every BatchNorm layer that trains (--batchnorm train, unfrozen blocks)
    and was never trained (a random init: mean 0, variance 1) to the split's, by one pass in train mode without
    gradients (a cumulative average over its batches of --batch-size). Otherwise the standardisation and every
    validation pass would see the encoder through statistics that match no data, while training sees batch
    statistics: the supervised baseline's loss started at 2e7 and never recovered. Returns the layers set."""
    was_training = model.training
    model.train()
    norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.training and m.num_batches_tracked is not None and int(m.num_batches_tracked) == 0]
    momenta = [m.momentum for m in norms]
    try:
        if norms:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average: every batch counts alike
            bs = ctx.opts.recipe.batch_size
            for rows, x in ctx.eval_stream(split):
                for i in range(0, len(rows), bs):
                    with torch.no_grad():
                        model.features(x[i:i + bs].to(ctx.device, non_blocking=True))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)


def validation_scores(model: FinetuneModel, split: SplitData, ctx: RunContext, y_mean: np.ndarray,
                      y_scale: np.ndarray) -> tuple[float, float]:
    """(MSE on standardised targets, mean R2 over targets) on the whole split: per-rank sums all-reduced."""
    y_std = ((split.y - y_mean) / y_scale).astype(np.float32)
    t = split.y.shape[1]
    sums = torch.zeros(4, t, dtype=torch.float64)
    for rows, out in eval_pass(model, split, ctx):
        y = torch.from_numpy(y_std[split.index(rows)])
        err = (out.cpu() - y).double()
        yd = y.double()
        sums += torch.stack([(err * err).sum(0), yd.sum(0), (yd * yd).sum(0),
                             torch.full((t,), float(len(rows)), dtype=torch.float64)])
    sse, sy, syy, n = ctx.dist.all_sum(sums)
    sst = syy - sy * sy / n
    return float(sse.sum() / (n[0] * t)), float((1.0 - sse / sst).mean())


def predict_rows(model: FinetuneModel, split: SplitData, ctx: RunContext, y_mean: np.ndarray,
                  y_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(file rows, predictions in target units) of the whole split, gathered in order on every rank."""
    rows_parts, pred_parts = [], []
    for rows, out in eval_pass(model, split, ctx):
        rows_parts.append(rows)
        pred_parts.append(out.double().cpu().numpy() * y_scale + y_mean)
    t = split.y.shape[1]
    local = (np.concatenate(rows_parts) if rows_parts else np.empty(0, dtype=np.int64),
             np.concatenate(pred_parts) if pred_parts else np.empty((0, t)))
    gathered = ctx.dist.gather(local)
    return np.concatenate([g[0] for g in gathered]), np.concatenate([g[1] for g in gathered])
