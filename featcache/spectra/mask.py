"""Wavelength masks: a boolean .npy, `quantile:RATIO` of the per-pixel median error, or `none`.

A quantile mask keeps pixel j when the median over the training spectra of error[:, j] is below the RATIO
quantile of those medians; masked pixels are removed (not zero-filled) and the same mask serves every split.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.errors import FeatcacheError
from .pfsspec import PfsDataset

ReadBlock = Callable[[int, int], np.ndarray]


@dataclass(frozen=True)
class MaskSpec:
    """A parsed --mask value."""

    kind: str  # 'file' | 'quantile' | 'none'
    ratio: float | None = None
    path: Path | None = None

    @property
    def text(self) -> str:
        if self.kind == "quantile":
            return f"quantile:{self.ratio:g}"
        if self.kind == "file":
            return str(self.path)
        return "none"


def parse_mask_spec(text: str) -> MaskSpec:
    """FILE.npy | quantile:R (0 < R <= 1) | none."""
    text = str(text).strip()
    if text.lower() == "none":
        return MaskSpec("none")
    match = re.fullmatch(r"quantile:([0-9.eE+-]+)", text)
    if match:
        try:
            ratio = float(match.group(1))
        except ValueError:
            ratio = -1.0
        if not 0.0 < ratio <= 1.0:
            raise FeatcacheError(f"--mask {text}: the quantile ratio must be in (0, 1], e.g. quantile:0.85")
        return MaskSpec("quantile", ratio=ratio)
    if text.endswith(".npy"):
        return MaskSpec("file", path=Path(text))
    raise FeatcacheError(f"--mask {text}: expected FILE.npy, quantile:RATIO or none")


def load_mask_file(path: Path, n_pixels: int) -> np.ndarray:
    if not path.exists():
        raise FeatcacheError(f"mask file {path}: no such file")
    try:
        mask = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise FeatcacheError(f"mask file {path}: not a .npy array ({exc})") from None
    if mask.ndim != 1 or mask.shape[0] != n_pixels:
        raise FeatcacheError(f"mask file {path}: has shape {mask.shape}, expected ({n_pixels},) booleans "
                             "(one per pixel of the data)")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise FeatcacheError(f"mask file {path}: expected booleans, got {mask.dtype} values other than 0/1")
        mask = mask.astype(bool)
    if not mask.any():
        raise FeatcacheError(f"mask file {path}: keeps no pixel")
    return mask


def streamed_median(read_block: ReadBlock, n_rows: int, n_cols: int, *, block_rows: int = 2048,
                    bins: int = 1024, gather_limit: int = 1 << 25) -> np.ndarray:
    """The exact per-column median of an (n_rows, n_cols) array read in row blocks.

    Memory does not grow with n_rows: a min/max pass, then per-column histograms that narrow down to the
    bins holding the middle ranks, then one pass gathering only the values in those bins.
    """
    if n_rows <= 0:
        raise FeatcacheError("cannot take a median over zero rows")
    k_lo, k_hi = (n_rows - 1) // 2, n_rows // 2
    blocks = [(s, min(s + block_rows, n_rows)) for s in range(0, n_rows, block_rows)]

    lo = np.full(n_cols, np.inf)
    hi = np.full(n_cols, -np.inf)
    for s, e in blocks:
        x = np.asarray(read_block(s, e), dtype=np.float64)
        if not np.isfinite(x).all():
            raise FeatcacheError("median input contains NaN or inf")
        lo = np.minimum(lo, x.min(axis=0))
        hi = np.maximum(hi, x.max(axis=0))
    result = np.where(lo == hi, lo, np.nan)  # constant columns are done
    cols = np.arange(n_cols)
    # each level: (lo, scale, first_bin, last_bin) per column; a value stays a candidate while its bin at
    # every level lies in [first_bin, last_bin]. Bins are monotone in value, so ranks are preserved.
    levels: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    below = np.zeros(n_cols, dtype=np.int64)  # candidates-excluded values lying below the candidates
    cur_lo, cur_hi = lo.copy(), hi.copy()

    def bin_of(x: np.ndarray, lo_: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return np.clip(((x - lo_) * scale).astype(np.int64), 0, bins - 1)

    def candidates(x: np.ndarray) -> np.ndarray:
        keep = np.ones(x.shape, dtype=bool)
        for lo_, scale, b1, b2 in levels:
            b = bin_of(x, lo_, scale)
            keep &= (b >= b1) & (b <= b2)
        return keep

    open_cols = np.isnan(result)
    while True:
        width = np.where(cur_hi > cur_lo, cur_hi - cur_lo, 1.0)
        scale = bins / width
        counts = np.zeros(n_cols * bins, dtype=np.int64)
        for s, e in blocks:
            x = np.asarray(read_block(s, e), dtype=np.float64)
            keep = candidates(x)
            flat = bin_of(x, cur_lo, scale) + cols * bins
            counts += np.bincount(flat[keep], minlength=n_cols * bins)
        counts = counts.reshape(n_cols, bins)
        cum = below[:, None] + np.cumsum(counts, axis=1)
        b1 = np.argmax(cum > k_lo, axis=1)
        b2 = np.argmax(cum > k_hi, axis=1)
        below_b1 = cum[cols, b1] - counts[cols, b1]
        in_range = cum[cols, b2] - below_b1
        levels.append((cur_lo, scale, b1, b2))
        total = int(in_range[open_cols].sum())
        if total <= gather_limit or len(levels) >= 6:
            break
        below = below_b1
        cur_lo, cur_hi = cur_lo + b1 / scale, cur_lo + (b2 + 1) / scale
    values, owners = [], []
    for s, e in blocks:
        x = np.asarray(read_block(s, e), dtype=np.float64)
        keep = candidates(x) & open_cols[None, :]
        rows_idx, col_idx = np.nonzero(keep)
        values.append(x[rows_idx, col_idx])
        owners.append(col_idx)
    vals = np.concatenate(values) if values else np.empty(0)
    own = np.concatenate(owners) if owners else np.empty(0, dtype=np.int64)
    order = np.lexsort((vals, own))
    vals, own = vals[order], own[order]
    start = np.searchsorted(own, cols)
    for c in np.flatnonzero(open_cols):
        base = start[c] - below_b1[c]
        result[c] = 0.5 * (vals[base + k_lo] + vals[base + k_hi])
    return result


def quantile_mask(read_error: ReadBlock, n_rows: int, n_pixels: int, ratio: float) -> np.ndarray:
    """Keep pixel j when median_i error[i, j] < the ratio quantile of the per-pixel medians."""
    medians = streamed_median(read_error, n_rows, n_pixels)
    threshold = np.quantile(medians, ratio)
    mask = medians < threshold if ratio < 1.0 else np.ones(n_pixels, dtype=bool)
    if not mask.any():
        raise FeatcacheError(f"mask quantile:{ratio:g} keeps no pixel")
    return mask


def make_mask(spec: MaskSpec | str, ds: PfsDataset, start: int, stop: int, *, source: str = "") -> np.ndarray:
    """The boolean (P,) mask a --mask value asks for: the .npy file, the quantile of the per-pixel median
    error over rows [start, stop) of `ds` (the first split: every command builds it from the same rows),
    or every pixel."""
    from ..common.progress import status

    spec = parse_mask_spec(spec) if isinstance(spec, str) else spec
    if spec.kind == "file":
        assert spec.path is not None
        return load_mask_file(spec.path, ds.n_pixels)
    if spec.kind == "quantile":
        where = source or ds.path.name
        status(f"mask: quantile {spec.ratio:g} of the per-pixel median error over {stop - start} spectra of {where}")
        return quantile_mask(lambda s, e: ds.read_error(start + s, start + e), stop - start, ds.n_pixels,
                             float(spec.ratio or 1.0))
    return np.ones(ds.n_pixels, dtype=bool)
