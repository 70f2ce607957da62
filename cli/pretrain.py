"""`featcache pretrain`: train the full BlindspotModel1D with the original losses and write a checkpoint."""

from __future__ import annotations

import math

import click
from click.core import ParameterSource

from featcache.model.config import EncoderConfig
from featcache.pretrain.recipe import PretrainRecipe

from .common import command, echo_result
from .options import data_option, defaults, device_option, noise_options, train_noise_option

R, A = defaults(PretrainRecipe), defaults(EncoderConfig)
ARCH_OPTIONS = ("num_layers", "embed_dim", "kernel_size", "dilation", "use_bn", "input_sigma")
RECIPE_OPTIONS = tuple(R)
RENAMES = {("--epochs", None): ("--max-epochs", None), ("--clip-grad", None): ("--grad-clip", None),
           ("--noise", "fresh"): ("--noise", "generated")}


def _parse_data(values: tuple[str, ...]) -> dict[str, str]:
    """--data train=FILE (and val=FILE): the split grammar of every command; pretrain reads whole files."""
    from featcache.common.errors import FeatcacheError
    from featcache.spectra.splits import parse_split_specs

    splits: dict[str, str] = {}
    for spec in parse_split_specs(list(values)):
        if spec.name not in ("train", "val"):
            raise FeatcacheError(f"--data {spec.text}: unknown split '{spec.name}'; choose from: train, val")
        if spec.start is not None or spec.stop is not None:
            raise FeatcacheError(f"--data {spec.text}: pretrain reads whole files; use --max-train / --max-val "
                                 "for the first N rows")
        splits[spec.name] = str(spec.path)
    if "train" not in splits:
        raise FeatcacheError("--data train=FILE is required (and optionally --data val=FILE)")
    return splits


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
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")
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
    """
    import torch

    from featcache.common.device import configure_threads
    from featcache.common.errors import FeatcacheError
    from featcache.pretrain.files import load_resume_state, saved_settings
    from featcache.pretrain.run import pretrain

    splits = _parse_data(data)
    if resume and overwrite:
        raise FeatcacheError("--resume and --overwrite exclude each other")
    if threads is not None:
        configure_threads(torch.device("cpu"), threads)
    given = {name for name in options if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}
    if resume:
        saved_config, saved_recipe = saved_settings(load_resume_state(out))
        saved = {**saved_config.as_dict(), **saved_recipe.as_dict()}
        options = {k: (v if k in given else saved.get(k, v)) for k, v in options.items()}
    if isinstance(options.get("loss"), str):
        options["loss"] = str(options["loss"]).upper() if options["loss"] != "auto" else "auto"
    for name, value, why in EncoderConfig.problems({k: options[k] for k in ARCH_OPTIONS}):
        raise FeatcacheError(f"--{name.replace('_', '-')} {value}: {why}")
    config = EncoderConfig(**{k: options[k] for k in ARCH_OPTIONS})  # type: ignore[arg-type]
    recipe = PretrainRecipe(**{k: options[k] for k in RECIPE_OPTIONS})  # type: ignore[arg-type]
    result = pretrain(splits["train"], splits.get("val"), out, config, recipe, resume=resume,
                      overwrite=overwrite)
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
    echo_result(f"  beside it: {result.yaml_path.name}, {result.mask_path.name}, {result.log_path.name}")
