"""Head benchmark: streaming ridge vs scikit-learn's RidgeCV, and train_head(mlp_1) vs a bare PyTorch loop.

Used by `featcache bench` and by benchmarks/bench_heads.py. Returns a dict of seconds (wall, and process
CPU: steadier on a shared machine) and ratios (ridge_speedup_vs_sklearn > 1: ours faster;
mlp_1_ratio_vs_bare > 1: ours slower), plus the load average.
Targets from the issue: ridge < 2 s and faster than RidgeCV; mlp_1 < 90 s and within 1.3x of the bare loop.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ..heads.recipe import TrainRecipe
from ..heads.registry import count_parameters, create_head
from ..heads.ridge import RidgeHead, StreamingStats
from ..heads.training import make_optimizer, train_head


def make_features(n: int, d: int, seed: int = 0, latent: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Random-but-structured float32 features: a nonlinear map of a low-dimensional latent plus noise, and
    a target that depends on the latent nonlinearly (so ridge and the MLP both have something to learn)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent)).astype(np.float32)
    mix = rng.standard_normal((latent, d)).astype(np.float32) / np.sqrt(latent)
    X = np.tanh(z @ mix) + 0.1 * rng.standard_normal((n, d)).astype(np.float32)
    y = np.sin(z[:, 0]) * z[:, 1] + 0.5 * z[:, 2] ** 2 + z[:, 3] + 0.05 * rng.standard_normal(n)
    return X.astype(np.float32), y.astype(np.float32)


def bare_loop(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, lr: float,
              weight_decay: float, seed: int) -> None:
    """The reference: shuffled index batches sliced from in-memory tensors, AdamW, MSE, nothing else."""
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model.parameters(), lr, weight_decay, X.device)  # same optimizer as train_head
    loss_fn = nn.MSELoss()
    model.train()
    n = X.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = loss_fn(model(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def _warm_up(d: int, seed: int) -> None:
    """Pay one-off costs (torch's first optimizer imports torch._dynamo: seconds) before any timing."""
    X, y = make_features(512, d, seed)
    train_head(create_head("mlp_1", d, 1, seed=seed), X, y, X, y, TrainRecipe(max_epochs=1), progress=False)
    bare_loop(create_head("mlp_1", d, 1, seed=seed), torch.from_numpy(X), torch.from_numpy(y[:, None]), 1, 256,
              1e-3, 1e-4, seed)


def run_heads_benchmark(n: int = 100_000, d: int = 384, epochs: int = 50, seed: int = 0,
                        val_fraction: float = 0.2, include_sklearn: bool = True,
                        threads: int | None = None, repeats: int = 2) -> dict[str, Any]:
    """Time the heads on n x d float32 train features (plus a held-out validation of n*val_fraction rows).

    repeats: mlp_1 and the bare loop run this many times, interleaved; the fastest of each is reported
    (timeit's rule: on a shared machine the minimum is the least disturbed run).
    threads: torch CPU threads for both training loops (None: torch's default), restored afterwards.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _run(n, d, epochs, seed, val_fraction, include_sklearn, repeats)
    finally:
        torch.set_num_threads(previous)


class _Timer:
    """Wall and process-CPU seconds: on a shared machine CPU time is the steadier of the two."""

    def __enter__(self) -> _Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def _run(n: int, d: int, epochs: int, seed: int, val_fraction: float, include_sklearn: bool,
         repeats: int) -> dict[str, Any]:
    n_val = max(2, int(n * val_fraction))
    X_all, y_all = make_features(n + n_val, d, seed)
    X, y, Xv, yv = X_all[:n], y_all[:n], X_all[n:], y_all[n:]
    out: dict[str, Any] = {"n_train": n, "n_val": n_val, "d": d, "epochs": epochs,
                           "torch_threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()[0]}

    with _Timer() as t:
        head = RidgeHead()
        head.fit_stats(StreamingStats.from_arrays(X, y), StreamingStats.from_arrays(Xv, yv))
    out.update(ridge_s=t.wall, ridge_cpu_s=t.cpu, ridge_alpha=head.alpha_, ridge_val_r2=head.val_r2_,
               ridge_n_alphas=int(head.alphas_.size))

    if include_sklearn:
        from sklearn.linear_model import RidgeCV
        from sklearn.preprocessing import StandardScaler

        with _Timer() as t:
            scaler = StandardScaler().fit(X)
            ref = RidgeCV(alphas=head.alphas_).fit(scaler.transform(X), y)
        out.update(sklearn_ridgecv_s=t.wall, sklearn_ridgecv_cpu_s=t.cpu, sklearn_ridgecv_alpha=float(ref.alpha_),
                   ridge_speedup_vs_sklearn=t.wall / out["ridge_s"],
                   ridge_speedup_vs_sklearn_cpu=t.cpu / out["ridge_cpu_s"])

    if epochs > 0:
        _warm_up(d, seed)
        recipe = TrainRecipe(max_epochs=epochs, patience=epochs + 1, seed=seed)  # early stopping off
        xs = torch.from_numpy((X - X.mean(0)) / X.std(0))
        ys = torch.from_numpy(((y - y.mean()) / y.std())[:, None])
        ours, bare = [], []
        for _ in range(max(1, repeats)):  # interleaved, so a burst of load hits both sides alike
            model = create_head("mlp_1", d, 1, seed=seed)
            with _Timer() as t:
                result = train_head(model, X, y, Xv, yv, recipe, progress=False)
            ours.append(t)
            bare_model = create_head("mlp_1", d, 1, seed=seed)
            with _Timer() as t:
                bare_loop(bare_model, xs, ys, epochs, recipe.batch_size, recipe.lr, recipe.weight_decay, seed)
            bare.append(t)
        best_ours, best_bare = min(t.wall for t in ours), min(t.wall for t in bare)
        best_ours_cpu, best_bare_cpu = min(t.cpu for t in ours), min(t.cpu for t in bare)
        out.update(mlp_1_params=count_parameters(model), mlp_1_epochs_run=len(result.history),
                   mlp_1_val_r2=result.best_val_r2, repeats=len(ours),
                   mlp_1_s=best_ours, mlp_1_cpu_s=best_ours_cpu, bare_loop_s=best_bare, bare_loop_cpu_s=best_bare_cpu,
                   mlp_1_ratio_vs_bare=best_ours / best_bare, mlp_1_ratio_vs_bare_cpu=best_ours_cpu / best_bare_cpu,
                   mlp_1_all_s=[t.wall for t in ours], bare_loop_all_s=[t.wall for t in bare])
    out["loadavg_end"] = os.getloadavg()[0]
    return out


def run_batched_benchmark(n: int = 100_000, dims: tuple[int, ...] = (128, 192, 256, 384), seeds: int = 3,
                          epochs: int = 3, seed: int = 0, val_fraction: float = 0.1, threads: int | None = None,
                          repeats: int = 1) -> dict[str, Any]:
    """len(dims) x seeds mlp_1 fits (the issue's 12 cells: 3 seeds x 4 features of 100k x 128-384 rows),
    one after another with train_head against one pass of heads.batched.train_heads, in this process with
    the same threads, interleaved `repeats` times (fastest kept). Early stopping is off, so both run
    `epochs` epochs; the ratio > 1 means batched is faster. Also the largest relative difference of their
    validation predictions (the equality check, up to float32 summation order)."""
    from ..heads.batched import HeadJob, train_heads

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        n_val = max(2, int(n * val_fraction))
        data = {d: make_features(n + n_val, d, seed + i) for i, d in enumerate(dims)}
        recipe = {s: TrainRecipe(max_epochs=epochs, patience=epochs + 1, seed=s) for s in range(seeds)}
        specs = [(d, s) for d in dims for s in range(seeds)]
        _warm_up(dims[0], seed)
        out: dict[str, Any] = {"n_train": n, "n_val": n_val, "dims": list(dims), "seeds": seeds, "fits": len(specs),
                               "epochs": epochs, "torch_threads": torch.get_num_threads(),
                               "loadavg_start": os.getloadavg()[0]}
        one_by_one, batched = [], []
        for _ in range(max(1, repeats)):
            with _Timer() as t:
                alone = [train_head(create_head("mlp_1", d, 1, seed=s), data[d][0][:n], data[d][1][:n],
                                    data[d][0][n:], data[d][1][n:], recipe[s], progress=False) for d, s in specs]
            one_by_one.append(t)
            jobs = [HeadJob(create_head("mlp_1", d, 1, seed=s), data[d][0][:n], data[d][1][:n], data[d][0][n:],
                            data[d][1][n:], recipe[s], data_key=d) for d, s in specs]
            with _Timer() as t:
                together = train_heads(jobs)
            batched.append(t)
        diffs = []
        for a, b, (d, _) in zip(together, alone, specs, strict=True):
            pa, pb = a.predict(data[d][0][n:]), b.predict(data[d][0][n:])
            diffs.append(float(np.abs(pa - pb).max() / np.abs(pb).max()))
        diff = max(diffs)
        best_alone, best_batched = min(t.wall for t in one_by_one), min(t.wall for t in batched)
        out.update(one_by_one_s=best_alone, batched_s=best_batched, batched_speedup=best_alone / best_batched,
                   one_by_one_cpu_s=min(t.cpu for t in one_by_one), batched_cpu_s=min(t.cpu for t in batched),
                   max_rel_prediction_difference=diff, loadavg_end=os.getloadavg()[0])
        return out
    finally:
        torch.set_num_threads(previous)
