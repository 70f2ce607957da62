"""Threads per head fit, on a quiet and on a busy machine: `python benchmarks/threads.py [--n 20000] [--dim 256]
[--epochs 10] [--repeats 3] [--out reports/threads.json]`.

The same head fits (mlp_1 for --epochs epochs, early stopping off, and ridge over its 21 alphas, on n x dim
float32 features) at 1 and at 2 CPU threads, each alone and beside a competing process (a loop of float32
matrix products on every core, as another user's job would run), in fresh processes (a process's OpenMP pool
is fixed at its first parallel region), interleaved over --repeats rounds, the fastest of each kept. Prints
one JSON dict: seconds per setting, the ratios, and the default they support for the head-fitting workload
(featcache.common.device.WORKLOAD_THREADS["heads"], which `fit`, `compare`, `demo` and `predict` use).

Run it on a machine with nothing else of yours running; the competing process is the benchmark's own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = [(1, False), (2, False), (1, True), (2, True)]  # (threads, competing process)


def fit_once(n: int, dim: int, epochs: int, threads: int) -> dict[str, float]:
    """One process's measurement: torch and BLAS at `threads`, then mlp_1 and ridge on synthetic features."""
    import numpy as np

    from featcache.common.device import use_threads
    from featcache.heads.recipe import TrainRecipe
    from featcache.heads.registry import create_head
    from featcache.heads.ridge import RidgeHead
    from featcache.heads.training import train_head

    use_threads(threads)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, dim)).astype(np.float32)
    w = rng.standard_normal(dim).astype(np.float32)
    y = (X @ w / np.sqrt(dim) + 0.3 * rng.standard_normal(n)).astype(np.float32)
    Xv = rng.standard_normal((n // 10, dim)).astype(np.float32)
    yv = (Xv @ w / np.sqrt(dim)).astype(np.float32)
    started = time.perf_counter()
    model = create_head("mlp_1", dim, 1, seed=0)
    recipe = TrainRecipe(max_epochs=epochs, patience=epochs + 1, seed=0)
    result = train_head(model, X, y, Xv, yv, recipe=recipe, progress=False)
    mlp = time.perf_counter() - started
    started = time.perf_counter()
    RidgeHead().fit(X, y, Xv, yv)
    ridge = time.perf_counter() - started
    return {"mlp_1_seconds": mlp, "ridge_seconds": ridge, "val_r2": float(result.best_val_r2)}


def competitor(seconds: float) -> None:
    """Keep every core busy with float32 matrix products for `seconds` (the competing process)."""
    import numpy as np

    a = np.random.default_rng(1).standard_normal((768, 768)).astype(np.float32)
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        a = (a @ a) / np.float32(768.0)


def measure(args: argparse.Namespace, threads: int, loaded: bool) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    rival = None
    if loaded:
        cores = str(os.cpu_count() or 2)
        rival = subprocess.Popen([sys.executable, __file__, "--competitor", str(args.rival_seconds)],
                                 env={**os.environ, "OMP_NUM_THREADS": cores, "OPENBLAS_NUM_THREADS": cores})
        time.sleep(1.0)  # its BLAS pool is up and spinning
    try:
        done = subprocess.run([sys.executable, __file__, "--worker", "--n", str(args.n), "--dim", str(args.dim),
                               "--epochs", str(args.epochs), "--threads", str(threads)],
                              env=env, capture_output=True, text=True, check=True)
    finally:
        if rival is not None:
            rival.terminate()
            rival.wait()
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="train rows (validation: n / 10)")
    parser.add_argument("--dim", type=int, default=256, help="features per row")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the fastest of each is kept")
    parser.add_argument("--rival-seconds", type=float, default=600.0, help="longest a competing process runs")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--competitor", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.competitor is not None:
        competitor(args.competitor)
        return
    if args.worker:
        print(json.dumps(fit_once(args.n, args.dim, args.epochs, args.threads)))
        return
    best: dict[tuple[int, bool], dict[str, float]] = {}
    for _ in range(args.repeats):
        for threads, loaded in SETTINGS:
            got = measure(args, threads, loaded)
            key = (threads, loaded)
            if key not in best or got["mlp_1_seconds"] < best[key]["mlp_1_seconds"]:
                best[key] = got
    seconds = {f"{'busy' if loaded else 'quiet'}_{threads}_threads": round(v["mlp_1_seconds"], 3)
               for (threads, loaded), v in best.items()}
    ridge = {f"{'busy' if loaded else 'quiet'}_{threads}_threads": round(v["ridge_seconds"], 3)
             for (threads, loaded), v in best.items()}
    quiet_gain = best[(1, False)]["mlp_1_seconds"] / best[(2, False)]["mlp_1_seconds"]  # > 1: 2 threads faster
    busy_gain = best[(2, True)]["mlp_1_seconds"] / best[(1, True)]["mlp_1_seconds"]  # > 1: 1 thread faster
    supports = 1 if busy_gain >= quiet_gain else 2
    from featcache.common.device import WORKLOAD_THREADS

    result = {"n": args.n, "dim": args.dim, "epochs": args.epochs, "repeats": args.repeats,
              "cpus": os.cpu_count(), "load_average_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
              "mlp_1_seconds": seconds, "ridge_seconds": ridge,
              "quiet_speedup_of_2_threads": round(quiet_gain, 3), "busy_speedup_of_1_thread": round(busy_gain, 3),
              "val_r2_of_each_setting": sorted({round(v["val_r2"], 6) for v in best.values()}),
              "supports_heads_default": supports, "heads_default_now": WORKLOAD_THREADS["heads"],
              "default_follows": supports == WORKLOAD_THREADS["heads"]}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
