"""Splits that share spectra leak labels into model selection or into the reported score: one check for every
command that takes several splits (extract, finetune, fit, compare), by rows of one file (check_disjoint) and
by content, wherever the rows sit (check_rows_disjoint: copies, subsets, virtual datasets)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def shared_rows(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in a, in b) of rows whose content hashes ((n, 2) uint64 each) are equal, sorted by a's."""
    key = np.dtype([("hi", "<u8"), ("lo", "<u8")])
    ka = np.ascontiguousarray(a, dtype="<u8").view(key).ravel()
    kb = np.ascontiguousarray(b, dtype="<u8").view(key).ravel()
    in_b = np.isin(ka, kb)
    if not in_b.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ia = np.flatnonzero(in_b)
    order = np.argsort(kb, kind="stable")
    ib = order[np.searchsorted(kb[order], ka[ia])]
    return ia, ib


@dataclass
class SplitRows:
    """A split's spectra for the copied-rows check: its name, where its rows come from, and their content
    hashes (featcache.spectra.pfsspec.row_hashes; None when unknown, e.g. a cache made before they were kept)."""

    name: str
    where: str          # the file (or cache) its rows are in, for the message
    first_row: int      # file row of its first spectrum
    hashes: np.ndarray | None


def check_rows_disjoint(splits: list[SplitRows], what: str = "splits", flag: str = "--data") -> None:
    """Refuse two splits that hold the same spectrum, judged by content (a per-row hash of the flux), wherever
    the rows sit: a test file written from train rows, a virtual or copied subset, another slice of a copy.
    Duplicates inside one split are not a leak and pass."""
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            if a.hashes is None or b.hashes is None:
                continue
            ia, ib = shared_rows(a.hashes, b.hashes)
            if len(ia):
                pairs = ", ".join(f"row {int(x) + a.first_row} = row {int(y) + b.first_row}"
                                  for x, y in zip(ia[:3], ib[:3], strict=True))
                raise FeatcacheError(
                    f"{flag}: {what} '{a.name}' ({a.where}) and '{b.name}' ({b.where}) hold the same spectra: "
                    f"{len(ia)} of {len(a.hashes)} rows of '{a.name}' have the flux of a row of '{b.name}' "
                    f"({pairs}{', ...' if len(ia) > 3 else ''}); give them disjoint spectra (shared spectra would "
                    "leak into validation or test)")
