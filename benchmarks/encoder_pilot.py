"""Pilot for the embedded encoder, as a use of `featcache search`: architectures, losses and budgets scored by a
probe's validation R2 per CPU-minute of pretraining, then the best one scored on test once.

    python benchmarks/encoder_pilot.py [--out reports/encoder-pilot] [--workers 2] [--n-trials 12]

The search (docs/pretraining-aux.md) pretrains each candidate on one thread (CPU time measured, so other work on
the machine slows the wall clock but not the figure) on 10k spectra of a separate synthetic file, and probes it
after each epoch with ridge on enc_pre_latent/seg_mean_K8 on the train and validation splits of
`featcache demo --size standard` (synthetic 20k train / 1k val, seeds 101-102, never seen in pretraining): log_g,
hyper-parameters chosen on validation. The grid sampler runs every combination of the space once; --workers N
starts N processes sharing the study's SQLite storage, which split the trials. Re-running resumes (finished
trials are kept; an interrupted one continues its encoder). Then the best encoder (by the objective) and the
committed demo encoder are scored on the standard test split (1k, seed 103) with ridge and mlp_1, test R2 with its
95% bootstrap interval.
Writes OUT/search/ (trials.csv, trials.md, best.json, score_vs_cost.png) and OUT/pilot.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FC = [sys.executable, "-m", "featcache"]
PRETRAIN_TRAIN = REPO / "data" / "synth" / "pilot-train-n100000-s1.h5"
PRETRAIN_VAL = REPO / "data" / "synth" / "pilot-val-n1000-s2.h5"
# the space: the old pilot's candidates (embedding, kernel, loss) on the demo's depth, one and two epochs of 10k
SPACE = ["--num-layers", "9", "--embed-dim", "16,24,32", "--kernel-size", "9,15", "--loss", "T1,E2",
         "--max-epochs", "1,2"]
FIXED = ["--max-train", "10000", "--set", "batch_size=16", "--set", "lr=3e-3"]
# the committed demo encoder, scored beside the search's best (its CPU time: featcache/data/encoders/README.md)
COMMITTED = REPO / "featcache" / "data" / "encoders" / "demo-l9e32k9s1bn1d1.ckpt"
COMMITTED_CPU_MIN = 62.0


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*FC, *map(str, args)], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "encoder-pilot")
    parser.add_argument("--workers", type=int, default=1, help="search processes sharing the study (one thread each)")
    parser.add_argument("--n-trials", type=int, default=24, help="trials to finish (24: the whole grid)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path, n, seed in ((PRETRAIN_TRAIN, 100_000, 1), (PRETRAIN_VAL, 1000, 2)):
        if not path.exists():
            run(["synth", path, "--n", n, "--seed", seed, "--noise-free", "--workers", "1"]).wait()
    sys.path.insert(0, str(REPO))
    from featcache.demo import synth_files

    files = synth_files("standard", REPO / "data" / "synth")
    search = ["search", "--data", f"train={PRETRAIN_TRAIN}", "--data", f"val={PRETRAIN_VAL}",
              "--probe-data", f"train={files['train']}", "--probe-data", f"val={files['val']}", "--target", "log_g",
              "--out", args.out / "search", *SPACE, *FIXED, "--sampler", "grid", "--n-trials", args.n_trials,
              "--probe-head", "ridge", "--threads", "1"]
    workers = [run([*search, "--worker", i]) for i in range(args.workers)]
    if any(w.wait() != 0 for w in workers):
        raise SystemExit("encoder_pilot: a search worker failed")
    best = json.loads((args.out / "search" / "best.json").read_text())
    table = args.out / "best-compare"
    data = [a for split, path in files.items() for a in ("--data", f"{split}={path}")]
    caches = []
    for name, ckpt in (("search best", Path(best["encoder"])), ("committed demo encoder", COMMITTED)):
        cache = args.out / f"{name.split()[0]}.zarr"
        if run(["extract", "--ckpt", ckpt, *data, "--layer", "enc_pre_latent", "--pool", "seg_mean_K8", "--mask",
                ckpt.with_name(ckpt.stem + ".mask.npy"), "--out", cache, "-q"]).wait() != 0:
            raise SystemExit("encoder_pilot: featcache extract failed")
        caches += ["--cache", f"{name}={cache}"]
    if run(["compare", *caches, "--target", "log_g", "--head", "ridge", "--head", "mlp_1", "--no-baselines",
            "--no-plots", "--out", table, "-q"]).wait() != 0:
        raise SystemExit("encoder_pilot: featcache compare failed")
    cells = json.loads((table / "compare.json").read_text())["cells"]
    lines = [f"Best of the search (trial {best['trial']}: {best['architecture']}, {best['recipe']}): "
             f"val R2 {best['val_r2']:.3f} after {best['cpu_minutes']:.1f} CPU-min of pretraining; the committed "
             f"demo encoder (l9e32k9, E2, 3 epochs of 20k: {COMMITTED_CPU_MIN:.0f} CPU-min) beside it.", "",
             "| encoder | head | test R2 [95% CI] | n test |", "|---|---|---|---:|"]
    lines += [f"| {c['encoder']} | {c['head']} | {c['test_r2']:.3f} [{c['test_r2_lo']:.3f}, {c['test_r2_hi']:.3f}] | "
              f"{c['n_test']} |" for c in cells]
    lines += ["", (args.out / "search" / "trials.md").read_text()]
    (args.out / "pilot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
