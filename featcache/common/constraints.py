"""Declared parameter constraints and the one place their messages are written (scikit-learn's
`_parameter_constraints` with `Interval` and `StrOptions` is the model).

An options object declares `constraints = {"field": (Interval(int, 1, None, closed="left"), None), ...}`;
`validate(obj)` checks every declared field and raises one FeatcacheError naming the option (its flag) and
what it expected. Torch-free.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import FeatcacheError, choices_message

SEED_MAX = 2**63 - 1  # seeds of noise, shuffles and initialisation, in every command: torch.manual_seed, numpy's
# SeedSequence and the int64 columns that record them take non-negative 64-bit signed integers


@dataclass(frozen=True)
class Interval:
    """A real or integral interval; None leaves a side open to infinity. closed: left | right | both | neither."""

    kind: type
    left: float | None
    right: float | None
    closed: str = "both"
    text: str | None = None  # how the message words it, where the plain bound reads worse ("at least 1")

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        value = float(value)
        if not math.isfinite(value):  # NaN and infinities are never a setting
            return False
        left_ok = self.left is None or value > self.left or (value == self.left and self.closed in ("left", "both"))
        right_ok = (self.right is None or value < self.right
                    or (value == self.right and self.closed in ("right", "both")))
        return left_ok and right_ok

    def describe(self) -> str:
        if self.text:
            return self.text
        whole = "an integer " if self.kind is int and self.left is not None and self.right is not None else ""
        if self.right is None and self.left is not None:
            if self.left == 0 and self.closed in ("right", "neither"):
                return "positive"
            return f">= {_number(self.left)}" if self.closed in ("left", "both") else f"> {_number(self.left)}"
        if self.left is None and self.right is not None:
            return f"<= {_number(self.right)}" if self.closed in ("right", "both") else f"< {_number(self.right)}"
        lo = "[" if self.closed in ("left", "both") else "("
        hi = "]" if self.closed in ("right", "both") else ")"
        return f"{whole}in {lo}{_number(self.left)}, {_number(self.right)}{hi}"


@dataclass(frozen=True)
class StrOptions:
    """One of a fixed set of strings."""

    options: tuple[str, ...]
    noun: str | None = None  # set: the message lists the choices ("--direction: unknown direction 'x'; choose ...")

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.options

    def describe(self) -> str:
        names = list(self.options)
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


SEED = Interval(int, 0, SEED_MAX, text="an integer in 0..2**63-1")
POSITIVE = Interval(float, 0, None, closed="neither")
NON_NEGATIVE = Interval(float, 0, None, closed="left")
FRACTION = Interval(float, 0, 1, closed="neither")  # strictly between 0 and 1


def at_least(n: int) -> Interval:
    """An integer >= n."""
    return Interval(int, n, None, closed="left")


def _number(value: float | None) -> str:
    return "inf" if value is None else (str(int(value)) if float(value).is_integer() else f"{value:g}")


def _alternatives(constraint: Any) -> list[Any]:
    return list(constraint) if isinstance(constraint, tuple | list) else [constraint]


def check(name: str, value: Any, constraint: Any) -> Any:
    """Raise the one-line error for `name` when `value` meets none of the constraint's alternatives (None
    among them admits None); return the value."""
    alternatives = _alternatives(constraint)
    if value is None and None in alternatives:
        return value
    concrete = [c for c in alternatives if c is not None]
    if any(c.accepts(value) for c in concrete):
        return value
    if concrete and all(isinstance(c, StrOptions) for c in concrete):
        allowed = StrOptions(tuple(o for c in concrete for o in c.options))
        noun = next((c.noun for c in concrete if c.noun), None)
        if noun:
            raise FeatcacheError(f"{name}: " + choices_message(noun, value, allowed.options))
        raise FeatcacheError(f"{name} {value}: expected {allowed.describe()}")
    raise FeatcacheError(f"{name} must be {' or '.join(c.describe() for c in concrete)}, got {value}")


def validate(obj: Any, constraints: Mapping[str, Any] | None = None, flags: Mapping[str, str] | None = None) -> None:
    """Check every declared field of an options object (`obj.constraints` unless given); the message names
    the field's command-line flag (`obj.flags` or --field-name)."""
    constraints = constraints if constraints is not None else getattr(obj, "constraints", {})
    flags = flags if flags is not None else getattr(obj, "flags", {})
    for field_name, constraint in constraints.items():
        check(flags.get(field_name, "--" + field_name.replace("_", "-")), getattr(obj, field_name), constraint)


def check_each(name: str, values: Iterable[Any], constraint: Any) -> None:
    """Every item of a list option meets the constraint."""
    for value in values:
        check(name, value, constraint)
