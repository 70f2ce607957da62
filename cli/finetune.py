"""`featcache finetune`: encoder and head trained together, straight from the HDF5 files (no cache)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import UserError, command, command_line, echo_result, resolved_options
from .fit import make_recipe, recipe_options


def resolve_unfreeze(freeze_encoder: bool, unfreeze: str | None) -> str:
    """--freeze-encoder | --unfreeze all | --unfreeze last:K (default: all)."""
    if freeze_encoder and unfreeze is not None:
        raise UserError("give --freeze-encoder or --unfreeze, not both")
    return "none" if freeze_encoder else (unfreeze or "all")


@command("finetune", short_help="Train encoder and head end to end (one process or torchrun).")
@click.option("--ckpt", type=click.Path(path_type=Path), required=True, help="Encoder checkpoint to start from.")
@click.option("--dilation", type=int, default=None,
              help="Encoder dilation (default: YAML beside the checkpoint, the d<N> name token, else 1).")
@click.option("--data", "data", multiple=True, metavar="NAME=FILE[:START:STOP]", required=True,
              help="A split: name, pfsspec HDF5 file, optional row slice. Repeat for train/val/test.")
@click.option("--layer", default="enc_pre_latent", show_default=True, help="Encoder tap (enc_0..enc_N, enc_last).")
@click.option("--pool", default="seg_mean_K8", show_default=True, help="Pooling of the tap.")
@click.option("--head", default=None, help="linear | mlp_1 | mlp_2 (default mlp_1, or the --init-head run's).")
@click.option("--target", "targets", multiple=True, required=True, help="Label to predict (repeatable).")
@click.option("--freeze-encoder", is_flag=True, help="Train the head only (the encoder stays as loaded).")
@click.option("--unfreeze", default=None, metavar="all|last:K",
              help="Encoder blocks to train: all the tap uses, or the last K of them (default: all).")
@click.option("--encoder-lr", type=float, default=1e-4, show_default=True, help="AdamW learning rate of the encoder.")
@click.option("--batchnorm", type=click.Choice(["eval", "train"]), default="eval", show_default=True,
              help="BatchNorm while the encoder trains: keep the pretrained running statistics, or normalise the "
                   "unfrozen blocks with batch statistics (and update theirs).")
@click.option("--scale-floor", type=float, default=0.1, show_default=True,
              help="While the encoder trains, no feature column is scaled by less than this x the median "
                   "column std (near-constant channels would otherwise explode).")
@click.option("--noise", type=click.Choice(["fresh", "fixed"]), default="fresh", show_default=True,
              help="Train noise: new draws each epoch, or the extract noise (draw 0). Val/test use draw 0.")
@click.option("--noise-level", type=float, default=1.0, show_default=True, help="noisy = flux + eps*error*level.")
@click.option("--noise-seed", type=int, default=42, show_default=True, help="Seed of the per-spectrum noise.")
@click.option("--mask", default="quantile:0.85", show_default=True,
              help="FILE.npy | quantile:R (from the first split's errors) | none.")
@click.option("--direction", type=click.Choice(["forward", "reverse", "both"]), default="forward",
              show_default=True, help="Taps of x, of x flipped (flipped back), or both on channels.")
@click.option("--init-head", type=click.Path(path_type=Path), default=None,
              help="Start the head (and its standardisation) from a `featcache fit` run directory.")
@click.option("--train-split", default="train", show_default=True)
@click.option("--val-split", default="val", show_default=True, help="Early stopping and plateau ('' for none).")
@click.option("--test-split", default="test", show_default=True, help="Scored once at the end ('' to skip).")
@recipe_options
@click.option("--block-rows", type=int, default=1024, show_default=True, help="Rows per HDF5 read (and shuffle block).")
@click.option("--eval-batch-size", type=int, default=256, show_default=True,
              help="Spectra per forward in validation, test and the standardisation pass.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")
@click.option("--overwrite", is_flag=True, help="Start again over an earlier run in --out.")
@click.option("--check-sync", is_flag=True, envvar="FEATCACHE_CHECK_SYNC",
              help="Debug: after every step, check that all ranks hold identical weights.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run directory (default reports/runs/e2e-<layer>-<pool>-<head>-<target>).")
@click.pass_context
def command(ctx: click.Context, ckpt: Path, dilation: int | None, data: tuple[str, ...], layer: str, pool: str,
            head: str | None, targets: tuple[str, ...], freeze_encoder: bool, unfreeze: str | None,
            batchnorm: str, scale_floor: float,
            encoder_lr: float, noise: str, noise_level: float, noise_seed: int, mask: str, direction: str,
            init_head: Path | None, train_split: str, val_split: str, test_split: str, seed: int, max_epochs: int,
            batch_size: int, lr: float, weight_decay: float, patience: int, grad_clip: float, hidden: int,
            dropout: float, alphas: str | None, device: str, block_rows: int, eval_batch_size: int, resume: bool,
            overwrite: bool, check_sync: bool, out: Path | None) -> None:
    """Fine-tune: encoder and head trained together on fresh noise, straight from the HDF5 files.

    Writes fit's outputs (metrics.json, predictions.npz, head.pt, history.csv, config.yaml) plus
    encoder.ckpt (loadable by `featcache extract --ckpt`), mask.npy and last.pt (every epoch; --resume).
    Under torchrun or srun it trains with DistributedDataParallel; only rank 0 writes.

    \b
    Example:
      featcache finetune --ckpt ENC.ckpt --data train=train.h5 --data val=val.h5 --data test=test.h5 \\
        --layer enc_pre_latent --pool seg_mean_K8 --head mlp_1 --target log_g \\
        --unfreeze all --encoder-lr 1e-4 --out reports/runs/e2e-K8-mlp_1
      torchrun --nproc-per-node 4 -m featcache finetune ... (same options)
    """
    from featcache.finetune import FinetuneOptions, finetune

    if alphas:
        raise UserError("--alphas applies to ridge heads; finetune trains torch heads (linear, mlp_1, mlp_2)")
    if out is None:
        out = Path("reports") / "runs" / f"e2e-{layer}-{pool}-{head or 'mlp_1'}-{'+'.join(targets)}"
    options = FinetuneOptions(
        ckpt=ckpt, data=list(data), targets=list(targets), out=out, layer=layer, pool=pool, head=head,
        hidden=hidden, dropout=dropout,
        recipe=make_recipe(seed, max_epochs, batch_size, lr, weight_decay, patience, grad_clip),
        unfreeze=resolve_unfreeze(freeze_encoder, unfreeze), encoder_lr=encoder_lr, batchnorm=batchnorm,
        scale_floor=scale_floor, noise=noise,
        noise_level=noise_level, noise_seed=noise_seed, mask=mask, direction=direction, dilation=dilation,
        init_head=init_head, train_split=train_split, val_split=val_split or None, test_split=test_split or None,
        block_rows=block_rows, eval_batch_size=eval_batch_size, device=device, resume=resume, overwrite=overwrite,
        check_sync=check_sync, command=command_line(), config=resolved_options(ctx))
    result = finetune(options)
    if result.rank == 0:
        echo_result(f"{result.summary()} -> {out}")
