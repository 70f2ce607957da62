"""What bounds and the Cannon read from a pfsspec file: its rows, mask, noise, labels and redshifts, checked
with one-line errors, and the progress bar over spectra."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError, choices_message
from ..common.progress import progress as progress_bar
from ..spectra.pfsspec import PfsDataset

STELLAR_LABELS = ("T_eff", "log_g", "M_H", "a_M", "C_M")
TRAIN_ON = ("flux", "noisy")
READ_ROWS = 2048
Rows = tuple[int, int] | None


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def bar_for(total: int, desc: str, show: bool) -> Any:
    """A progress bar over spectra (hidden with --quiet), or none at all."""
    return progress_bar(total=total, desc=desc, unit="spectra") if show else _NoBar()


def file_rows(ds: PfsDataset, rows: Rows) -> tuple[int, int]:
    start, stop = (0, ds.n_rows) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= start < stop <= ds.n_rows:
        raise FeatcacheError(f"{ds.path}: rows {start}:{stop} outside 0:{ds.n_rows} (or empty)")
    return start, stop


def file_mask(ds: PfsDataset, mask: Any) -> np.ndarray:
    if mask is None:
        return np.ones(ds.n_pixels, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != (ds.n_pixels,) or mask.dtype != bool:
        raise FeatcacheError(f"{ds.path}: the mask must be ({ds.n_pixels},) booleans, got {mask.shape} {mask.dtype}")
    if not mask.any():
        raise FeatcacheError(f"{ds.path}: the mask keeps no pixel")
    return mask


def check_noise(noise: str, noise_level: float, ds: PfsDataset) -> float:
    """The factor on the error: the level for generated noise, 1 for a stored noisy array (its sigma)."""
    if noise not in ("generated", "stored"):
        raise FeatcacheError(f"--noise {noise}: expected generated or stored")
    if noise == "stored":
        if not ds.has_noisy:
            raise FeatcacheError(f"{ds.path}: --noise stored but the file has no 'noisy' array")
        return 1.0
    level = float(noise_level)
    if not (np.isfinite(level) and level > 0):
        raise FeatcacheError(f"--noise-level must be a positive finite number, got {noise_level}")
    return level


def label_parameters(ds: PfsDataset, labels: Sequence[str] | None, start: int, stop: int) -> tuple[list[str], bool]:
    """The stellar labels to model (given, or those of STELLAR_LABELS the file has) and whether the redshift
    is a free parameter (a `redshift` column that is not all zero in these rows)."""
    available = ds.label_names()
    names = list(labels) if labels else [n for n in STELLAR_LABELS if n in available]
    for name in names:
        if name not in available:
            raise FeatcacheError(f"{ds.path}: " + choices_message("label", name, available))
    if not names:
        raise FeatcacheError(f"{ds.path}: no stellar label to bound ({', '.join(STELLAR_LABELS)}); name them with "
                             "--label")
    has_z = "redshift" in available and bool(np.any(ds.labels(["redshift"], start, stop)["redshift"] != 0))
    return [n for n in names if n != "redshift"], has_z


def file_redshift(ds: PfsDataset, start: int, stop: int) -> np.ndarray:
    if "redshift" in ds.label_names():
        return np.asarray(ds.labels(["redshift"], start, stop)["redshift"], dtype=np.float64)
    return np.zeros(stop - start)


def file_attrs(ds: PfsDataset) -> dict[str, Any]:
    import h5py

    with h5py.File(ds.path, "r") as h5:
        return dict(h5.attrs)
