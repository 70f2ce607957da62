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

# what a head fitted on cached features depends on, besides the rows themselves: predict compares these
PROVENANCE_PARTS = ("encoder", "mask", "noise", "direction", "compute_dtype", "store_dtype")
FEATURE_ATTRS = ("D", "C", "L", "pooling", "definition", "direction")


def feature_parts(*, weights_sha256: str, config: dict[str, Any], code_version: int, random_init_seed: int | None,
                  mask: Any, noise_mode: str, noise_seed: int | None, noise_level: float | None, direction: str,
                  compute_dtype: str, store_dtype: str) -> dict[str, Any]:
    """The fingerprint parts that say how features were computed (not from which rows): the encoder, the
    mask, the noise, the direction and the dtypes. Extraction fingerprints them with the data; fine-tuning
    records them as its head's provenance."""
    import numpy as np

    mask = np.asarray(mask, dtype=bool)
    generated = noise_mode == "generated"
    return {
        "encoder": {"weights_sha256": weights_sha256, "config": config, "code_version": code_version,
                    "random_init_seed": random_init_seed},
        "mask": {"sha256": hashlib.sha256(np.packbits(mask).tobytes()).hexdigest()[:32], "n_kept": int(mask.sum())},
        "noise": {"mode": noise_mode, "seed": noise_seed if generated else None,
                  "level": noise_level if generated else None},
        "direction": direction,
        "compute_dtype": compute_dtype,
        "store_dtype": store_dtype,
    }


def provenance(parts: dict[str, Any], features: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A head's provenance: the feature parts of its cache and each feature's definition (layer/pool ->
    D, C, L, pooling, definition, direction)."""
    return {**{k: parts.get(k) for k in PROVENANCE_PARTS},
            "features": {name: {k: attrs.get(k) for k in FEATURE_ATTRS} for name, attrs in features.items()}}


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


def _hash_mode(split: dict[str, Any]) -> str:
    """'full' or 'sampled': how a split's file identity was hashed (the prefix of its hash)."""
    return str(((split or {}).get("identity") or {}).get("hash", "full:")).split(":", 1)[0]


def _data_words(group: list[Change], old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    words = []
    for split in dict.fromkeys(_second(c) for c in group):
        if old.get(split, MISSING) is MISSING:
            words.append(f"split '{split}' is new")
        elif new.get(split, MISSING) is MISSING:
            words.append(f"split '{split}' is no longer given")
        elif _hash_mode(old[split]) != _hash_mode(new[split]):
            words.append(f"split '{split}': the cache identified its file by --hash {_hash_mode(old[split])}, this "
                         f"run by --hash {_hash_mode(new[split])} (pass --hash {_hash_mode(old[split])} to compare "
                         "with it)")
        else:
            what = dict.fromkeys(c.path.split(".")[2] for c in group if _second(c) == split)
            words.append(f"split '{split}': " + ", ".join("file content" if w == "identity" else w for w in what)
                         + " changed")
    return words
