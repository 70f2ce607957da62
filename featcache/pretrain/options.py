"""What `featcache pretrain` takes, as one options object (the CLI's options by name): the --data splits, the
checkpoint to write, the architecture (EncoderConfig), the recipe (PretrainRecipe) and how to treat an earlier
run. Torch-free, so the command line reads it without importing torch."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.constraints import at_least, validate
from ..common.resume import check_resume_policy, resumed_settings
from ..model.config import EncoderConfig
from .recipe import PretrainRecipe

SPLITS = ("train", "val")  # pretrain's --data names: train (required) and val


@dataclass
class PretrainOptions:
    """Everything `featcache pretrain` takes. given: the architecture and recipe settings the caller set (the
    CLI: the options on its command line); on --resume the others are the checkpoint's (common.resume).
    None: every setting counts as given."""

    data: list[str]
    out: Path
    config: EncoderConfig = field(default_factory=EncoderConfig)
    recipe: PretrainRecipe = field(default_factory=PretrainRecipe)
    resume: bool = False
    overwrite: bool = False
    threads: int | None = None
    given: Collection[str] | None = None

    constraints = {"threads": (at_least(1), None)}

    def __post_init__(self) -> None:
        self.out, self.data = Path(self.out), list(self.data)

    def validate(self) -> PretrainOptions:
        check_resume_policy(self.resume, self.overwrite)
        validate(self)
        return self


ARCH_OPTIONS = ("num_layers", "embed_dim", "kernel_size", "dilation", "use_bn", "input_sigma")


def pretrain_options(data: list[str], out: str | Path, values: dict[str, Any], *, resume: bool = False,
                     overwrite: bool = False, threads: int | None = None,
                     given: Collection[str] | None = None) -> PretrainOptions:
    """PretrainOptions from flat values by option name (the command line's: architecture and recipe side by
    side). On --resume the settings not given are the checkpoint's (common.resume: the one policy); the
    architecture is checked with the options' spellings (--kernel-size 4: must be odd)."""
    from ..common.errors import FeatcacheError

    check_resume_policy(resume, overwrite)
    values = dict(values)
    if resume and given is not None:
        from .files import load_resume_state, saved_settings

        saved_config, saved_recipe = saved_settings(load_resume_state(out))
        values = resumed_settings({**saved_config.as_dict(), **saved_recipe.as_dict()}, values, given)
    if isinstance(values.get("loss"), str) and values["loss"] != "auto":
        values["loss"] = values["loss"].upper()
    arch = {k: values.pop(k) for k in ARCH_OPTIONS if k in values}
    for name, value, why in EncoderConfig.problems(arch):
        raise FeatcacheError(f"--{name.replace('_', '-')} {value}: {why}")
    return PretrainOptions(data, Path(out), EncoderConfig(**arch), PretrainRecipe(**values), resume, overwrite,
                           threads, given).validate()
