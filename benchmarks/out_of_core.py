"""Out-of-core head training: `python benchmarks/out_of_core.py [--n-train 300000] [--budget 1GB]`.

1. synth n_train + 20k spectra; extract input_flux with --pool none (3481 float32 per spectrum) into a cache of
   n_train train rows (4.2 GB at 300k) and 10k val / 10k test rows;
2. `featcache fit` mlp_1 on it with `--max-memory BUDGET` for --epochs epochs, peak RSS of the process measured
   (the train rows stream from the cache in chunk windows);
3. on a second cache of the same files that does fit (--fit-train train spectra), mlp_1 in memory against
   mlp_1 streamed (`--max-memory` forcing it), the full default recipe: validation R2 of both.

Every step is resumable (files and runs that exist are kept). Prints one JSON dict; writes it to
OUT/out_of_core.json. Run it alone: it reads and decompresses the whole cache every epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FC = [sys.executable, "-m", "featcache"]


def run(args: list[str]) -> tuple[float, float]:
    """Run a featcache command; (seconds, peak RSS of that child in GB)."""
    started = time.perf_counter()
    env = {**os.environ, "FEATCACHE_QUIET": "1"}
    proc = subprocess.Popen([*FC, *args], cwd=REPO, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: featcache {' '.join(args)}")
    return time.perf_counter() - started, usage.ru_maxrss / 2**20  # Linux: ru_maxrss in KB


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=300_000)
    parser.add_argument("--fit-train", type=int, default=40_000, help="train spectra of the cache that fits")
    parser.add_argument("--budget", default="1GB")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the out-of-core fit (RSS only)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench" / "out-of-core")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    n = args.n_train + 20_000
    data = REPO / "data" / "synth" / f"ooc-n{n}-s7.h5"
    if not data.exists():
        run(["synth", str(data), "--n", str(n), "--seed", "7", "--workers", "2", "-q"])
    held = [f"val={data}:{args.n_train}:{args.n_train + 10_000}", f"test={data}:{args.n_train + 10_000}:{n}"]
    ckpt = REPO / "featcache" / "data" / "encoders" / "demo-l9e32k9s1bn1d1.ckpt"
    caches = {}
    for name, n_train in (("big", args.n_train), ("fits", args.fit_train)):
        cache = REPO / "cache" / f"ooc-{name}-{n_train}.zarr"
        splits = [a for s in [f"train={data}:0:{n_train}", *held] for a in ("--data", s)]
        run(["extract", "--ckpt", str(ckpt), *splits, "--layer", "input_flux", "--pool", "none", "--out",
             str(cache), "-q"])  # resumes or does nothing
        caches[name] = cache
    fit = ["fit", "--layer", "input_flux", "--pool", "none", "--target", "log_g", "--head", "mlp_1", "-q"]
    result: dict = {"n_train": args.n_train, "width": 3481, "budget": args.budget, "cpus": os.cpu_count(),
                    "load_before": os.getloadavg()[0]}
    big = args.out / "streamed-big"
    seconds, rss = run([*fit, "--cache", str(caches["big"]), "--max-memory", args.budget, "--max-epochs",
                        str(args.epochs), "--out", str(big), "--overwrite"])
    m = metrics(big)
    result.update(big_train_bytes=4 * args.n_train * 3481, big_peak_rss_gb=rss, big_seconds=seconds,
                  big_epochs=args.epochs, big_sampler=m["train_rows"], big_val_r2=m["splits"]["val"]["targets"]
                  ["log_g"]["r2"])
    for mode, extra in (("in_memory", []), ("streamed", ["--max-memory", "256MB"])):
        out = args.out / f"{mode}-fits"
        seconds, rss = run([*fit, "--cache", str(caches["fits"]), *extra, "--out", str(out), "--overwrite"])
        m = metrics(out)
        result.update({f"{mode}_val_r2": m["splits"]["val"]["targets"]["log_g"]["r2"],
                       f"{mode}_test_r2": m["splits"]["test"]["targets"]["log_g"]["r2"],
                       f"{mode}_epochs": m["chosen"]["epochs_run"], f"{mode}_seconds": seconds,
                       f"{mode}_peak_rss_gb": rss, f"{mode}_sampler": m["train_rows"]["sampler"]})
    result["val_r2_difference"] = abs(result["in_memory_val_r2"] - result["streamed_val_r2"])
    result["load_after"] = os.getloadavg()[0]
    (args.out / "out_of_core.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
