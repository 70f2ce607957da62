"""`featcache bounds`: per-star Cramer-Rao bounds of a cache's spectra, stored beside its labels."""

from __future__ import annotations

from pathlib import Path

import click

from .common import command, echo_result


@command("bounds", short_help="Per-star information bounds of a cache's spectra, stored in it.")
@click.option("--cache", "cache", type=click.Path(path_type=Path), required=True, metavar="PATH",
              help="The feature cache whose spectra (its files, mask and noise) are bounded.")
@click.option("--source", type=click.Choice(["auto", "synth", "cannon"]), default="auto", show_default=True,
              help="Where the spectrum's derivatives come from: synth (the generator itself, exact; files of the "
                   "installed featcache synth only), cannon (a per-pixel polynomial in the labels fitted on the "
                   "train split), auto (synth for featcache synth files, else cannon).")
@click.option("--split", "splits", multiple=True, help="Only these splits (repeatable; default: every split).")
@click.option("--train-split", default="train", show_default=True,
              help="The split the Cannon model is fitted on (--source cannon).")
@click.option("--cannon-order", type=click.IntRange(1, 3), default=2, show_default=True,
              help="Degree of the Cannon's polynomial in the labels (2: The Cannon's quadratic).")
@click.option("--cannon-train-on", type=click.Choice(["flux", "noisy"]), default="flux", show_default=True,
              help="Fit the Cannon on the train split's clean flux, or on its noisy flux weighted by its errors "
                   "(files without clean flux).")
@click.option("--cannon-cells", default="auto", show_default=True, metavar="auto|none|AxBxC",
              help="Local Cannon models on a grid over the leading labels (T_eff x log_g x [M/H]), each fitted on the "
                   "train stars of its cell and half a cell around it; auto: 4x4x3 from 10000 train spectra on, "
                   "else one global model.")
@click.option("--cannon-max-train", type=click.IntRange(min=1), default=30000, show_default=True,
              help="Fit the Cannon on at most this many train spectra (the split's first rows).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes sharing the exact source's generator work (it runs on one core each).")
@click.option("--overwrite", is_flag=True, help="Replace bounds of this source made with other settings.")
def command(cache: Path, source: str, splits: tuple[str, ...], train_split: str, cannon_order: int,
            cannon_train_on: str, cannon_cells: str, cannon_max_train: int, workers: int, overwrite: bool) -> None:
    """Compute every spectrum's Cramer-Rao bound for each stellar label (T_eff, log_g, M_H, a_M, C_M where
    present) and the radial velocity, marginalised over all of them, for the pixels the encoder sees (the
    cache's mask) and the noise it saw (error x noise level), and store them in the cache
    (<split>/bounds/<source>/). compare and report then show each cell's scatter beside the bound per S/N and
    label bin, with its efficiency sigma_bound^2 / sigma^2.

    \b
    Example:
      featcache bounds --cache cache/demo.zarr                  # exact for featcache synth files
      featcache bounds --cache cache/m215.zarr --source cannon  # any labelled file
    """
    import numpy as np

    from featcache.information.store import cache_bounds

    result = cache_bounds(cache, source=source, splits=list(splits) or None, train_split=train_split,
                          order=cannon_order, train_on=cannon_train_on, cells=cannon_cells,
                          max_train=cannon_max_train, overwrite=overwrite, workers=workers)
    lines = ["| split | source | parameter | n | median bound | 16th - 84th percentile | prior-limited |",
             "|---|---|---|---:|---:|---:|---:|"]
    for split, found in result.items():
        for name, values in found.values.items():
            scale, unit = (299792.458, " km/s") if name == "redshift" else (1.0, "")
            shown = "rv" if name == "redshift" else name
            lo, mid, hi = (scale * float(np.percentile(values, q)) for q in (16, 50, 84))
            limited = float(np.mean(values > found.prior_sigma(name))) if name in found.prior else float("nan")
            lines.append(f"| {split} | {found.source} | {shown} | {len(values)} | {mid:.4g}{unit} | {lo:.4g} - "
                         f"{hi:.4g} | {limited:.1%} |")
    echo_result("\n".join(lines) + f"\n\nstored in {cache} (<split>/bounds/<source>); prior-limited: bound above the "
                "label's range / sqrt(12)")
