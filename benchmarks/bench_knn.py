"""kNN benchmark: `python benchmarks/bench_knn.py [--n 100000] [--d 384] [--queries 1000] [--threads 2]`.

Times featcache's knn head (fit: standardise and keep the train rows; search: the blocked float64 torch
search for the largest k of the grid, 256) against scikit-learn's KNeighborsRegressor(algorithm='brute') on
the same standardised arrays, interleaved, best of --repeats, and checks their predictions agree. Prints one
JSON dict (seconds, ratio > 1: ours faster, the largest difference of the predictions, the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from sklearn.neighbors import KNeighborsRegressor

from featcache.heads.knn import KNNHead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.n, args.d)).astype(np.float32) * rng.uniform(0.1, 5, args.d).astype(np.float32)
    y = X[:, :8].sum(axis=1) + rng.normal(size=args.n)
    Q = rng.normal(size=(args.queries, args.d)).astype(np.float32)
    best = {"fit": np.inf, "predict": np.inf, "sklearn_fit_predict": np.inf}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        head = KNNHead(ks=[args.k]).fit(X, y)
        t1 = time.perf_counter()
        ours = head.predict(Q)
        t2 = time.perf_counter()
        Zt, Zq = head.standardise(X).astype(np.float64), head.standardise(Q).astype(np.float64)
        t3 = time.perf_counter()
        ref = KNeighborsRegressor(n_neighbors=args.k, algorithm="brute", n_jobs=args.threads).fit(Zt, y).predict(Zq)
        t4 = time.perf_counter()
        best = {"fit": min(best["fit"], t1 - t0), "predict": min(best["predict"], t2 - t1),
                "sklearn_fit_predict": min(best["sklearn_fit_predict"], t4 - t3)}
    out = {**{f"{k}_s": round(v, 3) for k, v in best.items()}, "n": args.n, "d": args.d, "queries": args.queries,
           "k": args.k, "threads": args.threads,
           "speedup_vs_sklearn": round(best["sklearn_fit_predict"] / (best["fit"] + best["predict"]), 2),
           "max_abs_difference": float(np.abs(ours - ref).max()), "load_average": os.getloadavg()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
