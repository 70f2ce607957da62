"""What differs between saved settings and requested ones: one comparison for every 'resume or refuse'.

A cache's fingerprint parts, a fine-tuning checkpoint's settings and a pretraining recipe are all nested
dicts of plain values; `changes` walks two of them and lists every leaf that differs, by dotted path.
Callers word the list for their users (`format_changes`), so the messages say what changed, from what to what.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MISSING = object()


@dataclass(frozen=True)
class Change:
    """One setting that differs: its dotted path, the saved value and the requested one (MISSING if absent)."""

    path: str
    saved: Any
    wanted: Any

    @property
    def key(self) -> str:
        return self.path.split(".")[0]


def changes(saved: dict[str, Any], wanted: dict[str, Any], *, ignore: Iterable[str] = (),
            prefix: str = "") -> list[Change]:
    """Every leaf that differs between two nested dicts, in sorted key order; `ignore` names dotted paths
    (or top keys) that may differ."""
    skip = set(ignore)
    out: list[Change] = []
    for key in sorted(set(saved) | set(wanted), key=str):
        path = f"{prefix}{key}"
        if path in skip:
            continue
        a, b = saved.get(key, MISSING), wanted.get(key, MISSING)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changes(a, b, ignore=skip, prefix=f"{path}.")
        elif a != b:
            out.append(Change(path, a, b))
    return out


def show(value: Any, quote: bool = True) -> str:
    if value is MISSING:
        return "(none)"
    return repr(value) if quote and isinstance(value, str) else str(value)


def format_changes(found: list[Change], template: str = "{path} {saved} -> {wanted}", quote: bool = True) -> str:
    """'noise.seed 42 -> 7; lr 0.001 -> 0.01' (the template may use path, saved, wanted; strings quoted)."""
    return "; ".join(template.format(path=c.path, saved=show(c.saved, quote), wanted=show(c.wanted, quote))
                     for c in found)
