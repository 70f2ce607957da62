"""`featcache synth`'s speed, this tree against another (an older generator), measured in one run.

    python benchmarks/synth_speed.py --old ../featcache-v1 --n 100000 --workers 2 --rounds 1

Each round writes N spectra with `write_synth` (mag 21.5, seed 1) once with the other tree's generator and once
with this tree's, each in a fresh Python process whose `featcache` is imported from that tree, into a temporary
folder that is removed after; the rounds alternate which goes first. Prints the wall time, spectra/s and the
generator version of each, and the ratio of the best of each. Run it on a quiet machine: two processes per
tree-run share the cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WRITE = """
import json, sys, time
from featcache.synth.generate import write_synth
from featcache.synth.physics import GENERATOR_VERSION
start = time.perf_counter()
write_synth(sys.argv[1], n=int(sys.argv[2]), seed=1, workers=int(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - start, "version": GENERATOR_VERSION}))
"""


def time_tree(tree: Path, n: int, workers: int, folder: Path) -> dict:
    """Write N spectra with TREE's generator in a process of its own (its featcache first on the path)."""
    out = folder / f"speed-{tree.name}.h5"
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", WRITE, str(out), str(n), str(workers)], cwd=tree, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"synth_speed: {tree}: {done.stderr.strip().splitlines()[-1]}")
    out.unlink()
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="the other tree (a checkout of an older featcache)")
    ap.add_argument("--n", type=int, default=100_000, help="spectra per write")
    ap.add_argument("--workers", type=int, default=2, help="write_synth's worker processes")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, alternating which tree goes first")
    args = ap.parse_args()
    if not (args.old / "featcache" / "synth" / "generate.py").is_file():
        raise SystemExit(f"synth_speed: --old {args.old}: no featcache/synth/generate.py there")
    trees = {"old": args.old.resolve(), "new": REPO}
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="synth-speed-") as tmp:
        for r in range(args.rounds):
            for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
                result = time_tree(trees[name], args.n, args.workers, Path(tmp))
                rate = args.n / result["seconds"]
                print(f"round {r + 1} {name} (generator v{result['version']}): {result['seconds']:.1f} s, "
                      f"{rate:.0f} spectra/s", flush=True)
                if name not in best or result["seconds"] < best[name]["seconds"]:
                    best[name] = result
    ratio = best["old"]["seconds"] / best["new"]["seconds"]
    print(f"best of {args.rounds}: v{best['old']['version']} {best['old']['seconds']:.1f} s, "
          f"v{best['new']['version']} {best['new']['seconds']:.1f} s for {args.n} spectra with {args.workers} "
          f"workers: the new generator runs at {ratio:.2f}x the old one's speed")


if __name__ == "__main__":
    main()
