"""Batched heads benchmark: `python benchmarks/batched_heads.py [--n 100000] [--epochs 3] [--threads 2]`.

12 mlp_1 fits (3 seeds x 4 features of n x 128, 192, 256, 384 float32 rows) one after another with
train_head against one pass of heads.batched.train_heads; prints one JSON dict (seconds, batched_speedup > 1:
batched faster, the largest relative prediction difference, the load average). The measurement lives in
featcache.bench.heads.run_batched_benchmark.
"""

from __future__ import annotations

import argparse
import json

from featcache.bench.heads import run_batched_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dims", default="128,192,256,384")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs of both; fastest kept")
    args = parser.parse_args()
    result = run_batched_benchmark(args.n, tuple(int(d) for d in args.dims.split(",")), args.seeds, args.epochs,
                                   threads=args.threads, repeats=args.repeats)
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
