"""`featcache finetune`: encoder and head trained together, straight from the HDF5 files (no cache)."""

from __future__ import annotations

from pathlib import Path

import click

from featcache.finetune.options import BATCHNORM_MODES, FinetuneOptions

from .common import UserError, command, command_line, echo_result, elapsed, given_options, resolved_options
from .options import (
    binning_options,
    data_option,
    defaults,
    make_recipe,
    noise_options,
    recipe_options,
    split_role_options,
    threads_option,
    train_noise_option,
)

D = defaults(FinetuneOptions)
RENAMES = {("--noise", "fresh"): ("--train-noise", "fresh"), ("--noise", "fixed"): ("--train-noise", "fixed")}


def resolve_unfreeze(freeze_encoder: bool, unfreeze: str | None) -> str:
    """--freeze-encoder | --unfreeze all | --unfreeze last:K (default: all)."""
    if freeze_encoder and unfreeze is not None:
        raise UserError("give --freeze-encoder or --unfreeze, not both")
    return "none" if freeze_encoder else (unfreeze or D["unfreeze"])


FIELDS = {"hash_mode": "hash", "freeze_encoder": "unfreeze"}  # click parameters named apart from their option field


@command("finetune", renames=RENAMES, short_help="Train encoder and head end to end (one process or torchrun).")
@click.option("--ckpt", type=click.Path(path_type=Path), required=True, help="Encoder checkpoint to start from.")
@click.option("--random-init", is_flag=True,
              help="Train the encoder from a fresh initialisation of --ckpt's architecture (the supervised baseline: "
                   "docs/pretraining-aux.md); with --unfreeze all.")
@click.option("--init-seed", type=int, default=D["init_seed"], show_default=True, help="Seed of --random-init.")
@click.option("--train-size", type=int, default=None, metavar="N",
              help="Train on N spectra of the train split (a seeded nested subset: the rows compare --train-sizes N "
                   "and pretrain --aux-labels N draw with the same seed); default: all.")
@click.option("--subset-seed", type=int, default=D["subset_seed"], show_default=True,
              help="Seed of the --train-size subset.")
@click.option("--dilation", type=int, default=None,
              help="Encoder dilation (default: YAML beside the checkpoint, the d<N> name token, else 1).")
@data_option()
@click.option("--layer", default=D["layer"], show_default=True, help="Encoder tap (enc_0..enc_N, enc_last).")
@click.option("--pool", default=D["pool"], show_default=True, help="Pooling of the tap.")
@click.option("--head", default=None,
              help="linear | mlp_1 | mlp_2 | attn (with --pool none: pools the live map; default mlp_1, or the "
                   "--init-head run's).")
@click.option("--target", "targets", multiple=True, required=True, help="Label to predict (repeatable).")
@click.option("--freeze-encoder", is_flag=True, help="Train the head only (the encoder stays as loaded).")
@click.option("--unfreeze", default=None, metavar="all|last:K",
              help="Encoder blocks to train: all the tap uses, or the last K of them (default: all).")
@click.option("--encoder-lr", type=float, default=D["encoder_lr"], show_default=True,
              help="AdamW learning rate of the encoder.")
@click.option("--batchnorm", type=click.Choice(BATCHNORM_MODES), default=D["batchnorm"], show_default=True,
              help="BatchNorm while the encoder trains: keep the pretrained running statistics, or normalise the "
                   "unfrozen blocks with batch statistics (and update theirs).")
@click.option("--scale-floor", type=float, default=D["scale_floor"], show_default=True,
              help="While the encoder trains, no feature column is scaled by less than this x the median "
                   "column std (near-constant channels would otherwise explode).")
@noise_options(D)
@train_noise_option(D["train_noise"])
@click.option("--direction", type=click.Choice(["forward", "reverse", "both"]), default=D["direction"],
              show_default=True, help="Taps of x, of x flipped (flipped back), or both on channels.")
@click.option("--init-head", type=click.Path(path_type=Path), default=None,
              help="Start the head (and its standardisation) from a `featcache fit` run directory.")
@split_role_options()
@recipe_options
@binning_options
@threads_option("encoder")
@click.option("--block-rows", type=int, default=D["block_rows"], show_default=True,
              help="Rows per HDF5 read (and shuffle block).")
@click.option("--eval-batch-size", type=int, default=D["eval_batch_size"], show_default=True,
              help="Spectra per forward in validation, test and the standardisation pass.")
@click.option("--hash", "hash_mode", type=click.Choice(["full", "sampled"]), default=D["hash"], show_default=True,
              help="Data identity that --resume checks: every byte of each file, or 8 sampled blocks.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")
@click.option("--overwrite", is_flag=True, help="Start again over an earlier run in --out.")
@click.option("--check-sync", is_flag=True, envvar="FEATCACHE_CHECK_SYNC",
              help="Debug: after every step, check that all ranks hold identical weights.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run directory (default reports/runs/e2e-<layer>-<pool>-<head>-<target>).")
@click.pass_context
def command(ctx: click.Context, ckpt: Path, random_init: bool, init_seed: int, train_size: int | None,
            subset_seed: int, dilation: int | None, data: tuple[str, ...], layer: str, pool: str,
            head: str | None, targets: tuple[str, ...], freeze_encoder: bool, unfreeze: str | None,
            encoder_lr: float, batchnorm: str, scale_floor: float, mask: str, noise: str, noise_level: float,
            noise_seed: int, train_noise: str, direction: str, init_head: Path | None, train_split: str,
            val_split: str, test_split: str, seed: int, max_epochs: int, batch_size: int, lr: float,
            weight_decay: float, patience: int, grad_clip: float, hidden: int, dropout: float, alphas: str | None,
            device: str, threads: int | None,
            block_rows: int, eval_batch_size: int, hash_mode: str, resume: bool, overwrite: bool,
            check_sync: bool, out: Path | None, bins: tuple[str, ...], giant_logg: float) -> None:
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
    from featcache.finetune.run import finetune
    from featcache.heads.binning import Binning

    if alphas:
        raise UserError("--alphas applies to ridge heads; finetune trains torch heads (linear, mlp_1, mlp_2, attn)")
    if out is None:
        out = Path("reports") / "runs" / f"e2e-{layer}-{pool}-{head or 'mlp_1'}-{'+'.join(targets)}"
    options = FinetuneOptions(
        ckpt=ckpt, random_init=random_init, init_seed=init_seed, train_size=train_size, subset_seed=subset_seed,
        data=list(data), targets=list(targets), out=out, layer=layer, pool=pool, head=head,
        hidden=hidden, dropout=dropout,
        recipe=make_recipe(seed, max_epochs, batch_size, lr, weight_decay, patience, grad_clip),
        unfreeze=resolve_unfreeze(freeze_encoder, unfreeze), encoder_lr=encoder_lr, batchnorm=batchnorm,
        scale_floor=scale_floor, noise=noise, train_noise=train_noise, noise_level=noise_level,
        noise_seed=noise_seed, mask=mask, direction=direction, dilation=dilation, init_head=init_head,
        train_split=train_split, val_split=val_split or None, test_split=test_split or None, block_rows=block_rows,
        eval_batch_size=eval_batch_size, hash=hash_mode, device=device, threads=threads,
        resume=resume, overwrite=overwrite,
        check_sync=check_sync, binning=Binning.parse(bins, giant_logg),
        command=command_line(), config=resolved_options(ctx), given=given_options(ctx, FIELDS))
    result = finetune(options)
    if result.rank == 0:
        echo_result(f"{result.summary()} -> {out} ({elapsed()} in all)")
