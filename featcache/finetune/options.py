"""What `featcache finetune` takes, by name, with its defaults (defined here once; the CLI shows them), and
the settings a --resume must match. Torch-free, so the command line reads the defaults without torch."""

from __future__ import annotations

import warnings
from collections.abc import Collection
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..common.constraints import POSITIVE, SEED, Interval, StrOptions, at_least, validate
from ..common.errors import FeatcacheError, choices_message
from ..common.resume import check_resume_policy, resumed_settings
from ..heads.binning import Binning
from ..heads.recipe import DEFAULT_DROPOUT, DEFAULT_HIDDEN, TrainRecipe
from ..model.taps import DIRECTIONS, PSEUDO_LAYERS

TRAIN_NOISE = ("fresh", "fixed")
BATCHNORM_MODES = ("eval", "train")
# options that may change on --resume; every other setting must match the checkpoint's
RESUME_FREE = ("max_epochs", "patience")


@dataclass
class FinetuneOptions:
    """Everything `featcache finetune` takes (the CLI options, by name)."""

    ckpt: Path
    data: list[str]
    targets: list[str]
    out: Path
    random_init: bool = False  # start from --ckpt's architecture freshly initialised (the supervised baseline)
    init_seed: int = 0  # the seed of that initialisation
    train_size: int | None = None  # train on N spectra of the train split: common.subsets.nested_subset
    subset_seed: int = 0  # (the rows pretrain --aux-labels N --aux-seed S and compare --train-sizes N draw)
    layer: str = "enc_pre_latent"
    pool: str = "seg_mean_K8"
    head: str | None = None  # None: mlp_1, or the --init-head run's head
    hidden: int = DEFAULT_HIDDEN
    dropout: float = DEFAULT_DROPOUT
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    unfreeze: str = "all"  # none (--freeze-encoder) | all | last:K
    encoder_lr: float = 1e-4
    batchnorm: str = "eval"  # eval: pretrained running statistics throughout | train: batch statistics
    scale_floor: float = 0.1  # trained encoder: feature scale >= this x the median column scale
    noise: str = "generated"  # generated | stored: where the noisy flux comes from (as extract's --noise)
    train_noise: str = "fresh"  # fresh: new draws every epoch | fixed: the extract noise (draw 0)
    noise_level: float = 1.0
    noise_seed: int = 42
    mask: str = "quantile:0.85"
    direction: str = "forward"
    dilation: int | None = None
    init_head: Path | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    test_split: str | None = "test"
    block_rows: int = 1024
    eval_batch_size: int = 256
    hash: str = "full"  # data identity for --resume: every byte (full) or sampled blocks
    device: str = "auto"
    threads: int | None = None  # CPU threads (None: this process's share of the cores; common.device)
    resume: bool = False
    overwrite: bool = False
    check_sync: bool = False
    n_boot: int = 1000
    binning: Binning = field(default_factory=Binning)  # binned.csv: given edges, giant / dwarf log_g
    progress: bool = True
    command: str = "featcache finetune"
    config: dict[str, Any] | None = None  # what config.yaml records (the CLI's resolved options)
    # the options the caller set (the CLI: those on its command line); on --resume the others are the
    # checkpoint's (common.resume: the one policy). None: every option counts as given
    given: Collection[str] | None = None

    constraints = {"train_noise": StrOptions(TRAIN_NOISE), "encoder_lr": POSITIVE,
                   "batchnorm": StrOptions(BATCHNORM_MODES), "scale_floor": Interval(float, 0, 1, closed="left"),
                   "block_rows": at_least(1), "eval_batch_size": at_least(1), "hash": StrOptions(("full", "sampled")),
                   "n_boot": at_least(0), "threads": (at_least(1), None), "init_seed": SEED,
                   "train_size": (at_least(1), None), "subset_seed": SEED}
    flags = {"n_boot": "n_boot"}

    def __post_init__(self) -> None:
        self.ckpt, self.out = Path(self.ckpt), Path(self.out)  # the Python API takes str paths too
        self.init_head = None if self.init_head is None else Path(self.init_head)
        self.data, self.targets = list(self.data), list(self.targets)
        if self.noise in TRAIN_NOISE:  # the spelling before 0.2: --noise fresh|fixed meant --train-noise
            warnings.warn(f"FinetuneOptions(noise={self.noise!r}) is deprecated: use train_noise={self.noise!r} "
                          "(noise now names the source, generated or stored, as in extract)",
                          DeprecationWarning, stacklevel=3)
            self.noise, self.train_noise = "generated", self.noise

    def as_dict(self) -> dict[str, Any]:
        """The options as plain data (config.yaml when called from Python)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("config", "progress", "given"):
                continue
            if isinstance(value, TrainRecipe):
                value = value.to_dict()
            elif isinstance(value, Binning):
                value = value.describe()
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out


def validate_options(opts: FinetuneOptions) -> None:
    """Every check that needs no file: one line naming the option, before anything is read or written."""
    from ..heads.registry import head_info, list_heads
    from ..model.pooling import get_pooling
    from ..spectra.inputs import NoiseSpec

    check_resume_policy(opts.resume, opts.overwrite)
    opts.recipe.validate()
    NoiseSpec(opts.noise, opts.noise_seed, opts.noise_level).validate()
    validate(opts)
    checks = [
        (opts.noise == "generated" or opts.train_noise == "fixed",
         "--noise stored is one fixed draw per spectrum: use it with --train-noise fixed"),
        (opts.direction in DIRECTIONS, "--direction: " + choices_message("direction", opts.direction, DIRECTIONS)),
        (bool(opts.targets), "give at least one --target"),
        (len(set(opts.targets)) == len(opts.targets), "--target: a label is given twice"),
    ]
    for ok, message in checks:
        if not ok:
            raise FeatcacheError(message)
    if opts.random_init and (opts.init_head is not None or opts.unfreeze == "none"):
        raise FeatcacheError("--random-init trains the encoder from its initialisation: give --unfreeze all (not "
                             "--freeze-encoder) and no --init-head")
    if opts.layer in PSEUDO_LAYERS:
        raise FeatcacheError(f"--layer {opts.layer}: an input pseudo-layer has no encoder to fine-tune; fit a head "
                             "on the cache instead (featcache fit)")
    if opts.head is not None and not head_info(opts.head).finetune:
        info = head_info(opts.head)
        why = ("finetune trains by gradient descent" if not info.trainable else
               "finetune trains with MSE, not the Gaussian NLL (fit it on cached features instead)")
        raise FeatcacheError(f"--head {opts.head}: {why}; choose one of "
                             + ", ".join(h for h in list_heads() if head_info(h).finetune))
    if opts.head is not None and head_info(opts.head).needs_map and opts.pool != "none":
        raise FeatcacheError(f"--head {opts.head} pools the live map over its positions: give --pool none (the "
                             f"flattened tap), not --pool {opts.pool}")
    get_pooling(opts.pool)


def parse_unfreeze(text: str, depth: int, layer: str = "") -> list[int]:
    """none -> [], all -> [0..depth], last:K -> the K deepest blocks the tap uses (depth-K+1..depth)."""
    value = str(text).strip().lower()
    n_blocks = depth + 1
    if value in ("none", "frozen"):
        return []
    if value == "all":
        return list(range(n_blocks))
    if value.startswith("last:"):
        count = value[5:]
        if not count.isdigit() or not 1 <= int(count) <= n_blocks:
            raise FeatcacheError(f"--unfreeze {text}: layer {layer or 'the tap'} uses {n_blocks} encoder blocks "
                                 f"(encoders.0..{depth}); K must be 1..{n_blocks}")
        return list(range(n_blocks - int(count), n_blocks))
    raise FeatcacheError(f"--unfreeze {text}: expected all or last:K (or --freeze-encoder)")


def describe_unfreeze(blocks: list[int]) -> str:
    if not blocks:
        return "encoder frozen"
    span = f"encoders.{blocks[0]}" if len(blocks) == 1 else f"encoders.{blocks[0]}-{blocks[-1]}"
    return f"training {span}"


def resume_settings(opts: FinetuneOptions, encoder_sha: str, unfrozen: list[int], head: str,
                    data: dict[str, Any]) -> dict[str, Any]:
    """What must match for --resume (plain data, so the checkpoint loads with weights_only=True). `data` is
    each split's file content identity and rows, so another file at the same path is never trained on."""
    recipe = {k: v for k, v in opts.recipe.to_dict().items() if k not in RESUME_FREE and k != "eval_batch_size"}
    return {"encoder_sha256": encoder_sha, "data": data, "layer": opts.layer, "pool": opts.pool,
            "head": head, "hidden": opts.hidden, "dropout": opts.dropout, "targets": list(opts.targets),
            "unfreeze": list(unfrozen), "encoder_lr": opts.encoder_lr, "noise": opts.noise,
            "train_noise": opts.train_noise,
            "batchnorm": opts.batchnorm if unfrozen else "eval", "scale_floor": opts.scale_floor if unfrozen else 0.0,
            "noise_level": opts.noise_level, "noise_seed": opts.noise_seed, "mask": opts.mask,
            "direction": opts.direction, "init_head": str(opts.init_head) if opts.init_head else None,
            "splits": [opts.train_split, opts.val_split, opts.test_split], "block_rows": opts.block_rows,
            "recipe": recipe, **({"random_init": opts.init_seed} if opts.random_init else {}),
            **({"train_size": opts.train_size, "subset_seed": opts.subset_seed} if opts.train_size else {})}


def upgrade_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """Settings saved before 0.2 called the train noise 'noise' (fresh|fixed): read them in today's words."""
    if saved.get("noise") in TRAIN_NOISE and "train_noise" not in saved:
        return {**saved, "noise": "generated", "train_noise": saved["noise"]}
    return saved


# options a --resume never takes from the checkpoint: where the run is, how it is run and reported
NOT_RESUMED = ("ckpt", "data", "out", "resume", "overwrite", "device", "threads", "check_sync", "progress", "command",
               "config", "binning", "n_boot", "given")


def resumed_options(opts: FinetuneOptions, saved: dict[str, Any] | None) -> FinetuneOptions:
    """The options of a --resume under the one resume policy (common.resume): each option given, or the
    checkpoint's (`saved`: the options its last.pt recorded; a checkpoint from before 0.2 recorded none, and
    then every option must match as given)."""
    if not opts.resume or opts.given is None or not saved:
        return opts
    current = {k: v for k, v in opts.as_dict().items() if k not in NOT_RESUMED}
    merged = resumed_settings({k: v for k, v in saved.items() if k not in NOT_RESUMED}, current, opts.given)
    recipe = resumed_settings(saved.get("recipe") or {}, opts.recipe.to_dict(), opts.given)
    merged["recipe"] = TrainRecipe(**recipe)
    return replace(opts, **merged)
