"""The reference experiment's findings, tested on a finished `featcache compare` directory.

    python benchmarks/grid_findings.py reports/synth-logg [--encoder "demo encoder"] [--random "random init"]

Each finding is a difference of test R2 between two cells scored on the same test spectra, with a paired
95% bootstrap interval (featcache.heads.metrics.paired_r2_difference_ci: 1000 resamples, each scoring both cells),
which is what "A beats B" needs; the separate intervals in compare.md overlap far more than the paired one.
A finding holds when the whole interval is above zero and the difference exceeds the cells' seed std and
fold std (when the comparison ran --seeds N / --folds K). Cells with several seeds use their first seed.
Writes OUT/findings.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from featcache.heads.metrics import paired_r2_difference_ci  # noqa: E402

POOLS = ("global_mean", "mean_max", "seg_mean_K8")
LAYERS = ("enc_3", "enc_pre_latent", "enc_last")  # the middle block the demo probes, the reference taps


class Cells:
    """Test predictions of every row of a compare directory, by (encoder, layer, pool, head)."""

    def __init__(self, out: Path, target: str):
        self.out = out
        summary = json.loads((out / "compare.json").read_text())
        self.rows = [r for r in summary["cells"] if r["target"] == target]
        self.runs = {r["name"]: Path(r["path"]) for r in summary["runs"]}
        self.target = target
        self.index: np.ndarray | None = None

    def find(self, encoder: str, layer: str, pool: str, head: str) -> dict[str, Any] | None:
        for row in self.rows:
            if (row["encoder"], row["layer"], row["pool"], row["head"]) == (encoder, layer, pool, head):
                return row
        return None

    def predictions(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(truth, prediction) on the test spectra, in test-index order (checked to agree across rows)."""
        if row["kind"] == "run":
            run_dir = self.runs[row["encoder"]]
            if not run_dir.exists():  # a relative path from another working directory: try OUT/runs/NAME
                run_dir = self.out / "runs" / run_dir.name
            data = np.load(run_dir / "predictions.npz")
            targets = [str(t) for t in np.atleast_1d(data["targets"])] if "targets" in data else [self.target]
            j = targets.index(self.target)
            truth = data["test_true"].reshape(len(data["test_true"]), -1)[:, j]
            pred = data["test_pred"].reshape(len(truth), -1)[:, j]
            index = data["test_index"]
        else:
            key = str(row["keys"]).split(";")[0]
            data = np.load(self.out / "cells" / f"{key}.npz")
            truth, pred, index = data["test_true"], data["test_pred"], data["test_index"]
        order = np.argsort(index, kind="stable")
        if self.index is None:
            self.index = index[order]
        elif not np.array_equal(self.index, index[order]):
            raise SystemExit(f"{row['encoder']} {row['layer']}/{row['pool']}: scored on other test spectra")
        return truth[order].astype(np.float64), pred[order].astype(np.float64)


def compare_rows(cells: Cells, a: dict[str, Any] | None, b: dict[str, Any] | None, what: str) -> str | None:
    if a is None or b is None:
        return None
    ya, pa = cells.predictions(a)
    yb, pb = cells.predictions(b)
    if not np.allclose(ya, yb):
        raise SystemExit(f"{what}: the two rows disagree on the test truth")
    diff, lo, hi = paired_r2_difference_ci(ya, pa, pb)
    spread = spreads(a, b)
    beyond = all(abs(diff) > value for value in spread.values())
    if not (lo > 0 or hi < 0):
        verdict = "not resolved"
    elif beyond:
        verdict = "holds" if lo > 0 else "reversed"
    else:
        verdict = "within " + " / ".join(k for k, v in spread.items() if abs(diff) <= v)
    spread_text = ", ".join(f"{k} {v:.3f}" for k, v in spread.items()) or "—"
    return (f"| {what} | {a['test_r2']:.3f} | {b['test_r2']:.3f} | {diff:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
            f"{spread_text} | {verdict} |")


def spreads(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """The larger seed std and fold std (of test R2) of the two cells, where the comparison measured them: a
    difference counts only when it exceeds the bootstrap interval, the seed spread and the fold spread."""
    out = {}
    for key, name in (("test_r2_std", "seed std"), ("fold_test_r2_std", "fold std")):
        values = [float(r[key]) for r in (a, b) if r.get(key) is not None and np.isfinite(float(r[key]))]
        if values:
            out[name] = max(values)
    return out


def findings(out: Path, target: str, encoder: str, random: str) -> str:
    cells = Cells(out, target)
    n_test = cells.rows[0]["n_test"] if cells.rows else 0
    lines = [f"# Reference findings on {out} ({target})", "",
             f"Test R2 differences on the same {n_test} test spectra; 95% paired bootstrap interval "
             "(1000 resamples, each scoring both cells). 'holds': the interval is above zero and the difference "
             "exceeds the seed std and the fold std where the comparison measured them (--seeds, --folds); "
             "'within seed std': the interval excludes zero but another seed could undo it.", "",
             "| finding (A > B) | A test R2 | B test R2 | A - B [95% CI] | spread | verdict |",
             "|---|---:|---:|---:|---|---|"]

    def add(a: dict[str, Any] | None, b: dict[str, Any] | None, what: str) -> None:
        line = compare_rows(cells, a, b, what)
        if line:
            lines.append(line)

    for head in ("ridge", "mlp_1"):
        for layer in LAYERS:
            for better, worse in (("seg_mean_K8", "mean_max"), ("mean_max", "global_mean")):
                add(cells.find(encoder, layer, better, head), cells.find(encoder, layer, worse, head),
                    f"{better} > {worse} ({layer}, {head})")
    for deeper, shallower in (("enc_3", "enc_pre_latent"), ("enc_pre_latent", "enc_last")):
        for head in ("ridge", "mlp_1"):
            for pool in POOLS:
                add(cells.find(encoder, deeper, pool, head), cells.find(encoder, shallower, pool, head),
                    f"{deeper} > {shallower} ({pool}, {head})")
    for layer in LAYERS:
        for pool in POOLS:
            add(cells.find(encoder, layer, pool, "mlp_1"), cells.find(encoder, layer, pool, "ridge"),
                f"mlp_1 > ridge ({layer}/{pool})")
    for head in ("ridge", "mlp_1"):
        for layer in LAYERS:
            add(cells.find(encoder, layer, "seg_mean_K8", head), cells.find(random, layer, "seg_mean_K8", head),
                f"{encoder} > {random} ({layer}/seg_mean_K8, {head})")
    raw = next((r["encoder"] for r in cells.rows if r["layer"] == "input_flux"), None)
    if raw:
        for layer in ("enc_3", "enc_pre_latent"):
            for head in ("ridge", "mlp_1"):
                add(cells.find(encoder, layer, "seg_mean_K8", head), cells.find(raw, "input_flux", "none", head),
                    f"{encoder} {layer}/seg_mean_K8 > raw noisy flux ({head})")
    runs = [r for r in cells.rows if r["kind"] == "run"]
    frozen = next((r for r in runs if "frozen" in r["encoder"]), None)
    tuned = next((r for r in runs if "finetuned" in r["encoder"]), None)
    add(tuned, frozen, f"fine-tuned > frozen ({tuned['encoder'] if tuned else ''} vs "
                       f"{frozen['encoder'] if frozen else ''}, same data and epochs)")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a finished featcache compare directory")
    parser.add_argument("--target", default="log_g")
    parser.add_argument("--encoder", default="demo encoder", help="the pretrained cache's name in the table")
    parser.add_argument("--random", default="random init", help="the random-init cache's name in the table")
    args = parser.parse_args()
    text = findings(args.out, args.target, args.encoder, args.random)
    (args.out / "findings.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
