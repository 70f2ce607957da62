"""`featcache export`: pfsspec spectra (e.g. featcache synth) -> PFS FITS products (pfsCoadd, pfsCalibrated,
pfsObject), a labelled stand-in for observed data."""

from __future__ import annotations

from pathlib import Path

import click

from featcache.observed.writer import GRIDS, ExportOptions

from .common import command, echo_result
from .options import defaults

E = defaults(ExportOptions)


@command("export", short_help="pfsspec spectra -> PFS FITS (pfsCoadd, pfsCalibrated, pfsObject).")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--product", type=click.Choice(["pfsCoadd", "pfsCalibrated", "pfsObject"]), default=E["product"],
              show_default=True, help="pfsObject writes one file per target into the folder OUT.")
@click.option("--grid", type=click.Choice(GRIDS), default=E["grid"], show_default=True,
              help="PFS wavelength sampling: mr (695-905 nm at 0.045 nm), lr (370-1270 nm at 0.08 nm) or the "
                   "file's own pixels in vacuum nm.")
@click.option("--medium", type=click.Choice(["air", "vacuum"]), default=None,
              help="Medium of SOURCE's wavelengths when it does not state it (featcache synth files: air).")
@click.option("--rows", default=None, metavar="START:STOP", help="Rows of SOURCE to export (default all).")
@click.option("--cat-id", type=int, default=E["cat_id"], show_default=True, help="catId of the written targets.")
@click.option("--cosmic-rays", type=float, default=E["cosmic_rays"], show_default=True,
              help="Fraction of pixels hit by a 50-sigma spike flagged CR (exercises the mask decoding).")
@click.option("--covariance-planes", "n_covariance", type=int, default=E["n_covariance"], show_default=True,
              help="COVAR planes written (the pipeline writes 2 since 2025-12).")
@click.option("--seed", type=int, default=E["seed"], show_default=True, help="Seed of the positions and cosmic rays.")
@click.option("--catalogue", type=click.Path(path_type=Path), default=None,
              help="Also write SOURCE's labels as a CSV catalogue (catId, objId, ra, dec and its params).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def command(source: Path, out: Path, product: str, grid: str, medium: str | None, rows: str | None, cat_id: int,
            cosmic_rays: float, n_covariance: int, seed: int, catalogue: Path | None, overwrite: bool) -> None:
    """Write the stored noisy spectra of SOURCE (pfsspec HDF5) as a PFS FITS product OUT.

    Wavelengths go to vacuum nm, the normalised f_lambda to nJy (f_nu at the AB flux of each row's 'mag'),
    the spectra are resampled onto the PFS grid with their variance propagated (COVAR planes), pixels outside
    SOURCE's range are NO_DATA with infinite variance, as in the pipeline's coadds.

    \b
    Example:
      featcache export data/synth/obs-test.h5 data/pfsCoadd-synth.fits --catalogue data/obs-labels.csv
    """
    from featcache.common.errors import FeatcacheError
    from featcache.common.progress import progress
    from featcache.observed.writer import export_pfsspec

    start, stop = 0, None
    if rows:
        try:
            a, b = rows.split(":")
            start, stop = int(a or 0), (int(b) if b else None)
        except ValueError:
            raise FeatcacheError(f"--rows {rows}: expected START:STOP") from None
    if catalogue is not None and catalogue.exists() and not overwrite:
        raise FeatcacheError(f"--catalogue {catalogue}: exists; pass --overwrite to replace it")
    options = ExportOptions(product=product, grid=grid, medium=medium, cat_id=cat_id, start=start, stop=stop,
                            cosmic_rays=cosmic_rays, seed=seed, n_covariance=n_covariance, catalogue=catalogue)
    with progress(desc="export", unit="spectra") as bar:
        info = export_pfsspec(source, out, options, overwrite=overwrite, progress=bar.update)
    files = len(info["files"])
    echo_result(f"wrote {info['n']} spectra as {product} ({files} file{'s' if files > 1 else ''} -> {out}), "
                f"{info['n_pixels']} pixels on the {grid} grid ({info['covered_pixels']} covered by "
                f"SOURCE, {info['medium']} -> vacuum)" + (f"; labels -> {catalogue}" if catalogue else ""))
