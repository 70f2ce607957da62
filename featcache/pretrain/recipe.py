"""How `featcache pretrain` trains, by name, with its defaults (defined here once; the CLI shows them).

'auto' picks the T1 loss and generated noise when the train file has clean flux, else E2 on the file's
stored noisy array. Fields in RESUME_FREE may change when resuming; the others must match the checkpoint's.
Torch-free, so the command line reads the defaults without importing torch.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..common.constraints import FRACTION, NON_NEGATIVE, POSITIVE, SEED, Interval, StrOptions, at_least, validate
from ..common.errors import FeatcacheError
from ..common.settings import Change, changes, format_changes

LOSSES = ("T1", "E1", "E2")
NOISE_SOURCES = ("generated", "stored")
TRAIN_NOISE = ("fresh", "fixed")
RESUME_FREE = ("max_epochs", "time_limit", "device", "save_every")
AUX_FIELDS = ("aux_targets", "aux_weight", "aux_labels", "aux_seed", "aux_tap", "aux_pool", "aux_hidden")
# spellings before 0.2, read from old checkpoints (and accepted, with a warning, from callers)
RENAMED = {"epochs": "max_epochs", "clip_grad": "grad_clip"}


@dataclass(frozen=True)
class PretrainRecipe:
    """Every knob of pretraining (the CLI's options by name)."""

    max_epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    loss: str = "auto"  # auto | T1 | E1 | E2
    noise: str = "auto"  # auto | generated | stored
    train_noise: str = "fresh"  # fresh: new draws every epoch | fixed: the same draw every epoch
    noise_level: float = 1.0
    seed: int = 0
    noise_seed: int | None = None  # None: the same as seed
    mask: str = "quantile:0.85"  # FILE.npy | quantile:R | none
    max_train: int | None = None  # the first N train rows
    max_val: int | None = None  # the first N val rows
    block_rows: int = 4096
    grad_clip: float = 1.0  # max gradient norm (0: no clipping)
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    min_lr: float = 1e-6
    time_limit: float | None = None  # minutes; stop after the epoch that passes it
    save_every: int | None = None  # also keep OUT-ep<E>.ckpt every this many epochs (probing over training)
    device: str = "auto"
    head_init: bool = True  # start mu_x and sigma_x at the data's flux level and spread (init_head)
    head_lr_mult: float = 10.0  # lr factor of the last BatchNorm (head_parameter_groups)
    # the auxiliary label loss (pretrain/auxiliary.py, docs/pretraining-aux.md): none without aux_targets
    aux_targets: tuple[str, ...] = ()  # labels a small head on the encoder predicts (log_g, T_eff, M_H)
    aux_weight: float = 1.0  # LAMBDA: the encoder minimises blind-spot loss + LAMBDA x MSE of standardised labels
    aux_labels: int | None = None  # train rows with labels: nested_subset(n_train, N, aux_seed); None: every row
    aux_seed: int = 0  # draws the labelled rows (compare's --subset-seed with --train-sizes N names the same rows)
    aux_tap: str = "enc_pre_latent"  # the encoder tap the auxiliary head reads
    aux_pool: str = "seg_mean_K8"  # and its pooling
    aux_hidden: int = 0  # 0: a linear head; H: Linear -> GELU -> Linear with H hidden units

    constraints = {"max_epochs": at_least(0), "batch_size": at_least(1), "lr": POSITIVE,
                   "noise_level": Interval(float, 0, None, closed="neither", text="a positive finite number"),
                   "block_rows": at_least(1), "save_every": (at_least(1), None), "max_train": (at_least(1), None),
                   "max_val": (at_least(1), None), "seed": SEED, "noise_seed": (SEED, None), "grad_clip": NON_NEGATIVE,
                   "plateau_factor": FRACTION, "loss": StrOptions(("auto", *LOSSES)),
                   "noise": StrOptions(("auto", *NOISE_SOURCES)), "train_noise": StrOptions(TRAIN_NOISE),
                   "aux_weight": NON_NEGATIVE, "aux_labels": (at_least(1), None), "aux_seed": SEED,
                   "aux_hidden": at_least(0)}
    flags = {"aux_targets": "--aux-target"}

    def __post_init__(self) -> None:
        if self.noise == "fresh":  # the spelling before 0.2
            warnings.warn("PretrainRecipe(noise='fresh') is deprecated: use noise='generated'", DeprecationWarning,
                          stacklevel=3)
            object.__setattr__(self, "noise", "generated")
        if isinstance(self.aux_targets, str):  # one name, not its letters
            object.__setattr__(self, "aux_targets", (self.aux_targets,))
        object.__setattr__(self, "aux_targets", tuple(self.aux_targets))  # a saved recipe holds a list

    @property
    def auxiliary(self) -> bool:
        """Whether the run has an auxiliary label loss (and a head saved beside the checkpoint)."""
        return bool(self.aux_targets)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def effective_noise_seed(self) -> int:
        return int(self.seed if self.noise_seed is None else self.noise_seed)

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> PretrainRecipe:
        """A recipe from a checkpoint's metadata, old spellings included (before 0.2 the noise was keyed by
        the seed, and generated noise was called 'fresh')."""
        values = {RENAMED.get(k, k): v for k, v in saved.items()}
        if values.get("noise") == "fresh":
            values["noise"] = "generated"
        values.setdefault("noise_seed", values.get("seed", 0))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def validate_recipe(recipe: PretrainRecipe) -> None:
    """Every check that needs no file: one line naming the option."""
    from ..spectra.mask import parse_mask_spec

    validate(recipe)
    parse_mask_spec(recipe.mask)
    if len(set(recipe.aux_targets)) != len(recipe.aux_targets):
        raise FeatcacheError(f"--aux-target: a label is given twice ({', '.join(recipe.aux_targets)})")
    if not recipe.auxiliary:
        defaults = PretrainRecipe()
        for name in AUX_FIELDS[1:]:
            if getattr(recipe, name) != getattr(defaults, name):
                raise FeatcacheError(f"--{name.replace('_', '-')} applies to the auxiliary loss: give --aux-target "
                                     "(log_g, T_eff, M_H, ...) too")


def recipe_differences(saved: PretrainRecipe, wanted: PretrainRecipe) -> str:
    """'lr 0.1 (saved 0.01); ...' for the settings a resume must keep (option spellings)."""
    found = [Change(c.path.replace("_", "-"), c.saved, c.wanted)
             for c in changes(saved.as_dict(), wanted.as_dict(), ignore=RESUME_FREE)]
    return format_changes(found, "{path} {wanted} (saved {saved})")
