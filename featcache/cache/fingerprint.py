"""A cache's fingerprint: a digest of everything that changes its numbers, and what differs when it does.

The parts (checkpoint tensors, each split's data identity and rows, mask bytes, noise settings, direction,
dtypes, the encoder code version) are plain data; the fingerprint is a sha256 of their JSON. When a run asks
for a cache made from other inputs, `describe_changes` names what changed, in the user's words.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..common.settings import MISSING, Change, changes


def digest(parts: dict[str, Any]) -> str:
    """sha256 (first 32 hex digits) of the parts' canonical JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human words for what differs between two fingerprints' parts, one phrase per top-level part."""
    found = changes(old, new)
    words: list[str] = []
    for key in dict.fromkeys(c.key for c in found):
        group = [c for c in found if c.key == key]
        if key == "data":
            words += _data_words(group, old.get("data") or {}, new.get("data") or {})
        elif key == "encoder":
            words.append("encoder " + ", ".join(dict.fromkeys(_second(c) for c in group)) + " changed")
        elif all("." in c.path for c in group):
            words.append(f"{key}: " + ", ".join(f"{c.path.split('.', 1)[1]} {_word(c.saved)} -> {_word(c.wanted)}"
                                                for c in group))
        else:
            words += [f"{key}: {_word(c.saved)} -> {_word(c.wanted)}" for c in group]
    return words


def _word(value: object) -> str:
    return "(none)" if value is MISSING else str(value)


def _second(change: Change) -> str:
    parts = change.path.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _data_words(group: list[Change], old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    words = []
    for split in dict.fromkeys(_second(c) for c in group):
        if old.get(split, MISSING) is MISSING:
            words.append(f"split '{split}' is new")
        elif new.get(split, MISSING) is MISSING:
            words.append(f"split '{split}' is no longer given")
        else:
            what = dict.fromkeys(c.path.split(".")[2] for c in group if _second(c) == split)
            words.append(f"split '{split}': " + ", ".join("file content" if w == "identity" else w for w in what)
                         + " changed")
    return words
