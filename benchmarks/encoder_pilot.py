"""Pilot for the embedded encoder: architectures and budgets scored by probe R2 per CPU-minute.

    python benchmarks/encoder_pilot.py [--out reports/encoder-pilot] [--only NAME ...]

Each candidate is pretrained with `featcache pretrain` on one thread (CPU time measured, so other work on
the machine slows the wall clock but not the figure), then probed on the fixed benchmark of
`featcache demo --size standard` (synthetic 20k train / 1k val / 1k test, seeds 101-103, never seen in
pretraining): ridge and mlp_1 on enc_pre_latent/seg_mean_K8, log_g, test R2 with its 95% bootstrap
interval, hyper-parameters chosen on validation. Every stage is resumable (a finished candidate is skipped).
Writes OUT/pilot.csv and OUT/pilot.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FC = [sys.executable, "-m", "featcache"]
PRETRAIN_TRAIN = REPO / "data" / "synth" / "pilot-train-n100000-s1.h5"
PRETRAIN_VAL = REPO / "data" / "synth" / "pilot-val-n1000-s2.h5"
# name: (architecture options, loss, train spectra, epochs)
COMMITTED = "e32k9-E2-20k-3ep (the demo encoder)"
CANDIDATES = {
    COMMITTED: (["--embed-dim", "32", "--kernel-size", "9"], "E2", 20_000, 3),
    "e16k9-T1-10k-1ep": (["--embed-dim", "16", "--kernel-size", "9"], "T1", 10_000, 1),
    "e16k9-E2-10k-1ep": (["--embed-dim", "16", "--kernel-size", "9"], "E2", 10_000, 1),
    "e16k15-T1-10k-1ep": (["--embed-dim", "16", "--kernel-size", "15"], "T1", 10_000, 1),
    "e24k9-T1-10k-1ep": (["--embed-dim", "24", "--kernel-size", "9"], "T1", 10_000, 1),
    "e32k9-T1-10k-1ep": (["--embed-dim", "32", "--kernel-size", "9"], "T1", 10_000, 1),
}


def run(args: list[str]) -> float:
    """Run a featcache command on one thread; returns the CPU minutes it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FEATCACHE_QUIET": "1"}
    subprocess.run([*FC, *args], check=True, cwd=REPO, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / 60.0


def probe(ckpt: Path, out: Path) -> dict[str, float]:
    """extract enc_pre_latent/seg_mean_K8 of the demo's standard files; ridge and mlp_1 on log_g."""
    sys.path.insert(0, str(REPO))
    from featcache.demo import synth_files

    files = synth_files("standard", REPO / "data" / "synth")
    cache = out / "cache.zarr"
    data = [a for split, path in files.items() for a in ("--data", f"{split}={path}")]
    run(["extract", "--ckpt", str(ckpt), *data, "--layer", "enc_pre_latent", "--pool", "seg_mean_K8",
         "--out", str(cache), "-q"])
    run(["compare", "--cache", f"pilot={cache}", "--target", "log_g", "--head", "ridge", "--head", "mlp_1",
         "--no-baselines", "--no-plots", "--out", str(out / "compare"), "-q"])
    cells = json.loads((out / "compare" / "compare.json").read_text())["cells"]
    result = {}
    for cell in cells:
        head = cell["head"]
        result[f"{head}_test_r2"] = cell["test_r2"]
        result[f"{head}_test_r2_lo"], result[f"{head}_test_r2_hi"] = cell["test_r2_lo"], cell["test_r2_hi"]
        result[f"{head}_val_r2"] = cell["val_r2"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "encoder-pilot")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path, n, seed in ((PRETRAIN_TRAIN, 100_000, 1), (PRETRAIN_VAL, 1000, 2)):
        if not path.exists():
            run(["synth", str(path), "--n", str(n), "--seed", str(seed), "--noise-free", "--workers", "1"])
    rows = []
    for name, (arch, loss, n_train, epochs) in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        work = args.out / name.split(" ")[0]
        work.mkdir(exist_ok=True)
        done = work / "result.json"
        if done.exists():
            rows.append(json.loads(done.read_text()))
            continue
        ckpt = work / f"{name}.ckpt"
        if name == COMMITTED:  # trained before the pilot: its CPU time is in featcache/data/encoders/README.md
            ckpt, minutes = REPO / "featcache" / "data" / "encoders" / "demo-l9e32k9s1bn1d1.ckpt", 62.0
        else:
            minutes = run(["pretrain", "--data", f"train={PRETRAIN_TRAIN}", "--data", f"val={PRETRAIN_VAL}",
                       "--out", str(ckpt), "--overwrite", "--num-layers", "9", *arch, "--loss", loss,
                           "--batch-size", "16", "--lr", "3e-3", "--max-epochs", str(epochs), "--max-train",
                           str(n_train), "--seed", "0", "--threads", "1", "-q"])
        with open(ckpt.with_name(ckpt.stem + ".log.csv")) as handle:
            log = list(csv.DictReader(handle))
        row = {"name": name, "arch": " ".join(arch), "loss": loss, "n_train": n_train, "epochs": epochs,
               "pretrain_cpu_min": minutes, "val_snr_gain": float(log[-1]["val_snr_denoised"]) /
               float(log[-1]["val_snr_noisy"]), **probe(ckpt, work)}
        done.write_text(json.dumps(row, indent=1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_table(rows, args.out)


def write_table(rows: list[dict], out: Path) -> None:
    if not rows:
        return
    with open(out / "pilot.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| candidate | loss | train spectra x epochs | pretrain CPU min | val S/N gain | ridge test R2 [95% CI] "
             "| mlp_1 test R2 [95% CI] | mlp_1 R2 per CPU-hour |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['loss']} | {r['n_train']} x {r['epochs']} | {r['pretrain_cpu_min']:.1f} | "
                     f"{r['val_snr_gain']:.1f}x | {r['ridge_test_r2']:.3f} [{r['ridge_test_r2_lo']:.3f}, "
                     f"{r['ridge_test_r2_hi']:.3f}] | {r['mlp_1_test_r2']:.3f} [{r['mlp_1_test_r2_lo']:.3f}, "
                     f"{r['mlp_1_test_r2_hi']:.3f}] | {60 * r['mlp_1_test_r2'] / r['pretrain_cpu_min']:.2f} |")
    (out / "pilot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
