"""The search space: each hyper-parameter's choices, checked before a trial runs, and a trial's settings as the
architecture and recipe `pretrain` takes. Torch- and Optuna-free (the trial object only needs
`suggest_categorical`)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..common.errors import FeatcacheError
from ..model.config import EncoderConfig
from ..pretrain.recipe import PretrainRecipe, validate_recipe
from .options import ARCH_PARAMETERS, SPACE_PARAMETERS

NOT_FIXED = ("device", "time_limit", "save_every")  # how a trial runs, set by the search itself


def parse_choices(name: str, text: str) -> list[Any]:
    """'16,32' -> [16, 32] in the parameter's type (the command line's comma lists)."""
    kind = SPACE_PARAMETERS[name]
    out: list[Any] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            value = kind(part) if kind is not str else (part.upper() if name == "loss" else part)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise FeatcacheError(f"--{name.replace('_', '-')} {text}: '{part}' is not {what}") from None
        if value not in out:
            out.append(value)
    return out


def check_space(space: dict[str, list[Any]], pretrain: dict[str, Any]) -> None:
    """Every choice of every parameter, and the fixed settings, as pretrain would check them: one line naming the
    option and the value."""
    recipe_fields = {f.name for f in fields(PretrainRecipe)}
    for name in pretrain:
        if name not in recipe_fields:
            raise FeatcacheError(f"search: '{name}' is not a pretrain setting")
        if name in SPACE_PARAMETERS and name in space:
            raise FeatcacheError(f"search: '{name}' is both searched and fixed")
        if name in NOT_FIXED:
            raise FeatcacheError(f"search: '{name}' is set by the search for each trial")
    for name, choices in space.items():
        if name not in SPACE_PARAMETERS:
            raise FeatcacheError(f"search: cannot search '{name}'; the space takes {', '.join(SPACE_PARAMETERS)}")
        if not choices:
            raise FeatcacheError(f"--{name.replace('_', '-')}: no choices given")
    if "max_epochs" not in space and "max_epochs" not in pretrain:
        raise FeatcacheError("search: give --max-epochs (the epochs each trial pretrains)")
    if "aux_weight" in space and not pretrain.get("aux_targets"):
        raise FeatcacheError("--aux-weight choices need --aux-target (the labels the auxiliary loss predicts)")
    base = {k: v for k, v in pretrain.items() if k not in ARCH_PARAMETERS}
    for name, choices in space.items():
        for value in choices:
            if name in ARCH_PARAMETERS:
                for field_name, bad, why in EncoderConfig.problems({**EncoderConfig().as_dict(), name: value}):
                    raise FeatcacheError(f"--{field_name.replace('_', '-')} {bad}: {why}")
            else:
                validate_recipe(PretrainRecipe(**{**base, name: value}))
    validate_recipe(PretrainRecipe(**base))


def trial_settings(params: dict[str, Any], pretrain: dict[str, Any]) -> tuple[EncoderConfig, PretrainRecipe]:
    """A trial's architecture and recipe: its chosen parameters over the fixed settings, on the CPU."""
    values = {**pretrain, **params}
    arch = {k: values.pop(k) for k in ARCH_PARAMETERS if k in values}
    values.update(device="cpu")
    return EncoderConfig(**{**EncoderConfig().as_dict(), **arch}), PretrainRecipe(**values)


def suggest(trial: Any, space: dict[str, list[Any]]) -> dict[str, Any]:
    """The trial's choice of each parameter (Optuna's categorical distributions: a grid sampler enumerates them)."""
    return {name: trial.suggest_categorical(name, choices) for name, choices in space.items()}
