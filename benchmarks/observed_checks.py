"""Figures of docs/observed-spectra.md on the files of benchmarks/sim_to_observed.sh: how the median of the noisy
flux compares with the noise-free median the synthetic files are normalised by, and what a round trip through the
PFS MR grid does to the per-pixel error, and whether the propagated error describes the noise. The round trip is
made here on the clean file (its noise-free flux is the truth; the observed-like file's sharp sky residuals would
be smoothed by the resampling and count as error).

    python benchmarks/observed_checks.py data/synth/sim-to-obs
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

from featcache.observed.grid import GridOptions
from featcache.observed.importer import ImportOptions, import_spectra
from featcache.observed.writer import ExportOptions, export_pfsspec
from featcache.spectra.pfsspec import PfsDataset

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "data/synth/sim-to-obs")
with PfsDataset(folder / "obs.h5") as src:
    n = src.n_rows
    ratio = np.median(src.read_noisy(0, n), axis=1) / np.median(src.read_flux(0, n), axis=1)
print(f"observed-like file: median(noisy) / median(noise-free flux), {n} spectra: median {np.median(ratio):.4f}, "
      f"5-95% {np.percentile(ratio, 5):.4f}-{np.percentile(ratio, 95):.4f}")
with tempfile.TemporaryDirectory() as tmp:
    fits_path, back = Path(tmp) / "pfsCoadd-clean.fits", Path(tmp) / "back.h5"
    export_pfsspec(folder / "clean.h5", fits_path, ExportOptions(grid="mr"))
    import_spectra(ImportOptions(files=(fits_path,), reference=folder / "train.h5", out=back, grid=GridOptions()))
    with PfsDataset(folder / "clean.h5") as src, PfsDataset(back) as obs, h5py.File(back) as h5:
        flux, error = src.read_flux(0, n), src.read_error(0, n)
        o_noisy, o_error = obs.read_noisy(0, n), obs.read_error(0, n)
        good = h5["dataset/arrays/mask/value"][:] == 0
scale = (np.median(o_noisy, axis=1) / np.median(flux, axis=1))[:, None]   # the import's normalisation, row by row
pull = ((o_noisy - flux * scale) / o_error)[good]
print(f"clean file through the MR grid and back: per-pixel error / original error (good pixels): median "
      f"{np.median((o_error / (error * scale))[good]):.3f}; std of (imported - true) / propagated error: "
      f"{np.std(pull):.3f} over {pull.size} pixels")
