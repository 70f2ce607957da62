"""The hyper-parameter sweep of compare (`--hidden 128,256,512 --lr 1e-3,3e-4`): every trainable cell is fitted
once per setting, and the table keeps, per cell, the setting with the best mean validation R2 over seeds.

A setting is one value of each swept parameter. `hidden` and `dropout` are the head's (FitSpec), `lr` and
`weight_decay` the recipe's. The choice is made on the validation split only, separately for every cell and
every probing-study variant (a training size, a fold), so the test split never takes part; sweep.csv lists
every setting's validation R2 so the choice can be checked. Ridge cells are not swept (alpha is already
chosen on validation).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..common.errors import FeatcacheError
from ..heads.recipe import TrainRecipe
from .cells import Fit, Task

SWEEPABLE = {"hidden": int, "dropout": float, "lr": float, "weight_decay": float}
Setting = tuple[tuple[str, float], ...]  # (("hidden", 256), ("lr", 0.001)): sorted by name


def check_sweep(sweep: Mapping[str, Sequence[float]] | None) -> dict[str, list[float]]:
    """The swept parameters with their distinct values (a parameter with one value is no sweep)."""
    out: dict[str, list[float]] = {}
    for name, values in (sweep or {}).items():
        if name not in SWEEPABLE:
            raise FeatcacheError(f"sweep: '{name}' cannot be swept; choose from {', '.join(SWEEPABLE)}")
        kind = SWEEPABLE[name]
        distinct = list(dict.fromkeys(kind(v) for v in values))
        if not distinct:
            raise FeatcacheError(f"--{name.replace('_', '-')}: no values given")
        if name == "hidden" and min(distinct) < 1:
            raise FeatcacheError(f"--hidden {','.join(map(str, distinct))}: widths must be positive integers")
        if name == "dropout" and not all(0.0 <= v < 1.0 for v in distinct):
            raise FeatcacheError(f"--dropout {','.join(map(str, distinct))}: each value must be in [0, 1)")
        if name == "lr" and not all(math.isfinite(v) and v > 0 for v in distinct):
            raise FeatcacheError(f"--lr {','.join(map(str, distinct))}: expected positive finite numbers")
        if name == "weight_decay" and not all(math.isfinite(v) and v >= 0 for v in distinct):
            raise FeatcacheError(f"--weight-decay {','.join(map(str, distinct))}: expected non-negative finite numbers")
        if len(distinct) > 1:
            out[name] = distinct
    return out


def settings(sweep: Mapping[str, list[float]]) -> list[Setting]:
    """Every combination of the swept values ([()] without a sweep), in the order given."""
    names = sorted(sweep)
    return [tuple(zip(names, combo, strict=True)) for combo in itertools.product(*(sweep[n] for n in names))]


def apply(spec: dict[str, Any], recipe: TrainRecipe, setting: Setting) -> tuple[dict[str, Any], TrainRecipe]:
    """The FitSpec keywords and recipe of one setting."""
    values = dict(setting)
    spec = {**spec, **{k: values[k] for k in ("hidden", "dropout") if k in values}}
    recipe = replace(recipe, **{k: values[k] for k in ("lr", "weight_decay") if k in values})
    recipe.validate()
    return spec, recipe


def describe(setting: Setting) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in setting)


def _val_r2(group: list[Task], done: dict[str, Fit]) -> float:
    values = [done[t.key][0]["metrics"]["val"]["r2"] for t in group]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if len(finite) == len(values) else -math.inf


def choose(groups: list[list[Task]], done: dict[str, Fit]) -> tuple[list[list[Task]], list[dict[str, Any]]]:
    """Per cell (and study variant): the group of the setting with the best mean validation R2 (the first of
    equals, in setting order); and one row per setting for sweep.csv. Groups without a setting pass through."""
    by_cell: dict[tuple[Any, ...], list[list[Task]]] = {}
    for group in groups:
        first = group[0]
        cell = (first.target, str(first.source.path), first.encoder, first.kind, first.layer, first.pool,
                first.head, first.variant)
        by_cell.setdefault(cell, []).append(group)
    chosen, rows = [], []
    for candidates in by_cell.values():
        if len(candidates) == 1:
            chosen.append(candidates[0])
            continue
        scores = [_val_r2(g, done) for g in candidates]
        best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
        chosen.append(candidates[best])
        for i, (group, score) in enumerate(zip(candidates, scores, strict=True)):
            first = group[0]
            rows.append({"target": first.target, "encoder": first.encoder, "layer": first.layer, "pool": first.pool,
                         "head": first.head, "variant": ":".join(map(str, first.variant)) if first.variant else "",
                         **dict(first.setting), "setting": describe(first.setting), "seeds": len(group),
                         "val_r2": score, "chosen": i == best})
    return chosen, rows


def summary_lines(rows: list[dict[str, Any]], sweep: Mapping[str, list[float]]) -> list[str]:
    """compare.md's sweep section: what was swept and how often each setting won a cell (full data only)."""
    if not rows:
        return []
    full = [r for r in rows if not r["variant"]]
    wins: dict[str, int] = {}
    for row in full:
        wins.setdefault(row["setting"], 0)
        if row["chosen"]:
            wins[row["setting"]] += 1
    n_cells = sum(wins.values())
    swept = "; ".join(f"{k} {', '.join(f'{v:g}' for v in values)}" for k, values in sorted(sweep.items()))
    lines = ["## Hyper-parameter sweep", "",
             f"Swept {swept}: every trainable cell is fitted with each setting and shows the one with the best "
             "validation R2 (its `setting` column in compare.csv; every setting's validation R2 in sweep.csv).", "",
             "| setting | cells where it was chosen on validation |", "|---|---:|"]
    lines += [f"| {setting} | {count} of {n_cells} |" for setting, count in wins.items()]
    return lines + [""]
