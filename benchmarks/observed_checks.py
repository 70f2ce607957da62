"""Figures of docs/observed-spectra.md on the files of benchmarks/sim_to_observed.sh: how the median of the noisy
flux compares with the noise-free median the synthetic files are normalised by, and what the PFS MR grid round
trip does to the per-pixel error (and whether the propagated error describes the noise).

    python benchmarks/observed_checks.py data/synth/sim-to-obs
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from featcache.spectra.pfsspec import PfsDataset

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "data/synth/sim-to-obs")
with PfsDataset(folder / "obs.h5") as src, PfsDataset(folder / "observed.h5") as obs:
    n = src.n_rows
    flux, noisy, error = src.read_flux(0, n), src.read_noisy(0, n), src.read_error(0, n)
    o_noisy, o_error = obs.read_noisy(0, n), obs.read_error(0, n)
    import h5py

    with h5py.File(folder / "observed.h5") as h5:
        bad = h5["dataset/arrays/mask/value"][:] > 0
ratio = np.median(noisy, axis=1) / np.median(flux, axis=1)
print(f"median(noisy) / median(noise-free flux), {n} spectra: median {np.median(ratio):.4f}, "
      f"5-95% {np.percentile(ratio, 5):.4f}-{np.percentile(ratio, 95):.4f}")
# the imported spectra are median-normalised noisy flux: bring the truth to the same scale row by row
truth = flux * (np.median(o_noisy, axis=1) / np.median(flux, axis=1))[:, None]
good = ~bad
pull = ((o_noisy - truth) / o_error)[good]
print(f"MR grid round trip: per-pixel error / original error (good pixels): median "
      f"{np.median((o_error / (error * (np.median(o_noisy, axis=1) / np.median(flux, axis=1))[:, None]))[good]):.3f}; "
      f"std of (imported - true) / propagated error: {np.std(pull):.3f} over {pull.size} pixels")
