"""`featcache transfer`: a head fitted on simulated spectra applied to observed ones, with the shift reported."""

from __future__ import annotations

from pathlib import Path

import click

from featcache.observed.transfer import TransferOptions

from .common import command, command_line, echo_result
from .options import defaults

T = defaults(TransferOptions)


@command("transfer", short_help="Apply a sim-trained head to observed features; report the shift.")
@click.option("--head", type=click.Path(path_type=Path), required=True,
              help="Run directory of featcache fit (fitted on a simulated cache).")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path), required=True,
              help="Cache of the observed spectra, extracted with the head's encoder, mask and features.")
@click.option("--split", required=True, help="Split of --cache holding the observed spectra.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Report directory: report.md, transfer.json, predictions.csv.")
@click.option("--train-cache", type=click.Path(path_type=Path), default=None,
              help="The head's training cache, if it moved (default: the path in its metrics.json).")
@click.option("--reference-split", default=None,
              help="Held-out simulated split to compare with (default: the head's test split, else its val split).")
@click.option("--percentile", type=float, default=T["percentile"], show_default=True,
              help="Distance alarm threshold: this percentile of the reference split's nearest-neighbour distances.")
@click.option("--max-train-rows", type=int, default=T["max_train_rows"], show_default=True,
              help="Train rows the distances are measured to (a seeded subsample above this).")
@click.option("--n-boot", type=int, default=T["n_boot"], show_default=True, help="Bootstrap resamples.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier report in --out.")
def command(head: Path, cache_path: Path, split: str, out: Path, train_cache: Path | None, reference_split: str | None,
            percentile: float, max_train_rows: int, n_boot: int, overwrite: bool) -> None:
    """Train on simulations, test on observations: apply HEAD to the observed SPLIT of --cache.

    The features must be made the way the head's were (encoder, mask, pooling, direction, dtypes: refused
    otherwise); only the data source (and so the noise) differs. The report sets the observed split beside a
    held-out simulated split: metrics where labels exist, scatter per S/N bin and population, an uncertainty
    head's coverage per bin (the out-of-distribution alarm), and the distance of the observed features from the
    training features.

    \b
    Example:
      featcache transfer --head reports/runs/sim-mlp_1_gauss --cache cache/observed.zarr --split observed \\
        --out reports/sim-to-obs
    """
    from featcache.observed.transfer import transfer_report

    result = transfer_report(TransferOptions(
        head=head, cache=cache_path, split=split, out=out, train_cache=train_cache, reference_split=reference_split,
        n_boot=n_boot, percentile=percentile, max_train_rows=max_train_rows, overwrite=overwrite,
        command=command_line()))
    dist = result["distance"]
    lines = [f"{out}/report.md: {result['observed']['n']} observed vs {result['reference']['n']} simulated rows; "
             f"beyond the {dist['percentile']:g}th-percentile distance: observed "
             f"{dist['observed']['fraction_beyond']:.3f}, simulated {dist['reference']['fraction_beyond']:.3f}"]
    for target, sections in result["targets_report"].items():
        parts = []
        for role in ("reference", "observed"):
            m = sections[role].get("metrics")
            if m:
                parts.append(f"{role} R2 {m['r2']:.3f} sigma_MAD {m['sigma_mad']:.3f}")
        if parts:
            lines.append(f"{target}: " + "; ".join(parts))
    echo_result("\n".join(lines))
