"""`featcache import`: PFS FITS spectra (pfsCoadd, pfsCalibrated, pfsObject, pfsSingle) -> a pfsspec file on a
reference grid, the one way observed spectra enter featcache."""

from __future__ import annotations

from pathlib import Path

import click

from featcache.observed.grid import FLUX_DENSITIES, NORMALISATIONS, UNCOVERED, GridOptions
from featcache.observed.masks import DEFAULT_REJECT

from .common import command, command_line, echo_result
from .options import defaults

G = defaults(GridOptions)


@command("import", short_help="PFS FITS spectra -> a pfsspec file on a reference grid.")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path), required=True,
              help="pfsspec file whose wavelength grid the encoder and heads were made on (e.g. the train split).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output pfsspec file (.h5).")
@click.option("--reference-medium", type=click.Choice(["air", "vacuum"]), default=None,
              help="Medium of the reference's wavelengths, when the file does not state it (featcache synth: air).")
@click.option("--reference-flux", type=click.Choice(FLUX_DENSITIES), default=None,
              help="Flux convention of the reference (f_lambda or f_nu), when the file does not state it.")
@click.option("--target-types", default="SCIENCE,FLUXSTD", show_default=True,
              help="Target types to import, comma-separated (SCIENCE, FLUXSTD, SKY, ... or ALL).")
@click.option("--reject-planes", default="default", show_default=True,
              help="Mask planes whose pixels are not used, comma-separated; 'default' = " + ",".join(DEFAULT_REJECT)
              + ". Their bits are read from each file's MP_* definitions.")
@click.option("--normalise", type=click.Choice(NORMALISATIONS), default=G["normalise"], show_default=True,
              help="median: flux and error x norm-value / median(flux) over the good pixels (the pfsspec sets' rule); "
                   "none: keep the converted units.")
@click.option("--norm-value", type=float, default=G["norm_value"], show_default=True,
              help="The median the spectra are normalised to.")
@click.option("--uncovered", type=click.Choice(UNCOVERED), default=G["uncovered"], show_default=True,
              help="Reference pixels the data do not cover: refuse the import (naming the count), or mask them (the "
                   "bad-pixel rule).")
@click.option("--bad-error-factor", type=float, default=G["bad_error_factor"], show_default=True,
              help="Bad or masked pixels: flux interpolated from the good neighbours, error this times the "
                   "spectrum's median good error (what the sigma channel sees).")
@click.option("--max-bad-fraction", type=float, default=G["max_bad_fraction"], show_default=True,
              help="Leave out (and list) spectra with more bad or uncovered reference pixels than this fraction.")
@click.option("--no-covariance", is_flag=True,
              help="Propagate the variance only (default: with the files' COVAR off-diagonal planes).")
@click.option("--catalogue", type=click.Path(path_type=Path), default=None,
              help="Labels table: .csv, .fits or .parquet.")
@click.option("--label", "labels", multiple=True, metavar="COLUMN[=NAME]",
              help="Catalogue column to import as a label, optionally renamed (repeatable; e.g. logg=log_g).")
@click.option("--join", type=click.Choice(["id", "position"]), default="id", show_default=True,
              help="Join by (catId, objId) or by sky position within --radius.")
@click.option("--radius", type=float, default=1.0, show_default=True, help="Match radius in arcsec (--join position).")
@click.option("--id-columns", default="catId,objId", show_default=True,
              help="Catalogue columns of catId and objId (--join id).")
@click.option("--position-columns", default="ra,dec", show_default=True,
              help="Catalogue columns of RA and Dec in degrees, ICRS (--join position).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (only once the new file is complete).")
def command(files: tuple[Path, ...], reference: Path, out: Path, reference_medium: str | None,
            reference_flux: str | None, target_types: str, reject_planes: str, normalise: str, norm_value: float,
            uncovered: str, bad_error_factor: float, max_bad_fraction: float, no_covariance: bool,
            catalogue: Path | None, labels: tuple[str, ...], join: str, radius: float, id_columns: str,
            position_columns: str, overwrite: bool) -> None:
    """Read PFS FITS FILES as they are and write one pfsspec file on the --reference grid.

    Wavelengths go from vacuum nm to the reference's unit and medium, nJy to its flux convention, the spectra
    are resampled conserving flux (errors propagated), normalised like the reference set, and pixels without
    good data filled by a rule the encoder's sigma channel sees. The output stores the observed flux as its
    'noisy' array with its error: extract it with --noise stored and the --mask the encoder was made with.

    \b
    Example:
      featcache import pfsCoadd-*.fits --reference data/synth/demo-train-n20000-s101.h5 \\
        --out data/observed.h5 --catalogue labels.csv --label logg=log_g --label teff=T_eff
    """
    from featcache.common.progress import progress
    from featcache.observed.catalogue import parse_label_specs
    from featcache.observed.importer import ImportOptions, import_spectra
    from featcache.observed.masks import parse_reject

    options = ImportOptions(
        files=files, reference=reference, out=out, reference_medium=reference_medium, reference_flux=reference_flux,
        grid=GridOptions(reject=parse_reject(reject_planes), normalise=normalise, norm_value=norm_value,
                         uncovered=uncovered, bad_error_factor=bad_error_factor, max_bad_fraction=max_bad_fraction,
                         covariance=not no_covariance),
        target_types=tuple(t.strip().upper() for t in target_types.split(",") if t.strip()),
        catalogue=catalogue, join=join, radius_arcsec=radius, labels=parse_label_specs(labels),
        id_columns=_pair(id_columns, "--id-columns"), position_columns=_pair(position_columns, "--position-columns"),
        overwrite=overwrite, command=command_line())
    with progress(total=len(files), desc="import", unit="file") as bar:
        report = import_spectra(options, progress=bar.update)
    echo_result(report.summary())


def _pair(text: str, option: str) -> tuple[str, str]:
    from featcache.common.errors import FeatcacheError

    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise FeatcacheError(f"{option} {text}: expected two column names separated by a comma")
    return parts[0], parts[1]
