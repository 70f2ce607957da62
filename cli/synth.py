"""`featcache synth`: write the calibrated synthetic PFS red-arm benchmark (pfsspec layout)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from .common import command, echo_result, one_line


@command("synth", short_help="Write calibrated synthetic PFS red-arm spectra (HDF5).")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Number of spectra.")
@click.option("--seed", type=click.IntRange(min=0), required=True,
              help="Seed; spectrum i depends only on (seed, i). Use different seeds for train/val/test.")
@click.option("--mag", type=float, default=21.5, show_default=True,
              help="Magnitude: sets the object counts against the sky (error ~0.165 at 21.5).")
@click.option("--rv-max", type=click.FloatRange(min=0, max=3000, max_open=True), default=300.0,
              show_default=True, help="Radial velocities are uniform in +-RV_MAX km/s (stored as redshift v/c).")
@click.option("--noise-free", is_flag=True,
              help="Do not store a pre-noised 'noisy' array (flux and error only).")
@click.option("--block-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Spectra generated and written per block (memory ~ 60 MB per 1000).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Processes generating blocks in parallel (the file is bitwise the same).")
@click.option("--airmass", default=None, metavar="A|A1:A2",
              help="Observed-like: telluric absorption (O2 A band, water) at this airmass, or uniform in A1:A2 "
                   "(1-3). Off by default.")
@click.option("--pwv", type=float, default=2.0, show_default=True,
              help="Precipitable water vapour (mm) of the telluric water bands (with --airmass).")
@click.option("--sky-residual", type=float, default=0.0, show_default=True,
              help="Observed-like: rms fraction of each OH band's line flux left by sky subtraction.")
@click.option("--fluxcal-error", type=float, default=0.0, show_default=True,
              help="Observed-like: rms of the Legendre coefficients (orders 1-3) of a multiplicative "
                   "flux-calibration error.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def command(out: str, n: int, seed: int, mag: float, rv_max: float, noise_free: bool, block_size: int,
            workers: int, airmass: str | None, pwv: float, sky_residual: float, fluxcal_error: float,
            overwrite: bool) -> None:
    """Write N synthetic stellar spectra to OUT (HDF5, the pfsspec layout that every command reads).

    Spectra of the PFS medium-resolution red arm (4096 pixels, 7100-8850 A, R ~ 5000) with labels
    T_eff, log_g, M_H, a_M, C_M drawn uniformly in the ranges of the real mag-21.5 set, a radial
    velocity, and the real set's noise regime: `error` is the 1-sigma per pixel from sky (continuum and
    OH lines), object photons and read noise. By default the file also ships `noisy` = flux + N(0,1) x
    error, drawn from each spectrum's own seed (like the real pre-noised test sets); --noise-free leaves
    it out (noise can still be drawn later from `error`). The same seed gives bitwise the same file.

    The stellar spectra are interpolated from Korg/MARCS model spectra (generator version 2; data/README.md).
    --airmass, --sky-residual and --fluxcal-error add observed-like effects (off by default): `flux` is then
    the noise-free observation, the labels and the noise draws stay those of the clean file.

    \b
    Example:
      featcache synth data/train.h5 --n 100000 --seed 1 --noise-free --workers 2
      featcache synth data/val.h5 --n 1000 --seed 2
      featcache synth data/test.h5 --n 1000 --seed 3 --mag 22.0
      featcache synth data/test-observed.h5 --n 1000 --seed 3 --airmass 1.0:2.0 --fluxcal-error 0.03
    """
    from featcache.common.progress import progress, status
    from featcache.synth.generate import HDF5WriteFailed, write_synth
    from featcache.synth.observing import ObservingEffects, parse_airmass

    effects = ObservingEffects(airmass=parse_airmass(airmass), pwv=pwv, sky_residual=sky_residual,
                               fluxcal_error=fluxcal_error)

    path = Path(out)
    start = time.time()
    status(f"synth: {n} spectra -> {path} (seed {seed}, mag {mag}, rv-max {rv_max} km/s)")
    try:
        with progress(total=n, desc="synth", unit="spectra") as bar:
            info = write_synth(path, n, seed, mag=mag, rv_max=rv_max, noise_free=noise_free, block=block_size,
                               workers=workers, progress=bar.update, overwrite=overwrite, effects=effects)
    except HDF5WriteFailed as exc:
        # the partial file is removed; the HDF5 library, after a failed write, can crash at interpreter exit
        # (a segmentation fault), so the one-line error is the process's last act
        click.echo(f"Error: {one_line(str(exc))}", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)
    elapsed = max(time.time() - start, 1e-9)
    echo_result(f"wrote {path}: {n} spectra x 4096 pixels ({', '.join(info['arrays'])}), seed {seed}, "
                f"mag {mag}, median per-pixel S/N {info['snr_median']:.2f}, {info['size'] / 1e6:.1f} MB, "
                f"{elapsed:.1f} s ({n / elapsed:.0f} spectra/s)")
