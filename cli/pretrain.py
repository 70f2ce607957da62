"""`featcache pretrain`: train the full BlindspotModel1D with the original losses and write a checkpoint."""

from __future__ import annotations

import math

import click
from click.core import ParameterSource

from .common import command, echo_result

ARCH_OPTIONS = ("num_layers", "embed_dim", "kernel_size", "dilation", "use_bn", "input_sigma")
RECIPE_OPTIONS = ("epochs", "batch_size", "lr", "loss", "noise", "noise_level", "seed", "mask", "max_train",
                  "max_val", "block_rows", "clip_grad", "plateau_factor", "plateau_patience", "min_lr",
                  "time_limit", "device", "head_init", "head_lr_mult")


def _parse_data(values: tuple[str, ...]) -> dict[str, str]:
    from featcache.errors import FeatcacheError

    splits: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not path:
            raise FeatcacheError(f"--data {value}: expected SPLIT=FILE, e.g. --data train=train.h5")
        if name not in ("train", "val"):
            raise FeatcacheError(f"--data {value}: unknown split '{name}'; choose from: train, val")
        if name in splits:
            raise FeatcacheError(f"--data {name}= given twice")
        splits[name] = path
    if "train" not in splits:
        raise FeatcacheError("--data train=FILE is required (and optionally --data val=FILE)")
    return splits


@command("pretrain", short_help="Train the blind-spot denoiser; write an encoder checkpoint.")
@click.option("--data", "data", multiple=True, required=True, metavar="SPLIT=FILE",
              help="train=FILE.h5 (required) and val=FILE.h5 (validation loss and reconstruction S/N).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write (.ckpt); YAML, <stem>.mask.npy and <stem>.log.csv go beside it.")
@click.option("--num-layers", type=int, default=9, show_default=True, help="Encoder depth.")
@click.option("--embed-dim", type=int, default=48, show_default=True, help="Channels of every hidden block.")
@click.option("--kernel-size", type=int, default=25, show_default=True, help="Conv kernel width.")
@click.option("--dilation", type=int, default=1, show_default=True, help="Dilation of encoder blocks 1..L.")
@click.option("--use-bn/--no-bn", default=True, show_default=True, help="BatchNorm after each conv.")
@click.option("--input-sigma/--no-input-sigma", default=True, show_default=True,
              help="Give the model error x noise_level as a second input channel.")
@click.option("--epochs", type=int, default=10, show_default=True, help="Total epochs (also when resuming).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--loss", type=click.Choice(["auto", "T1", "E1", "E2"], case_sensitive=False), default="auto",
              show_default=True, help="T1: denoised vs clean flux (auto when the file has clean flux); "
                                      "E1/E2: self-supervised Laplace/Gaussian NLL on the noisy input.")
@click.option("--noise", type=click.Choice(["auto", "fresh", "stored"]), default="auto", show_default=True,
              help="fresh: flux + new noise each epoch (auto with clean flux); stored: the file's noisy array.")
@click.option("--noise-level", type=float, default=1.0, show_default=True, help="noise = eps x error x level.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Initialisation, shuffling and noise (keyed by seed, epoch, spectrum).")
@click.option("--mask", default="quantile:0.85", show_default=True,
              help="FILE.npy | quantile:R (from the train errors) | none.")
@click.option("--max-train", type=int, default=None, help="Train on the first N spectra only.")
@click.option("--max-val", type=int, default=None, help="Validate on the first N spectra only.")
@click.option("--block-rows", type=int, default=4096, show_default=True,
              help="Rows read from HDF5 at a time (shuffled by block, then within).")
@click.option("--clip-grad", type=float, default=1.0, show_default=True, help="Max gradient norm (0: off).")
@click.option("--plateau-factor", type=float, default=0.5, show_default=True,
              help="LR factor when the validation loss plateaus.")
@click.option("--plateau-patience", type=int, default=3, show_default=True, help="Epochs without improvement.")
@click.option("--min-lr", type=float, default=1e-6, show_default=True)
@click.option("--time-limit", type=float, default=None, metavar="MINUTES",
              help="Stop cleanly after the epoch that passes this many minutes (continue with --resume).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--head-init/--no-head-init", default=True, show_default=True,
              help="Start mu_x at the train flux level and sigma_x at its spread (the last BatchNorm's scale "
                   "and bias) instead of softplus(0); saves thousands of early steps.")
@click.option("--head-lr-mult", type=float, default=10.0, show_default=True,
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
          --out data/encoders/demo-l9e16k9s1bn1d1.ckpt --embed-dim 16 --kernel-size 9 --epochs 20
      featcache pretrain ... --out ENC.ckpt --resume --epochs 40
    """
    import torch

    from featcache.encoder import EncoderConfig
    from featcache.errors import FeatcacheError
    from featcache.pretrain import PretrainRecipe, load_resume_state, pretrain, saved_settings

    splits = _parse_data(data)
    if resume and overwrite:
        raise FeatcacheError("--resume and --overwrite exclude each other")
    if threads is not None:
        if threads < 1:
            raise FeatcacheError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    given = {name for name in options if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}
    if resume:
        saved_config, saved_recipe = saved_settings(load_resume_state(out))
        saved = {**saved_config.as_dict(), **saved_recipe.as_dict()}
        options = {k: (v if k in given else saved.get(k, v)) for k, v in options.items()}
    if isinstance(options.get("loss"), str):
        options["loss"] = str(options["loss"]).upper() if options["loss"] != "auto" else "auto"
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
