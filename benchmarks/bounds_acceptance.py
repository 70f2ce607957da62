"""Issue 29's acceptance at high S/N: `python benchmarks/bounds_acceptance.py [--out /tmp/bounds-acc]`.

Writes a bright synthetic train set (clean flux) and test sets at several magnitudes, the 0.85 quantile mask
from the train errors, then on the test stars (noise generated with seed 42, level 1, draw 0: what an encoder
sees) per S/N bin:

* the exact bound (featcache synth's own derivatives) and the data-driven one (the Cannon of order 2 fitted on
  the train flux, piecewise on 4x4x3 label cells from 10000 train spectra on; --order 3 for the cubic, --cells
  none for one global model), their rms per bin and ratio (acceptance: within 20%);
* the full-spectrum fit's log_g rms and sigma_MAD per bin against the exact bound (acceptance: within 1.5x);
* the finite-difference step check (bounds with the default steps and half of them).

Prints the tables and one JSON line with every figure, the generator version and the seconds of each stage.
Run it on a quiet machine (the seconds are the cost figures; the shared machine's are not).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bounds-acceptance"))
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-test", type=int, default=600, help="test stars per magnitude")
    parser.add_argument("--mags", default="17.5,18.5,19.5", help="test magnitudes (the train set is clean flux)")
    parser.add_argument("--order", type=int, default=2, help="the Cannon's polynomial order")
    parser.add_argument("--cells", default="auto", help="local Cannon models: auto, none or e.g. 4x4x3")
    parser.add_argument("--bins", type=int, default=6, help="equal-count S/N bins")
    parser.add_argument("--label", default="log_g")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from featcache.information import FitSettings, bounds, fit_cannon, fit_with
    from featcache.information.exact import generator_info, step_stability, synth_parameters
    from featcache.spectra.inputs import NoiseSpec, read_inputs
    from featcache.spectra.mask import make_mask
    from featcache.spectra.pfsspec import PfsDataset
    from featcache.synth import write_synth
    from featcache.synth.physics import GENERATOR_VERSION

    args.out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t = time.time()
    train = args.out / "train.h5"
    if not train.exists():
        write_synth(train, args.n_train, seed=101, mag=17.5, noise_free=True, workers=args.workers)
    mags = [float(m) for m in args.mags.split(",")]
    tests = []
    for k, mag in enumerate(mags):
        path = args.out / f"test_{mag:g}.h5"
        if not path.exists():
            write_synth(path, args.n_test, seed=202 + k, mag=mag, noise_free=True, workers=args.workers)
        tests.append(path)
    seconds["synth"] = time.time() - t
    with PfsDataset(train) as ds:
        mask = make_mask("quantile:0.85", ds, 0, ds.n_rows)
    pixels = np.flatnonzero(mask)

    t = time.time()
    model = fit_cannon(train, order=args.order, cells=args.cells, show_progress=False)
    seconds["cannon_fit"] = time.time() - t
    exact, cannon, fitted, truth, snr = [], [], [], [], []
    seconds.update(exact_bounds=0.0, cannon_bounds=0.0, full_fit=0.0)
    for path in tests:
        t = time.time()
        exact.append(bounds(path, mask, source="synth", show_progress=False).values[args.label])
        seconds["exact_bounds"] += time.time() - t
        t = time.time()
        cannon.append(bounds(path, mask, source="cannon", model=model, show_progress=False).values[args.label])
        seconds["cannon_bounds"] += time.time() - t
        with PfsDataset(path) as ds:
            inputs = read_inputs(ds, 0, ds.n_rows, mask, NoiseSpec("generated", 42, 1.0))
            labels = ds.labels([args.label, "snr"])
        t = time.time()
        fitted.append(fit_with(model, inputs.noisy, inputs.sigma, pixels, FitSettings()).label(args.label))
        seconds["full_fit"] += time.time() - t
        truth.append(labels[args.label])
        snr.append(labels["snr"])
    exact_b, cannon_b = np.concatenate(exact), np.concatenate(cannon)
    resid = np.concatenate(fitted) - np.concatenate(truth)
    snr_all = np.concatenate(snr)
    edges = np.unique(np.quantile(snr_all, np.linspace(0, 1, args.bins + 1)))
    which = np.clip(np.searchsorted(edges, snr_all, side="right") - 1, 0, len(edges) - 2)
    rows = []
    print(f"{args.label}: per S/N bin (generator version {GENERATOR_VERSION}, Cannon order {args.order}, cells "
          f"{model.info.get('cells')}, on {args.n_train} clean train spectra; {len(snr_all)} test stars)")
    print("| S/N bin | n | exact bound rms | Cannon bound rms | Cannon / exact | full fit rms | full fit sigma_MAD |"
          " full fit rms / exact bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for b in range(len(edges) - 1):
        keep = which == b
        r = resid[keep]
        row = {"snr_lo": float(edges[b]), "snr_hi": float(edges[b + 1]), "n": int(keep.sum()),
               "exact_rms": float(np.sqrt(np.mean(exact_b[keep] ** 2))),
               "cannon_rms": float(np.sqrt(np.mean(cannon_b[keep] ** 2))),
               "fit_rms": float(np.sqrt(np.mean(r ** 2))),
               "fit_sigma_mad": float(1.4826 * np.median(np.abs(r - np.median(r))))}
        row["cannon_over_exact"] = row["cannon_rms"] / row["exact_rms"]
        row["fit_over_bound"] = row["fit_rms"] / row["exact_rms"]
        rows.append(row)
        print(f"| {row['snr_lo']:.3g}-{row['snr_hi']:.3g} | {row['n']} | {row['exact_rms']:.4f} | "
              f"{row['cannon_rms']:.4f} | {row['cannon_over_exact']:.3f} | {row['fit_rms']:.4f} | "
              f"{row['fit_sigma_mad']:.4f} | {row['fit_over_bound']:.2f} |")
    t = time.time()
    with PfsDataset(tests[0]) as ds:
        names = [n for n in synth_parameters(True) if n != "redshift"]
        table = ds.labels([*names, "redshift"], 0, min(64, ds.n_rows))
        sigma = ds.read_error(0, min(64, ds.n_rows))[:, pixels].astype(np.float64)
        gen = generator_info(ds.path, dict(__import__("h5py").File(ds.path, "r").attrs))
    steps = step_stability({n: np.asarray(table[n], float) for n in names}, np.asarray(table["redshift"], float),
                           sigma, pixels, gen["rv_max"], synth_parameters(True))
    seconds["step_check"] = time.time() - t
    print("finite-difference steps: relative change of a star's bound when the steps are halved (64 stars)")
    for name, entry in steps.items():
        print(f"  {name}: step {entry['step']:.3g}, median {entry['median']:.3%}, 90th percentile "
              f"{entry['p90']:.3%}, max {entry['max']:.3%}")
    accept = {"cannon_within_20pct": all(abs(r["cannon_over_exact"] - 1) <= 0.2 for r in rows),
              "fit_within_1.5x": all(r["fit_over_bound"] <= 1.5 for r in rows)}
    print(json.dumps({"label": args.label, "generator_version": GENERATOR_VERSION, "order": args.order,
                      "cells": model.info.get("cells"),
                      "n_train": args.n_train, "mags": mags, "rows": rows, "steps": steps, "accept": accept,
                      "seconds": {k: round(v, 2) for k, v in seconds.items()},
                      "load_average": list(__import__("os").getloadavg())}))


if __name__ == "__main__":
    main()
