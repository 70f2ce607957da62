"""`featcache fit`: train a Ridge or MLP head on cached features (seconds, not GPU-hours)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import UserError, command, command_line, echo_result, resolved_options


def parse_alphas(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise UserError(f"--alphas {text}: expected comma-separated numbers, e.g. 1e-3,1e-2,1e-1") from None


def recipe_options(func):
    """The training recipe's knobs, shared by fit, compare and finetune."""
    options = [
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation and shuffling."),
        click.option("--max-epochs", type=int, default=50, show_default=True, help="At most this many epochs."),
        click.option("--batch-size", type=int, default=256, show_default=True, help="Rows per optimiser step."),
        click.option("--lr", type=float, default=1e-3, show_default=True, help="AdamW learning rate of the head."),
        click.option("--weight-decay", type=float, default=1e-4, show_default=True, help="AdamW weight decay."),
        click.option("--patience", type=int, default=15, show_default=True,
                     help="Early stopping: epochs without a better validation R2."),
        click.option("--grad-clip", type=float, default=0.5, show_default=True, help="Gradient norm clip (0: off)."),
        click.option("--hidden", type=int, default=256, show_default=True, help="Hidden width of mlp heads."),
        click.option("--dropout", type=float, default=0.1, show_default=True, help="Dropout of mlp heads."),
        click.option("--alphas", default=None,
                     help="Ridge alphas relative to n_train, comma-separated (default: 21 values 1e-4..1e6)."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:i]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def make_recipe(seed: int, max_epochs: int, batch_size: int, lr: float, weight_decay: float, patience: int,
                grad_clip: float):
    from featcache.training import TrainRecipe

    recipe = TrainRecipe(lr=lr, weight_decay=weight_decay, batch_size=batch_size, max_epochs=max_epochs,
                         patience=patience, grad_clip=grad_clip or None, seed=seed)
    recipe.validate()
    return recipe


@command("fit", short_help="Fit a ridge or MLP head on cached features.")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path), required=True, help="Feature cache (.zarr).")
@click.option("--layer", default=None, help="Layer of the feature (with --pool).")
@click.option("--pool", default=None, help="Pooling of the feature (with --layer).")
@click.option("--feature", "features", multiple=True, metavar="LAYER/POOL",
              help="A feature to concatenate (repeatable).")
@click.option("--target", "targets", multiple=True, required=True, help="Label to predict (repeatable).")
@click.option("--head", default="ridge", show_default=True, help="ridge | linear | mlp_1 | mlp_2.")
@click.option("--train-split", default="train", show_default=True)
@click.option("--val-split", default="val", show_default=True, help="Chooses alpha / epochs (never test).")
@click.option("--test-split", default="test", show_default=True, help="Scored once at the end ('' to skip).")
@recipe_options
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run directory (default reports/runs/<layer>-<pool>-<head>-<target>).")
@click.pass_context
def command(ctx: click.Context, cache_path: Path, layer: str | None, pool: str | None, features: tuple[str, ...],
            targets: tuple[str, ...], head: str, train_split: str, val_split: str, test_split: str, seed: int,
            max_epochs: int, batch_size: int, lr: float, weight_decay: float, patience: int, grad_clip: float,
            hidden: int, dropout: float, alphas: str | None, device: str, out: Path | None) -> None:
    """Fit a head on cached features: alpha or epochs chosen on validation, test reported once.

    Writes metrics.json, predictions.npz, head.pt, history.csv and config.yaml into --out and prints a
    one-line summary.

    \b
    Example:
      featcache fit --cache cache/m215.zarr --layer enc_pre_latent --pool seg_mean_K8 \\
        --head mlp_1 --target log_g --out reports/runs/pre_latent-K8-mlp_1
    """
    from featcache.cache import open_cache
    from featcache.fit import FitSpec, fit_head, parse_features, save_run

    feature_list = parse_features(layer, pool, features)
    spec = FitSpec(features=feature_list, targets=list(targets), head=head, hidden=hidden, dropout=dropout,
                   recipe=make_recipe(seed, max_epochs, batch_size, lr, weight_decay, patience, grad_clip),
                   alphas=parse_alphas(alphas), train_split=train_split, val_split=val_split or None,
                   test_split=test_split or None, device=device)
    result = fit_head(open_cache(cache_path), spec)
    if out is None:
        name = "+".join(f"{a}-{b}" for a, b in feature_list)
        out = Path("reports") / "runs" / f"{name}-{head}-{'+'.join(targets)}"
    save_run(result, out, config=resolved_options(ctx), command=command_line())
    echo_result(f"{result.summary()} -> {out}")
