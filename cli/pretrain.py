"""`featcache pretrain`: train the full BlindspotModel1D with the original losses and write a checkpoint."""

from __future__ import annotations

import math

import click

from featcache.model.config import EncoderConfig
from featcache.pretrain.recipe import PretrainRecipe

from .common import command, echo_result, given_options
from .options import data_option, defaults, device_option, noise_options, threads_option, train_noise_option

R, A = defaults(PretrainRecipe), defaults(EncoderConfig)
RENAMES = {("--epochs", None): ("--max-epochs", None), ("--clip-grad", None): ("--grad-clip", None),
           ("--noise", "fresh"): ("--noise", "generated")}


@command("pretrain", renames=RENAMES, short_help="Train the blind-spot denoiser; write an encoder checkpoint.")
@data_option("train=FILE.h5 (required) and val=FILE.h5 (validation loss and reconstruction S/N).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write (.ckpt); YAML, <stem>.mask.npy and <stem>.log.csv go beside it.")
@click.option("--num-layers", type=int, default=A["num_layers"], show_default=True, help="Encoder depth.")
@click.option("--embed-dim", type=int, default=A["embed_dim"], show_default=True,
              help="Channels of every hidden block.")
@click.option("--kernel-size", type=int, default=A["kernel_size"], show_default=True, help="Conv kernel width.")
@click.option("--dilation", type=int, default=A["dilation"], show_default=True,
              help="Dilation of encoder blocks 1..L.")
@click.option("--use-bn/--no-bn", default=A["use_bn"], show_default=True, help="BatchNorm after each conv.")
@click.option("--input-sigma/--no-input-sigma", default=A["input_sigma"], show_default=True,
              help="Give the model error x noise_level as a second input channel.")
@click.option("--max-epochs", type=int, default=R["max_epochs"], show_default=True,
              help="Epochs in total (also when resuming); a --time-limit may stop sooner.")
@click.option("--batch-size", type=int, default=R["batch_size"], show_default=True, help="Spectra per step.")
@click.option("--lr", type=float, default=R["lr"], show_default=True, help="Adam learning rate.")
@click.option("--loss", type=click.Choice(["auto", "T1", "E1", "E2"], case_sensitive=False), default=R["loss"],
              show_default=True, help="T1: denoised vs clean flux (auto when the file has clean flux); "
                                      "E1/E2: self-supervised Laplace/Gaussian NLL on the noisy input.")
@noise_options(R, sources=("auto", "generated", "stored"))
@train_noise_option(R["train_noise"])
@click.option("--seed", type=int, default=R["seed"], show_default=True,
              help="Seed of initialisation and shuffling (and of the noise unless --noise-seed).")
@click.option("--max-train", type=int, default=None, help="Train on the first N spectra only.")
@click.option("--max-val", type=int, default=None, help="Validate on the first N spectra only.")
@click.option("--block-rows", type=int, default=R["block_rows"], show_default=True,
              help="Rows read from HDF5 at a time (shuffled by block, then within).")
@click.option("--grad-clip", type=float, default=R["grad_clip"], show_default=True,
              help="Gradient norm clip (0: off).")
@click.option("--plateau-factor", type=float, default=R["plateau_factor"], show_default=True,
              help="LR factor when the validation loss plateaus.")
@click.option("--plateau-patience", type=int, default=R["plateau_patience"], show_default=True,
              help="Epochs without improvement.")
@click.option("--min-lr", type=float, default=R["min_lr"], show_default=True)
@click.option("--time-limit", type=float, default=None, metavar="MINUTES",
              help="Stop cleanly after the epoch that passes this many minutes (continue with --resume).")
@click.option("--save-every", type=int, default=None, metavar="EPOCHS",
              help="Also keep OUT-ep<E>.ckpt (with its YAML) every this many epochs, for probing the encoder "
                   "over its training (featcache compare --cache ep10=... --cache ep20=...).")
@device_option(R["device"])
@click.option("--head-init/--no-head-init", default=R["head_init"], show_default=True,
              help="Start mu_x at the train flux level and sigma_x at its spread (the last BatchNorm's scale "
                   "and bias) instead of softplus(0); saves thousands of early steps.")
@click.option("--head-lr-mult", type=float, default=R["head_lr_mult"], show_default=True,
              help="LR factor of the head's last BatchNorm (its outputs sit on LeakyReLU's 0.1 slope).")
@threads_option("encoder")
@click.option("--aux-target", "aux_targets", multiple=True, metavar="LABEL",
              help="Add an auxiliary loss: a small head on --aux-tap predicts this label (repeatable: log_g, T_eff, "
                   "M_H) of the labelled train rows; validation and test labels are never read.")
@click.option("--aux-weight", type=float, default=R["aux_weight"], show_default=True, metavar="LAMBDA",
              help="Loss = blind-spot loss + LAMBDA x MSE of the standardised labels (0: the head only watches).")
@click.option("--aux-labels", type=int, default=None, metavar="N",
              help="Only N train rows have labels (a seeded nested subset, recorded beside the checkpoint; "
                   "compare --train-sizes N --subset-seed S names the same rows); default: every train row.")
@click.option("--aux-seed", type=int, default=R["aux_seed"], show_default=True,
              help="Seed that draws the --aux-labels rows.")
@click.option("--aux-tap", default=R["aux_tap"], show_default=True, help="Encoder tap the auxiliary head reads.")
@click.option("--aux-pool", default=R["aux_pool"], show_default=True, help="Pooling of that tap.")
@click.option("--aux-hidden", type=int, default=R["aux_hidden"], show_default=True,
              help="Hidden units of the auxiliary head (0: linear).")
@click.option("--resume", is_flag=True, help="Continue from --out's last epoch; options not given are taken "
                                             "from it, options given must match it.")
@click.option("--overwrite", is_flag=True, help="Start again even if --out exists.")
@click.pass_context
def command(ctx: click.Context, data: tuple[str, ...], out: str, threads: int | None, resume: bool,
            overwrite: bool, **options: object) -> None:
    """Train BlindspotModel1D on a pfsspec file and write ENC.ckpt in the original layout.

    \b
    Example:
      featcache pretrain --data train=data/synth/train.h5 --data val=data/synth/val.h5 \\
          --out encoders/demo.ckpt --embed-dim 16 --kernel-size 9 --max-epochs 20
      featcache pretrain ... --out ENC.ckpt --resume --max-epochs 40
      featcache pretrain ... --aux-target log_g --aux-weight 0.1 --aux-labels 2000
    """
    from featcache.pretrain.options import pretrain_options
    from featcache.pretrain.run import run_pretrain

    result = run_pretrain(pretrain_options(list(data), out, options, resume=resume, overwrite=overwrite,
                                           threads=threads, given=given_options(ctx)))
    last = result.last
    line = (f"wrote {result.path} ({result.config.tag}, {result.epochs_done} epochs, {result.global_step} steps, "
            f"loss {result.recipe.loss}, {result.seconds / 60:.1f} min")
    if result.stopped == "time-limit":
        line += ", stopped at the time limit"
    line += ")"
    if last and math.isfinite(last.get("val_snr_denoised", math.nan)):
        line += (f": val S/N {last['val_snr_noisy']:.2f} -> {last['val_snr_denoised']:.2f} "
                 f"({last['val_snr_denoised'] / last['val_snr_noisy']:.2f}x)")
    echo_result(line)
    beside = [result.yaml_path.name, result.mask_path.name, result.log_path.name]
    if result.aux_path is not None:
        beside.append(f"{result.aux_path.name} (the auxiliary head and its labelled rows)")
    echo_result(f"  beside it: {', '.join(beside)}")
