"""`featcache report`: re-draw finished runs and comparisons (binned scatter, Kiel diagram) without refitting."""

from __future__ import annotations

from pathlib import Path

import click

from .common import command, echo_result
from .options import binning_options


@command("report", short_help="Re-draw runs and comparisons from their files, fitting nothing.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@binning_options
def command(paths: tuple[Path, ...], bins: tuple[str, ...], giant_logg: float) -> None:
    """Re-draw each PATH (a fit / finetune run directory, or a compare directory) from its finished results:
    binned.csv (residual bias, RMSE and sigma_MAD per population, per S/N bin and per bin of each label),
    the sigma_MAD and bias curves, the Kiel diagram of the residuals, predicted vs true, and report.md.
    Nothing is fitted; the files it draws are replaced. --bins / --giant-logg re-bin without refitting.

    \b
    Example:
      featcache report reports/runs/pre_latent-K8-mlp_1
      featcache report reports/synth-logg --bins snr=0,2,5,10,100
    """
    from featcache.heads.binning import Binning
    from featcache.reports.run_report import report

    files = report(list(paths), Binning.parse(bins, giant_logg))
    shown = ", ".join(str(f) for f in files[:6]) + (" ..." if len(files) > 6 else "")
    echo_result(f"{len(files)} files written: {shown}")
