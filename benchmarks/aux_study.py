"""The auxiliary-loss study (docs/pretraining-aux.md): does a log g term in the blind-spot pretraining make an
encoder whose features beat the raw flux, and does it beat the same labels used by a supervised network?

    .venv/bin/python benchmarks/aux_study.py [--out reports/aux-study] [--parallel 2] [--jobs 2] [--tiny]
        [--n-train 10000 --epochs 1 --labels 100,1000 --sizes 100,500,1000,5000 --baseline-sizes 100,500,1000]

On the synthetic benchmark (generator v2) at mag 20.3 (docs/pretraining-aux.md says why not 21.5): 10k train,
1k val, 2k test spectra by default (the budget a 2-core machine affords in about 1.5 hours; the planned
`--n-train 20000 --epochs 3 --labels 200,2000 --sizes 200,500,2000,5000 --baseline-sizes 200,500,2000` costs about
8 CPU-hours). Encoders l9e32k9 (the demo encoder's architecture and recipe: E2, batch 16, lr 3e-3, --epochs
epochs of the train spectra each, one thread: an equal budget per encoder), with LAMBDA in {0, 0.1, 1} x labelled
rows --labels (1% and 10% of train; --aux-seed 0, so they are compare's --train-sizes --subset-seed 0 rows). LAMBDA 0
is bitwise plain pretraining whatever the labels (tests/pretrain/test_auxiliary.py), so it is trained once and
stands for both. The supervised baseline is the same architecture from random initialisation trained end to end on
the same labelled rows only (finetune --random-init --train-size N --subset-seed 0). Every encoder is probed on
its best tap (seg_mean_K8 of enc_0..enc_9, chosen by ridge's validation R2) with ridge and mlp_1, on nested train
subsets --sizes and all train spectra (label efficiency), against the raw flux (input_flux, every kept pixel).
Test R2 is reported once, with its 95% bootstrap interval.

Every stage is resumable (re-run after a kill: finished stages are skipped, a pretraining or fine-tuning run
continues from its last epoch) and runs at nice 5. Each training runs on one thread (OMP_NUM_THREADS=1,
--threads 1); --parallel N runs N trainings at a time. The CPU time of every stage (its process's user + system
time, os.wait4) is written to OUT/cost.json and the table. Writes OUT/study.csv, OUT/study.md and
OUT/label_efficiency_log_g.png. --tiny runs the whole chain on a few hundred spectra and a 3-layer encoder
(minutes) to check it end to end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FC = [sys.executable, "-m", "featcache"]
TARGET = "log_g"
FLOOR = -0.3  # the plot's lowest test R2
FULL = {"mag": 20.3, "n_train": 10000, "n_val": 1000, "n_test": 2000, "seeds": (301, 302, 303),
        "arch": ["--num-layers", "9", "--embed-dim", "32", "--kernel-size", "9"], "epochs": 1, "batch": 16,
        "lr": "3e-3", "labels": [100, 1000], "weights": [0.0, 0.1, 1.0], "sizes": [100, 500, 1000, 5000],
        "baseline_sizes": [100, 500, 1000], "baseline_epochs": 30, "baseline_patience": 5}
TINY = {**FULL, "n_train": 240, "n_val": 60, "n_test": 60, "arch": ["--num-layers", "3", "--embed-dim", "4",
        "--kernel-size", "3"], "epochs": 1, "labels": [6, 24], "sizes": [24, 60], "baseline_sizes": [24],
        "baseline_epochs": 2, "baseline_patience": 1}


class Study:
    """Paths, the configuration and the cost ledger (OUT/cost.json: CPU seconds per finished stage)."""

    def __init__(self, out: Path, data: Path, config: dict[str, Any], parallel: int, jobs: int):
        self.out, self.data, self.config, self.parallel, self.jobs = out, data, config, parallel, jobs
        (out / "encoders").mkdir(parents=True, exist_ok=True)
        (out / "runs").mkdir(exist_ok=True)
        (out / "compare").mkdir(exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        self.cost_path = out / "cost.json"
        self.cost: dict[str, float] = json.loads(self.cost_path.read_text()) if self.cost_path.exists() else {}

    def file(self, split: str) -> Path:
        c = self.config
        n = {"train": c["n_train"], "val": c["n_val"], "test": c["n_test"]}[split]
        seed = c["seeds"][("train", "val", "test").index(split)]
        return self.data / f"aux-{split}-n{n}-s{seed}-m{c['mag']}.h5"

    def splits(self) -> list[str]:
        return [w for s in ("train", "val", "test") for w in ("--data", f"{s}={self.file(s)}")]

    def run(self, stage: str, args: list[str]) -> float:
        """One featcache command at nice 5 on one thread; its CPU seconds recorded under `stage`."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FEATCACHE_QUIET": "1"}
        started = time.monotonic()
        proc = subprocess.Popen(["nice", "-n", "5", *FC, *map(str, args)], cwd=REPO, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"aux_study: stage {stage} failed (exit {proc.returncode}): featcache {' '.join(args)}")
        seconds = usage.ru_utime + usage.ru_stime
        self.cost[stage] = self.cost.get(stage, 0.0) + seconds  # a resumed stage adds its remaining part
        self.cost_path.write_text(json.dumps(self.cost, indent=1))
        print(f"aux_study: {stage}: {seconds / 60:.1f} CPU-min ({(time.monotonic() - started) / 60:.1f} min wall)",
              flush=True)
        return seconds


# -- the stages ---------------------------------------------------------------------------------------------
def make_data(study: Study) -> None:
    c = study.config
    for split in ("train", "val", "test"):
        path = study.file(split)
        if not path.exists():
            n = c[f"n_{split}"]
            study.run(f"synth {split}", ["synth", path, "--n", n, "--seed", c["seeds"][("train", "val", "test")
                                         .index(split)], "--mag", c["mag"], "--noise-free", "--workers", "1"])


def encoder_names(config: dict[str, Any]) -> dict[str, tuple[float, int]]:
    """name -> (LAMBDA, labelled rows); LAMBDA 0 once (it is the plain encoder whatever the labels)."""
    out = {"lambda0": (0.0, max(config["labels"]))}
    for weight in config["weights"]:
        if weight > 0:
            for n in config["labels"]:
                out[f"lambda{weight:g}-n{n}"] = (weight, n)
    return out


def pretrain(study: Study, name: str, weight: float, labels: int) -> None:
    c, ckpt = study.config, study.out / "encoders" / f"{name}.ckpt"
    log = ckpt.with_name(ckpt.stem + ".log.csv")
    if log.exists() and len(log.read_text().strip().splitlines()) - 1 >= c["epochs"]:
        return
    args = ["pretrain", "--data", f"train={study.file('train')}", "--data", f"val={study.file('val')}", "--out", ckpt,
            *c["arch"], "--loss", "E2", "--batch-size", c["batch"], "--lr", c["lr"], "--max-epochs", c["epochs"],
            "--seed", 0, "--threads", 1, "--aux-target", TARGET, "--aux-weight", weight, "--aux-labels", labels,
            "--aux-seed", 0]
    study.run(f"pretrain {name}", [*args, "--resume"] if ckpt.exists() else args)


def baseline(study: Study, n: int) -> None:
    """The supervised baseline on the n labelled rows: the architecture from random init, trained end to end."""
    c, out = study.config, study.out / "runs" / f"supervised-n{n}"
    if (out / "metrics.json").exists():
        return
    plain = study.out / "encoders" / "lambda0.ckpt"
    args = ["finetune", "--ckpt", plain, "--random-init", "--init-seed", 0, "--train-size", n, "--subset-seed", 0,
            *study.splits(), "--mask", plain.with_name(plain.stem + ".mask.npy"), "--noise-seed", 42,
            "--layer", "enc_pre_latent", "--pool", "seg_mean_K8", "--head", "mlp_1", "--target", TARGET,
            "--unfreeze", "all", "--batchnorm", "train", "--encoder-lr", "1e-3", "--lr", "1e-3",
            "--max-epochs", c["baseline_epochs"], "--patience", c["baseline_patience"], "--batch-size", 32,
            "--out", out]
    study.run(f"supervised n={n}", [*args, "--resume"] if (out / "last.pt").exists() else args)


def extract(study: Study, name: str) -> Path:
    ckpt, cache = study.out / "encoders" / f"{name}.ckpt", study.out / "caches" / f"{name}.zarr"
    marker = cache.with_suffix(".done")
    if not marker.exists():
        mask = ckpt.with_name(ckpt.stem + ".mask.npy")
        common = ["--ckpt", ckpt, *study.splits(), "--mask", mask, "--noise-seed", 42, "--device", "cpu"]
        study.run(f"extract {name}", ["extract", *common, "--layer", "all", "--pool", "seg_mean_K8", "--out", cache])
        if name == "lambda0":  # the raw flux, every kept pixel: the baseline every encoder must beat
            study.run("extract raw flux", ["extract", *common, "--layer", "input_flux", "--pool", "none", "--out",
                                           cache])
        marker.write_text("done\n")
    return cache


def best_tap(study: Study, name: str, cache: Path) -> str:
    """The tap whose ridge validation R2 is highest (full train split; test not looked at for the choice)."""
    out = study.out / "compare" / f"taps-{name}"
    if not (out / "compare.json").exists():
        study.run(f"tap choice {name}", ["compare", "--cache", f"{name}={cache}", "--target", TARGET, "--head", "ridge",
                                         "--pool", "seg_mean_K8", "--no-baselines", "--no-plots", "--jobs", study.jobs,
                                         "--out", out, "-q"])
    cells = json.loads((out / "compare.json").read_text())["cells"]
    cells = [c for c in cells if c["kind"] == "encoder" and c["val_r2"] is not None]
    return max(cells, key=lambda c: c["val_r2"])["layer"]


def probe(study: Study, label: str, cache: Path, layer: str, pool: str) -> Path:
    out = study.out / "compare" / label
    if not (out / "label_efficiency.csv").exists():
        sizes = ",".join(str(s) for s in study.config["sizes"])
        study.run(f"probe {label}", ["compare", "--cache", f"{label}={cache}", "--target", TARGET, "--head", "ridge",
                                     "--head", "mlp_1", "--layer", layer, "--pool", pool, "--train-sizes", sizes,
                                     "--subset-seed", 0, "--no-plots", "--jobs", study.jobs, "--out", out, "-q",
                                     *([] if layer == "input_flux" else ["--no-baselines"])])
    return out / "label_efficiency.csv"


# -- the table and the plot ---------------------------------------------------------------------------------
def collect(study: Study, names: dict[str, tuple[float, int]], taps: dict[str, str]) -> list[dict[str, Any]]:
    import pandas as pd

    rows: list[dict[str, Any]] = []
    sources = {"raw flux": ("input_flux", "none")} | {n: (taps[n], "seg_mean_K8") for n in names}
    for label, (layer, pool) in sources.items():
        table = pd.read_csv(study.out / "compare" / label.replace(" ", "-") / "label_efficiency.csv")
        table = table[(table["target"] == TARGET) & (table["layer"] == layer) & (table["pool"] == pool)]
        weight, labels = names.get(label, (math.nan, 0))
        for r in table.to_dict("records"):
            rows.append({"method": label, "lambda": weight, "aux_labels": labels if label != "raw flux" else 0,
                         "tap": f"{layer}/{pool}", "head": r["head"], "n_train": int(r["n_train"]),
                         "val_r2": r["val_r2"], "test_r2": r["test_r2"], "test_r2_lo": r["test_r2_lo"],
                         "test_r2_hi": r["test_r2_hi"], "n_test": int(r["n_test"])})
    for n in study.config["baseline_sizes"]:
        metrics = json.loads((study.out / "runs" / f"supervised-n{n}" / "metrics.json").read_text())
        val, test = (metrics["splits"][s]["targets"][TARGET] for s in ("val", "test"))
        rows.append({"method": "supervised (random init)", "lambda": math.nan, "aux_labels": n,
                     "tap": "enc_pre_latent/seg_mean_K8", "head": "mlp_1 (end to end)", "n_train": n,
                     "val_r2": val["r2"], "test_r2": test["r2"], "test_r2_lo": test["r2_ci95"][0],
                     "test_r2_hi": test["r2_ci95"][1], "n_test": metrics["splits"]["test"]["n"]})
    return rows


def findings(rows: list[dict[str, Any]]) -> list[str]:
    """Where a method's test R2 interval lies wholly above (or below) the raw flux's with the same head and train
    size: intervals that do not overlap (a conservative reading; the intervals are the 95% bootstrap)."""
    raw = {(r["head"], r["n_train"]): r for r in rows if r["method"] == "raw flux"}
    raw_any = {r["n_train"]: max((x for x in rows if x["method"] == "raw flux" and x["n_train"] == r["n_train"]),
                                 key=lambda x: x["val_r2"]) for r in rows if r["method"] == "raw flux"}
    out = []
    for r in rows:
        if r["method"] == "raw flux":
            continue
        ref = raw.get((r["head"], r["n_train"])) or raw_any.get(r["n_train"])
        if ref is None:
            continue
        if r["test_r2_lo"] > ref["test_r2_hi"]:
            out.append(f"{r['method']} ({r['head']}, {r['n_train']} labels) beats the raw flux ({ref['head']}): "
                       f"test R2 {r['test_r2']:.3f} [{r['test_r2_lo']:.3f}, {r['test_r2_hi']:.3f}] vs "
                       f"{ref['test_r2']:.3f} [{ref['test_r2_lo']:.3f}, {ref['test_r2_hi']:.3f}]")
        elif r["test_r2_hi"] < ref["test_r2_lo"]:
            out.append(f"{r['method']} ({r['head']}, {r['n_train']} labels) is below the raw flux ({ref['head']}): "
                       f"{r['test_r2']:.3f} [{r['test_r2_lo']:.3f}, {r['test_r2_hi']:.3f}] vs {ref['test_r2']:.3f}")
    return out or ["no method's test R2 interval lies wholly above or below the raw flux's at any train size"]


def _cell_predictions(study: Study, label: str, layer: str, head: str, n_train: int) -> tuple[Any, Any, Any]:
    """(test index, truth, prediction) of one probe cell of compare/<label> (the label-efficiency refits)."""
    import numpy as np

    for path in sorted((study.out / "compare" / label / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        if cell.get("layer") == layer and cell.get("head") == head and cell["n"]["train"] == n_train:
            with np.load(path.with_suffix(".npz")) as arrays:
                return arrays["test_index"], arrays["test_true"].ravel(), arrays["test_pred"].ravel()
    raise SystemExit(f"aux_study: no {head} cell of {label} {layer} at {n_train} train spectra")


def paired(study: Study, names: dict[str, tuple[float, int]], taps: dict[str, str]) -> list[dict[str, Any]]:
    """Test R2 differences on the same test spectra, paired bootstrap (each resample scores both): every
    auxiliary encoder against the plain one (same head and train size), and the plain encoder's mlp_1 probe
    against the supervised baseline trained on the same labelled rows."""
    import numpy as np

    from featcache.heads.metrics import paired_r2_difference_ci

    out = []
    sizes = [*study.config["sizes"], study.config["n_train"]]
    for name in names:
        if name == "lambda0":
            continue
        for head in ("ridge", "mlp_1"):
            for n in sizes:
                ia, ya, pa = _cell_predictions(study, name, taps[name], head, n)
                ib, _, pb = _cell_predictions(study, "lambda0", taps["lambda0"], head, n)
                assert np.array_equal(ia, ib), "the probes scored other test spectra"
                diff, lo, hi = paired_r2_difference_ci(ya, pa, pb)
                out.append({"a": name, "b": "lambda0", "head": head, "n_train": n, "diff": diff, "lo": lo, "hi": hi})
    for n in study.config["baseline_sizes"]:
        ia, ya, pa = _cell_predictions(study, "lambda0", taps["lambda0"], "mlp_1", n)
        with np.load(study.out / "runs" / f"supervised-n{n}" / "predictions.npz") as run:
            order = np.argsort(run["test_index"])
            ib, pb = run["test_index"][order], run["test_pred"].ravel()[order]
        keep = np.argsort(ia)
        assert np.array_equal(ia[keep], ib), "the baseline scored other test spectra"
        diff, lo, hi = paired_r2_difference_ci(ya[keep], pa[keep], pb)
        out.append({"a": "lambda0 (mlp_1 probe)", "b": "supervised (random init)", "head": "mlp_1", "n_train": n,
                    "diff": diff, "lo": lo, "hi": hi})
    return out


def write_outputs(study: Study, rows: list[dict[str, Any]], pairs: list[dict[str, Any]] | None = None) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(study.out / "study.csv", index=False)
    c = study.config
    total = sum(study.cost.values())
    tiny = " -- TINY CHECK RUN, not the study" if c["n_train"] == TINY["n_train"] else ""
    lines = [f"# Auxiliary log g loss: label efficiency (synthetic benchmark v2, mag {c['mag']}){tiny}", "",
             f"{c['n_train']} train / {c['n_val']} val / {c['n_test']} test spectra; encoders "
             f"{' '.join(c['arch'])}, E2, {c['epochs']} epochs of the train spectra each; test R2 of {TARGET} with "
             "its 95% bootstrap interval; tap and hyper-parameters chosen on validation. Written by "
             "`benchmarks/aux_study.py`.", "",
             "| method | LAMBDA | labelled rows in pretraining | tap | head | probe train spectra | val R2 | "
             "test R2 [95% CI] |", "|---|---:|---:|---|---|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["method"], r["head"], r["n_train"])):
        lam = "" if math.isnan(r["lambda"]) else f"{r['lambda']:g}"
        lines.append(f"| {r['method']} | {lam} | {r['aux_labels'] or ''} | {r['tap']} | {r['head']} | {r['n_train']} | "
                     f"{r['val_r2']:.3f} | {r['test_r2']:.3f} [{r['test_r2_lo']:.3f}, {r['test_r2_hi']:.3f}] |")
    lines += ["", "## Against the raw flux", "", *[f"- {s}" for s in findings(rows)]]
    if pairs:
        lines += ["", "## Against the plain encoder and the supervised baseline (paired)", "",
                  "Test R2 of A minus B on the same test spectra, 95% paired bootstrap interval (1000 resamples, each "
                  "scoring both).", "", "| A | B | head | train spectra | A - B [95% CI] | verdict |",
                  "|---|---|---|---:|---:|---|"]
        for p in pairs:
            verdict = "A higher" if p["lo"] > 0 else "A lower" if p["hi"] < 0 else "not resolved"
            lines.append(f"| {p['a']} | {p['b']} | {p['head']} | {p['n_train']} | {p['diff']:+.3f} "
                         f"[{p['lo']:+.3f}, {p['hi']:+.3f}] | {verdict} |")
    lines += ["",
              f"## CPU cost: {total / 3600:.2f} CPU-hours in all", "", "| stage | CPU-min |", "|---|---:|"]
    lines += [f"| {k} | {v / 60:.1f} |" for k, v in study.cost.items()]
    (study.out / "study.md").write_text("\n".join(lines) + "\n")
    plot(study, rows)


def plot(study: Study, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, head in zip(axes, ("ridge", "mlp_1"), strict=True):
        for i, method in enumerate(methods):
            points = sorted((r for r in rows if r["method"] == method and (r["head"] == head or
                             (method.startswith("supervised") and head == "mlp_1"))), key=lambda r: r["n_train"])
            if not points:
                continue
            x = [r["n_train"] for r in points]
            y = [r["test_r2"] for r in points]
            err = [[r["test_r2"] - r["test_r2_lo"] for r in points], [r["test_r2_hi"] - r["test_r2"] for r in points]]
            style = {"color": "k", "lw": 2} if method == "raw flux" else {"color": f"C{i}"}
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=2, label=method, **style)
        low = [r for r in rows if r["test_r2"] < FLOOR]
        if low:  # a collapsed fit (R2 far below 0) would squash every other curve: keep the axis, say so
            ax.text(0.02, 0.02, f"{len(low)} point(s) below R2 {FLOOR:g} off the axis (study.md has them)",
                    transform=ax.transAxes, fontsize=7)
        ax.set_ylim(max(FLOOR, min(r["test_r2_lo"] for r in rows) - 0.02),  # both ends: the axes share y
                    max(r["test_r2_hi"] for r in rows) + 0.02)
        ax.set_xscale("log")
        ax.set_xlabel("labelled train spectra (probe; the baseline's whole training set)")
        ax.set_title(f"probe {head}" + (" (and the supervised baseline)" if head == "mlp_1" else ""))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test R2 of {TARGET} (95% CI)")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"auxiliary log g loss, synthetic v2 at mag {study.config['mag']}")
    fig.tight_layout()
    fig.savefig(study.out / f"label_efficiency_{TARGET}.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "aux-study")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "synth" / "aux-study")
    parser.add_argument("--parallel", type=int, default=1, help="trainings at a time (one thread each)")
    parser.add_argument("--jobs", type=int, default=1, help="compare --jobs")
    parser.add_argument("--tiny", action="store_true", help="a few hundred spectra, a 3-layer encoder: minutes")
    parser.add_argument("--n-train", type=int, help=f"train spectra (default {FULL['n_train']})")
    parser.add_argument("--epochs", type=int, help=f"pretraining epochs per encoder (default {FULL['epochs']})")
    for name in ("labels", "sizes", "baseline-sizes"):
        key = name.replace("-", "_")
        parser.add_argument(f"--{name}", type=lambda text: [int(v) for v in text.split(",")],
                            help=f"comma list (default {','.join(map(str, FULL[key]))})")
    args = parser.parse_args()
    config = dict(TINY if args.tiny else FULL)
    for key in ("n_train", "epochs", "labels", "sizes", "baseline_sizes"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    study = Study(args.out, args.data, config, args.parallel, args.jobs)
    make_data(study)
    names = encoder_names(config)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:  # one thread per training
        trainings = {name: pool.submit(pretrain, study, name, *spec) for name, spec in names.items()}
        plain = trainings["lambda0"]  # the baselines take its architecture and mask; queued last, so it runs first
        baselines = [pool.submit(lambda n: (plain.result(), baseline(study, n)), n) for n in config["baseline_sizes"]]
        for future in [*trainings.values(), *baselines]:
            future.result()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        caches = dict(zip(names, pool.map(lambda name: extract(study, name), names), strict=True))
    taps = {name: best_tap(study, name, cache) for name, cache in caches.items()}
    probe(study, "raw-flux", caches["lambda0"], "input_flux", "none")
    for name, cache in caches.items():
        probe(study, name, cache, taps[name], "seg_mean_K8")
    (study.out / "taps.json").write_text(json.dumps(taps, indent=1))
    rows = collect(study, names, taps)
    write_outputs(study, rows, paired(study, names, taps))
    print((study.out / "study.md").read_text())


if __name__ == "__main__":
    main()
