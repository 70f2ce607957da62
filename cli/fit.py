"""`featcache fit`: train a Ridge or MLP head on cached features (seconds, not GPU-hours)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .common import command, command_line, echo_result, elapsed, resolved_options
from .options import (
    binning_options,
    head_option_values,
    head_options,
    make_recipe,
    parse_alphas,
    parse_max_memory,
    recipe_options,
    split_role_options,
    threads_option,
)


@command("fit", short_help="Fit a head (ridge, knn, MLPs, attn, ...) on cached features.")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path), required=True, help="Feature cache (.zarr).")
@click.option("--layer", default=None, help="Layer of the feature (with --pool).")
@click.option("--pool", default=None, help="Pooling of the feature (with --layer).")
@click.option("--feature", "features", multiple=True, metavar="LAYER/POOL",
              help="A feature to concatenate (repeatable).")
@click.option("--target", "targets", multiple=True, required=True, help="Label to predict (repeatable).")
@click.option("--head", default="ridge", show_default=True,
              help="ridge | knn | linear | mlp_1 | mlp_2 | mlp_1_gauss | attn.")
@split_role_options()
@recipe_options
@head_options
@binning_options
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run directory (default reports/runs/<layer>-<pool>-<head>-<target>).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier run in --out (all of its files).")
@threads_option("heads")
@click.pass_context
def command(ctx: click.Context, cache_path: Path, layer: str | None, pool: str | None, features: tuple[str, ...],
            targets: tuple[str, ...], head: str, train_split: str, val_split: str, test_split: str, seed: int,
            max_epochs: int, batch_size: int, lr: float, weight_decay: float, patience: int, grad_clip: float,
            hidden: int, dropout: float, alphas: str | None, device: str, max_memory: str | None,
            bins: tuple[str, ...], giant_logg: float, out: Path | None, overwrite: bool, threads: int | None,
            **head_values: Any) -> None:
    """Fit a head on cached features: alpha or epochs chosen on validation, test reported once.

    Writes metrics.json, predictions.npz, head.pt, history.csv, config.yaml and binned.csv (test residuals
    per population, S/N bin and label bin) into --out and prints a one-line summary.

    \b
    Example:
      featcache fit --cache cache/m215.zarr --layer enc_pre_latent --pool seg_mean_K8 \\
        --head mlp_1 --target log_g --out reports/runs/pre_latent-K8-mlp_1
    """
    from featcache.cache.reader import open_cache
    from featcache.common.device import use_threads
    from featcache.heads.binning import Binning
    from featcache.heads.fit import FitSpec, fit_head, parse_features
    from featcache.heads.runs import RUN_FILES, check_run_dir, save_run

    feature_list = parse_features(layer, pool, features)
    if out is None:
        name = "+".join(f"{a}-{b}" for a, b in feature_list)
        out = Path("reports") / "runs" / f"{name}-{head}-{'+'.join(targets)}"
    check_run_dir(out, overwrite=overwrite)
    binning = Binning.parse(bins, giant_logg)
    spec = FitSpec(features=feature_list, targets=list(targets), head=head, hidden=hidden, dropout=dropout,
                   recipe=make_recipe(seed, max_epochs, batch_size, lr, weight_decay, patience, grad_clip),
                   alphas=parse_alphas(alphas), train_split=train_split, val_split=val_split or None,
                   test_split=test_split or None, device=device, options=head_option_values(head_values),
                   max_memory=parse_max_memory(max_memory))
    use_threads(threads, "heads")
    cache = open_cache(cache_path)
    if spec.test_split in cache.splits:  # fit_head names a missing split
        binning.check_axes([*cache.label_names(spec.test_split), *spec.targets])
    result = fit_head(cache, spec)
    save_run(result, out, config=resolved_options(ctx), command=command_line(), binning=binning, replaces=RUN_FILES)
    echo_result(f"{result.summary()} -> {out} ({elapsed()} in all: loading, fitting, scoring, writing)")
