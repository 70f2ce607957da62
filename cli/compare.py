"""`featcache compare`: every layer x pooling x head cell, with baselines, intervals and plots (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .common import command, command_line, echo_result, elapsed
from .options import (
    binning_options,
    head_option_values,
    head_options,
    make_recipe,
    parse_alphas,
    parse_max_memory,
    parse_shard,
    parse_sizes,
    recipe_options,
    split_role_options,
    threads_option,
)


@command("compare", short_help="Table every layer x pooling x head cell, with baselines and CIs.")
@click.option("--cache", "caches", multiple=True, required=True, metavar="[NAME=]PATH",
              help="Feature cache, optionally named (repeatable: e.g. pretrained=a.zarr random=b.zarr). "
                   "Unnamed: the encoder tag, or the file stem.")
@click.option("--target", "targets", multiple=True, required=True, help="Label to predict (repeatable).")
@click.option("--head", "heads", multiple=True, help="Head (repeatable; default: ridge and mlp_1).")
@click.option("--layer", "layers", multiple=True,
              help="Only these layers (repeatable; default and 'all': every layer of the caches). The "
                   "input_flux / input_error baselines stay unless one of them is named or --no-baselines.")
@click.option("--pool", "pools", multiple=True, help="Only these poolings (repeatable; default: all).")
@click.option("--seeds", type=int, default=1, show_default=True,
              help="Fit trainable heads with seeds SEED..SEED+N-1; cells show mean ± std.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Make the fits in this many processes at once, --threads each (small heads use cores better "
                   "this way than with more threads: on a quiet 2-core machine --jobs 2).")
@threads_option("heads")
@click.option("--run", "runs", multiple=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Add rows from a featcache fit / finetune run directory (repeatable).")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Include the raw-input pseudo-layers (input_flux, input_error) where the cache has them.")
@click.option("--train-sizes", default="", metavar="N1,N2,...",
              help="Label efficiency: refit every cell on nested random subsets of this many train spectra (the "
                   "same spectra for every cell); writes label_efficiency.csv and its plot.")
@click.option("--folds", type=int, default=0, show_default=True,
              help="Stability: refit every cell on K folds over train + val spectra (test untouched); the fold "
                   "std is shown beside the seed std and the bootstrap interval.")
@click.option("--subset-seed", type=int, default=0, show_default=True,
              help="Seed of the --train-sizes subsets and the --folds assignment.")
@click.option("--shard", default=None, metavar="I/N",
              help="Fit only share I of N (0 <= I < N) of the fits into OUT/cells (one task of a job array) and write "
                   "no table; a compare without --shard then assembles it without refitting.")
@click.option("--batched/--no-batched", default=True, show_default=True,
              help="Train the MLP fits that share their rows (seeds, --hidden/--lr settings, features of one cache) "
                   "in one pass of stacked heads (with --jobs N, passes of about equal cost, one per process); "
                   "--no-batched fits one head at a time.")
@click.option("--full-spectrum/--no-full-spectrum", default=False, show_default=True,
              help="Add the field's baseline: a Cannon model fitted on the train split, each validation and test "
                   "spectrum's labels and radial velocity fitted to its whole noisy spectrum (weighted least "
                   "squares). Caches with bounds (featcache bounds) also get each cell's scatter beside the "
                   "information bound.")
@click.option("--cannon-order", type=click.IntRange(1, 3), default=2, show_default=True,
              help="With --full-spectrum: the Cannon model's polynomial order (3 where the S/N is high enough "
                   "that a quadratic's misfit, not the noise, limits the fit).")
@click.option("--cannon-cells", default="auto", show_default=True, metavar="auto|none|AxBxC",
              help="With --full-spectrum: local models on a grid over T_eff x log_g x [M/H] (auto: 4x4x3 from "
                   "10000 train spectra on), or none (one global model).")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Write the PNG plots and report.md.")
@split_role_options(test_help="Scored with a bootstrap interval.")
@recipe_options(sweep=True)
@head_options
@binning_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports/compare"), show_default=True,
              help="Report directory (finished fits are kept in OUT/cells and reused).")
def command(caches: tuple[str, ...], targets: tuple[str, ...], heads: tuple[str, ...], layers: tuple[str, ...],
            pools: tuple[str, ...], seeds: int, jobs: int, threads: int | None, runs: tuple[Path, ...], baselines: bool,
            train_sizes: str, folds: int, subset_seed: int, shard: str | None, batched: bool, full_spectrum: bool,
            cannon_order: int, cannon_cells: str,
            plots: bool,
            train_split: str, val_split: str, test_split: str, seed: int, max_epochs: int, batch_size: int,
            lr: list[float], weight_decay: list[float], patience: int, grad_clip: float, hidden: list[int],
            dropout: list[float],
            alphas: str | None, device: str, max_memory: str | None, bins: tuple[str, ...], giant_logg: float,
            out: Path, **head_values: Any) -> None:
    """Fit every (encoder, layer, pooling) x head cell on cached features and tabulate test R2 with its 95%
    bootstrap interval beside validation R2; the best cell by validation R2 is in bold.

    Writes compare.md (also printed), compare.csv, compare.json, R2 heatmaps, the best cell's
    predicted/residual plots and report.md into --out. Re-running refits nothing; a changed recipe refits
    only the cells it affects.

    \b
    Example:
      featcache compare --cache pretrained=cache/m215.zarr --cache random=cache/m215-random.zarr \\
        --target log_g --head ridge --head mlp_1 --seeds 3 --out reports/m215-logg
    """
    from featcache.common.progress import status
    from featcache.heads.binning import Binning
    from featcache.reports.comparison import compare

    layers = tuple(layer for layer in layers if layer != "all")  # --layer all: every encoder layer (the default)
    result = compare(list(caches), list(targets), heads=list(heads) or None, layers=list(layers) or None,
                     pools=list(pools) or None, seeds=seeds,
                     recipe=make_recipe(seed, max_epochs, batch_size, lr[0], weight_decay[0], patience, grad_clip),
                     hidden=hidden[0], dropout=dropout[0], alphas=parse_alphas(alphas), runs=list(runs), out=out,
                     baselines=baselines, device=device, train_split=train_split, val_split=val_split,
                     test_split=test_split, plots=plots, jobs=jobs, threads=threads,
                     binning=Binning.parse(bins, giant_logg),
                     train_sizes=parse_sizes(train_sizes), folds=folds, subset_seed=subset_seed,
                     shard=parse_shard(shard), batched=batched,
                     sweep_values={"hidden": hidden, "dropout": dropout, "lr": lr, "weight_decay": weight_decay},
                     head_options=head_option_values(head_values), max_memory=parse_max_memory(max_memory),
                     full_spectrum=full_spectrum, cannon_order=cannon_order, cannon_cells=cannon_cells,
                     command=command_line())
    echo_result(result.markdown.rstrip())
    if result.table is not None:
        status(f"compare: {result.fitted} fits made, {result.reused} reused -> {out} ({elapsed()} in all)")
