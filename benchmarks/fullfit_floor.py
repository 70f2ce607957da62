"""Where the full-spectrum fit's floor comes from at high S/N: `python benchmarks/fullfit_floor.py
[--out /tmp/bounds-acceptance] [--configs 2:auto:0,2:auto:1,3:auto:1,3:6x6x4:1]`.

Uses (and writes once) bounds_acceptance.py's files: 20000 clean train spectra (seed 101) and 300 test spectra
at mag 15.5 (seed 202). Prints two things:

* the rest-frame train spectra (each moved with its own redshift, as the Cannon is fitted) against the
  generator's own rest-frame spectra of the same labels, per pixel, with and without one free flux scale per
  star (featcache synth divides every observed spectrum by its median, which moves with the velocity);
* per model (order:cells:flux_scale), the log g rms of the full-spectrum fit of the *noise-free* test flux
  (weights from the errors): the model's own floor, which no S/N gets below.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bounds-acceptance"))
    parser.add_argument("--configs", default="2:auto:0,2:auto:1,3:auto:1,3:6x6x4:1")
    parser.add_argument("--n-stars", type=int, default=200, help="train stars for the rest-frame comparison")
    args = parser.parse_args()

    from featcache.information import FitSettings, fit_cannon, fit_with
    from featcache.information.shift import to_rest_frame
    from featcache.spectra.inputs import NoiseSpec, read_inputs
    from featcache.spectra.mask import make_mask
    from featcache.spectra.pfsspec import PfsDataset
    from featcache.synth import write_synth
    from featcache.synth.generate import noise_free_flux
    from featcache.synth.physics import LABEL_RANGES

    args.out.mkdir(parents=True, exist_ok=True)
    train, test = args.out / "train.h5", args.out / "test_15.5.h5"
    if not train.exists():
        write_synth(train, 20000, seed=101, mag=17.5, noise_free=True, workers=2)
    if not test.exists():
        write_synth(test, 300, seed=202, mag=15.5, noise_free=True, workers=2)

    with PfsDataset(train) as ds:
        n = args.n_stars
        table = ds.labels([*LABEL_RANGES, "redshift"], 0, n)
        rest, valid = to_rest_frame(ds.read_flux(0, n).astype(np.float64), ds.wave, np.asarray(table["redshift"]))
        mask = make_mask("quantile:0.85", ds, 0, ds.n_rows)
    truth = noise_free_flux({k: np.asarray(table[k], float) for k in LABEL_RANGES}, np.zeros(n)).astype(np.float64)
    inner = valid.copy()
    inner[:, :10] = inner[:, -10:] = False
    scale = (np.where(inner, rest * truth, 0).sum(1) / np.where(inner, truth * truth, 0).sum(1))[:, None]
    result = {"rest_frame_error_median_rms": float(np.nanmedian(np.sqrt(np.nanmean(
                  np.where(inner, rest - truth, np.nan) ** 2, axis=0)))),
              "with_a_scale_per_star": float(np.nanmedian(np.sqrt(np.nanmean(
                  np.where(inner, rest - scale * truth, np.nan) ** 2, axis=0)))),
              "scale_std": float(scale.std()), "floors": []}
    pixels = np.flatnonzero(mask)
    with PfsDataset(test) as ds:
        inputs = read_inputs(ds, 0, ds.n_rows, mask, NoiseSpec("generated", 42, 1.0))
        clean = ds.read_flux(0, ds.n_rows)[:, pixels].astype(np.float64)
        log_g = np.asarray(ds.labels(["log_g"])["log_g"])
    for config in filter(None, args.configs.split(",")):
        order, cells, free = config.split(":")
        model = fit_cannon(train, order=int(order), cells=cells, flux_scale=free == "1", show_progress=False)
        fitted = fit_with(model, clean, inputs.sigma, pixels, FitSettings(scale=free == "1")).label("log_g")
        result["floors"].append({"order": int(order), "cells": cells, "flux_scale": free == "1",
                                 "log_g_rms": float(np.sqrt(np.mean((fitted - log_g) ** 2)))})
        print(json.dumps(result["floors"][-1]), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
