"""Head benchmark script: `python benchmarks/bench_heads.py [--n 100000] [--d 384] [--epochs 50] [--threads 1]`.

Prints one JSON dict of seconds (wall, and process CPU: steadier on a shared machine) and ratios
(ridge_speedup_vs_sklearn > 1: ours faster; mlp_1_ratio_vs_bare > 1: ours slower), plus the load average.
The measurement itself lives in featcache.bench.heads (also run by `featcache bench`).
"""

from __future__ import annotations

import argparse
import json

from featcache.bench.heads import run_heads_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved mlp_1 / bare runs; fastest kept")
    parser.add_argument("--no-sklearn", action="store_true")
    args = parser.parse_args()
    result = run_heads_benchmark(args.n, args.d, args.epochs, args.seed, include_sklearn=not args.no_sklearn,
                                 threads=args.threads, repeats=args.repeats)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
