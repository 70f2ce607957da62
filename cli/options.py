"""Option groups several commands share, spelled once: the same option name means the same thing in every
command, and its default comes from the library (the dataclass that takes it), shown in --help."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import click

from featcache.common.device import DEVICE_HELP, THREADS_HELP
from featcache.common.errors import FeatcacheError

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def defaults(cls: type) -> dict[str, Any]:
    """The default of every field of a library dataclass (what the CLI shows and passes on)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def stack(*options: Decorator) -> Decorator:
    """Apply several click options in the order they are listed (as --help shows them)."""

    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


def data_option(help_text: str = "A split: name, pfsspec HDF5 file, optional row slice. Repeat for "
                                 "train/val/test.") -> Decorator:
    return click.option("--data", "data", multiple=True, metavar="NAME=FILE[:START:STOP]", required=True,
                        help=help_text)


def device_option(default: str = "auto") -> Decorator:
    return click.option("--device", default=default, show_default=True, help=DEVICE_HELP + ".")


def threads_option(workload: str) -> Decorator:
    """--threads N: this process's CPU threads (torch and BLAS), by default the workload's
    (common.device.WORKLOAD_THREADS: one per head-fitting process, every core for the encoder's work)."""
    return click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                        help=THREADS_HELP[workload] + ".")


def noise_options(values: dict[str, Any], sources: tuple[str, ...] = ("generated", "stored")) -> Decorator:
    """--mask, --noise (where the noisy flux comes from), --noise-level, --noise-seed."""
    return stack(
        click.option("--mask", default=values["mask"], show_default=True,
                     help="FILE.npy | quantile:R (from the first split's errors) | none."),
        click.option("--noise", type=click.Choice(sources), default=values["noise"], show_default=True,
                     help="Where the noisy flux comes from: generated (flux + eps x error x level, eps keyed by "
                          "noise seed and spectrum) or the file's stored 'noisy' array"
                          + ("; auto: generated when the file has clean flux." if "auto" in sources else ".")),
        click.option("--noise-level", type=float, default=values["noise_level"], show_default=True,
                     help="noisy = flux + eps x error x level (generated noise)."),
        click.option("--noise-seed", type=int, default=values["noise_seed"],
                     show_default=values["noise_seed"] is not None,
                     help="Seed of the per-spectrum noise" + (" (default: --seed)." if values["noise_seed"] is None
                                                              else ".")),
    )


def train_noise_option(default: str) -> Decorator:
    return click.option("--train-noise", type=click.Choice(["fresh", "fixed"]), default=default, show_default=True,
                        help="Noise of the train rows: new draws every epoch, or the same draw (the extract "
                             "noise, draw 0) every epoch. Validation and test always use draw 0.")


def split_role_options(test_help: str = "Scored once at the end ('' to skip).") -> Decorator:
    return stack(
        click.option("--train-split", default="train", show_default=True),
        click.option("--val-split", default="val", show_default=True,
                     help="Chooses alpha / epochs and early stopping (never test)."),
        click.option("--test-split", default="test", show_default=True, help=test_help),
    )


class NumberList(click.ParamType):
    """A comma-separated list of numbers (compare's sweepable options: --hidden 128,256,512)."""

    name = "N1,N2,..."

    def __init__(self, kind: type) -> None:
        self.kind = kind

    def convert(self, value: Any, param: Any, ctx: Any) -> list[Any]:
        if isinstance(value, list | tuple):  # a --config YAML list
            items = [str(v).strip() for v in value]
        else:
            items = [t.strip() for t in str(value).split(",") if t.strip()]
        try:
            numbers = [self.kind(float(t)) if self.kind is int else self.kind(t) for t in items]
        except ValueError:
            numbers = []
        if not items or not numbers or (self.kind is int and any(float(t) != int(float(t)) for t in items)):
            self.fail(f"{value!r}: expected a comma-separated list of {'whole ' if self.kind is int else ''}numbers",
                      param, ctx)
        return numbers


def recipe_options(func: Callable[..., Any] | None = None, *, sweep: bool = False) -> Any:
    """The torch heads' training recipe (heads.recipe.TrainRecipe), shared by fit, compare and finetune.
    sweep=True (compare): --hidden, --dropout, --lr and --weight-decay take comma-separated lists."""
    if func is None:
        return lambda f: recipe_options(f, sweep=sweep)
    from featcache.heads.recipe import DEFAULT_DROPOUT, DEFAULT_HIDDEN, TrainRecipe

    d = defaults(TrainRecipe)
    many = " Comma-separated values are swept (best on validation per cell)." if sweep else ""
    ints, floats = (NumberList(int), NumberList(float)) if sweep else (int, float)
    return stack(
        click.option("--seed", type=int, default=d["seed"], show_default=True,
                     help="Seed of initialisation, shuffling and dropout."),
        click.option("--max-epochs", type=int, default=d["max_epochs"], show_default=True,
                     help="At most this many epochs (early stopping may stop sooner)."),
        click.option("--batch-size", type=int, default=d["batch_size"], show_default=True,
                     help="Rows per optimiser step."),
        click.option("--lr", type=floats, default=d["lr"], show_default=True,
                     help="AdamW learning rate of the head." + many),
        click.option("--weight-decay", type=floats, default=d["weight_decay"], show_default=True,
                     help="AdamW weight decay." + many),
        click.option("--patience", type=int, default=d["patience"], show_default=True,
                     help="Early stopping: epochs without a better validation R2."),
        click.option("--grad-clip", type=float, default=d["grad_clip"], show_default=True,
                     help="Gradient norm clip (0: off)."),
        click.option("--hidden", type=ints, default=DEFAULT_HIDDEN, show_default=True,
                     help="Hidden width of mlp heads." + many),
        click.option("--dropout", type=floats, default=DEFAULT_DROPOUT, show_default=True,
                     help="Dropout of mlp heads." + many),
        click.option("--alphas", default=None,
                     help="Ridge alphas relative to n_train, comma-separated (default: 21 values 1e-4..1e6)."),
        device_option(),
    )(func)


def head_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options of particular heads (fit and compare): the kNN grid and weighting, attention heads."""
    from featcache.heads.recipe import DEFAULT_ATTN_HEADS, KNN_WEIGHTS

    return stack(
        click.option("--knn-k", "knn_k", default=None, metavar="K1,K2,...",
                     help="knn: the k values validation R2 chooses from (default 1,2,4,...,256)."),
        click.option("--knn-weights", type=click.Choice(KNN_WEIGHTS), default="uniform", show_default=True,
                     help="knn: uniform (mean of the k targets) or distance (weights 1/d)."),
        click.option("--attn-heads", type=click.IntRange(min=1), default=DEFAULT_ATTN_HEADS, show_default=True,
                     help="attn: attention heads pooling the --pool none map."),
        click.option("--max-memory", "max_memory", default=None, metavar="SIZE",
                     help="Torch heads and knn: when a fit's features (loaded and standardised) would exceed "
                          "SIZE (e.g. 1GB, 512MB, 25%), the train rows stay in the cache: torch heads stream them "
                          "in shuffled chunk windows, knn searches them block by block (default: half the RAM "
                          "available)."),
    )(func)


HEAD_OPTION_PARAMS = ("knn_k", "knn_weights", "attn_heads")  # the click parameters head_options adds


def head_option_values(values: dict[str, Any]) -> dict[str, Any]:
    """FitSpec.options from the head options' click values, each parsed as its head's entry says (the entries'
    schemas: heads.registry.head_option_schema; tests hold this group to them)."""
    from featcache.heads.registry import head_option_schema

    out = {}
    for option in head_option_schema():
        value = values[option.dest or option.name]
        out[option.name] = option.parse(value) if option.parse is not None else value
    return out


def parse_max_memory(value: str | None) -> int:
    """--max-memory SIZE in bytes, once (checked now, so a bad value fails before any work; None: half the RAM
    available now): every fit of the command, and every --jobs worker, has this one budget."""
    from featcache.heads.streaming import parse_memory

    return parse_memory(value)


def make_recipe(seed: int, max_epochs: int, batch_size: int, lr: float, weight_decay: float, patience: int,
                grad_clip: float) -> Any:
    from featcache.heads.recipe import TrainRecipe

    recipe = TrainRecipe(lr=lr, weight_decay=weight_decay, batch_size=batch_size, max_epochs=max_epochs,
                         patience=patience, grad_clip=grad_clip or None, seed=seed)
    recipe.validate()
    return recipe


def binning_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--bins AXIS=E1,E2,... and --giant-logg: how binned.csv and the per-population report bin residuals."""
    from featcache.heads.binning import GIANT_LOGG

    return stack(
        click.option("--bins", "bins", multiple=True, metavar="AXIS=E1,E2,...",
                     help="Bin edges for one axis of binned.csv and the per-population report (repeatable, e.g. "
                          "snr=0,3,10,100 or log_g=0,2,3.5,5); other axes get equal-count quantile bins of at "
                          "least 50 test spectra."),
        click.option("--giant-logg", type=float, default=GIANT_LOGG, show_default=True,
                     help="Giants have log_g below this (dex), dwarfs at or above it."),
    )(func)


def parse_sizes(text: str) -> list[int]:
    """--train-sizes 500,2000,10000 (k and M suffixes welcome: 10k, 0.1M)."""
    sizes = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        scale = {"k": 1_000, "m": 1_000_000}.get(item[-1].lower(), 1)
        try:
            value = float(item[:-1] if scale > 1 else item) * scale
        except ValueError:
            raise FeatcacheError(f"--train-sizes {text}: '{item}' is not a number of spectra") from None
        if not math.isfinite(value) or value < 1 or value != int(value):
            raise FeatcacheError(f"--train-sizes {text}: '{item}' is not a positive whole number of spectra")
        sizes.append(int(value))
    return sizes


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """--shard I/N, 0 <= I < N (a Slurm job array's $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT):
    extract's rows and compare's fits alike."""
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise FeatcacheError(f"--shard {text}: expected I/N with 0 <= I < N, e.g. --shard 0/4")
    return int(match.group(1)), int(match.group(2))


def parse_alphas(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise FeatcacheError(f"--alphas {text}: expected comma-separated numbers, e.g. 1e-3,1e-2,1e-1") from None
