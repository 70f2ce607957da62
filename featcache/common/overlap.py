"""Splits that share rows of one file leak labels into model selection or into the reported score: one check
for every command that takes several splits (extract, finetune, fit, compare)."""

from __future__ import annotations

from .errors import FeatcacheError


def check_disjoint(splits: list[tuple[str, str, int, int]], what: str = "splits") -> None:
    """Refuse two splits that share rows of one file: (name, file identity, start, stop) each, where the
    identity is the file's real path or its content hash (a copy of a file is the same rows). Overlapping
    train and validation or test rows leak labels into model selection and into the reported score."""
    for i, (name_a, id_a, a0, a1) in enumerate(splits):
        for name_b, id_b, b0, b1 in splits[i + 1:]:
            if id_a == id_b and max(a0, b0) < min(a1, b1):
                raise FeatcacheError(f"--data: {what} '{name_a}' (rows {a0}:{a1}) and '{name_b}' (rows {b0}:{b1}) "
                                     f"share rows {max(a0, b0)}:{min(a1, b1)} of the same file; give them "
                                     "disjoint rows (shared rows would leak into validation or test)")
