"""The batched-heads benchmark on two versions of featcache in one run, for a ratio measured under one load:
`python benchmarks/batched_heads_versions.py --old /tmp/featcache-old [--new .] [--rounds 2] -- --n 100000
--epochs 3 --threads 2`.

Each round runs `benchmarks/batched_heads.py` (one process per version, the arguments after `--` passed on)
with PYTHONPATH set to that version's checkout, old and new alternating so a change of load falls on both;
the fastest round of each is kept. Prints one JSON dict: each version's seconds one by one and batched, and
new_over_old (the new batched pass's seconds over the old one's: <= 1 means the new code is no slower). The
old version is any checkout of featcache, e.g. `git worktree add /tmp/featcache-old fe5cbd4`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("batched_heads.py")


def run(tree: Path, args: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    out = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=tree, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out[out.index("{"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout of the version to compare against")
    parser.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each version; fastest kept")
    args, rest = parser.parse_known_args()
    rest = [a for a in rest if a != "--"]
    results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for _ in range(max(1, args.rounds)):
        for name, tree in (("old", args.old), ("new", args.new)):
            results[name].append(run(tree, rest))
    best = {name: min(rows, key=lambda r: r["batched_s"]) for name, rows in results.items()}
    summary = {f"{name}_{key}": best[name][key] for name in best for key in ("one_by_one_s", "batched_s",
                                                                                "max_rel_prediction_difference")}
    summary["new_over_old"] = best["new"]["batched_s"] / best["old"]["batched_s"]
    summary["new_over_old_one_by_one"] = best["new"]["one_by_one_s"] / best["old"]["one_by_one_s"]
    summary["loadavg"] = os.getloadavg()[0]
    print(json.dumps({k: float(f"{v:.4g}") for k, v in summary.items()}, indent=1))


if __name__ == "__main__":
    main()
