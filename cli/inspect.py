"""`featcache inspect`: describe a pfsspec dataset file, a feature cache or a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import command, echo_result


@command("inspect", short_help="Describe a dataset (.h5), cache (.zarr), checkpoint or FITS file.")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")
def command(path: str, as_json: bool) -> None:
    """Describe PATH: a pfsspec HDF5 dataset, a featcache Zarr cache, an encoder checkpoint or a PFS spectra
    product (pfsCoadd, pfsCalibrated, pfsObject, pfsSingle: targets, wavelengths, decoded mask planes).

    \b
    Example:
      featcache inspect data/synth/train.h5
      featcache inspect cache/m215.zarr
      featcache inspect pfsCoadd-00010-....fits
    """
    from featcache.inspection import describe

    info = describe(Path(path))
    if as_json:
        echo_result(json.dumps(info.data, indent=2, default=str))
    else:
        echo_result(info.text)
