"""Out-of-core training rows: MLP heads on features larger than memory, streamed from the Zarr cache.

When a fit's train (+ validation) features would not fit the memory budget (`--max-memory`, default half the
RAM available when the fit starts), the train rows are never loaded whole. Each epoch reads them in windows
of whole chunks through a block-shuffle sampler: the chunks in a random order, the rows of each window of
consecutive chunks (of that order) in a random order, one reader thread a window ahead of the optimiser.
Peak memory is then a few windows, not N rows. The sampler changes the batch order, not the recipe: with one
window holding every row, its order is exactly the in-memory loop's `torch.randperm` (tested), and otherwise
it is as random within a window.

Standardisation (train mean and population std per column, in float64: `standardise.column_moments`, the
in-memory path's function) and the NaN/inf check are one streamed pass before the first epoch.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..common.background import background
from ..common.errors import FeatcacheError
from .standardise import check_val_targets, checked_targets, column_moments, is_constant, target_moments

DEFAULT_FRACTION = 0.5   # the default budget: this share of the RAM available when the fit starts
# windows' worth of memory alive at once: the one training, the one queued, the one being read and its shuffled
# copy, and one for allocator slack (measured: 300k x 3481 rows under a 1GB budget peak at 1.2 GB RSS)
WINDOWS_HELD = 6
DEFAULT_CHUNK_ROWS = 1024
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def available_memory() -> int:
    """Bytes of RAM available now (MemAvailable on Linux; else the physical total)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def parse_memory(text: str | int | float | None, option: str = "--max-memory") -> int:
    """Bytes from '1GB', '512M', '1.5GiB', '25%' (of the RAM available now) or a plain number of bytes;
    None: half the available RAM."""
    if text is None:
        return int(DEFAULT_FRACTION * available_memory())
    if isinstance(text, (int, float)) and not isinstance(text, bool):  # bytes, from Python (tests use small ones)
        if not math.isfinite(text) or text < 1024:
            raise FeatcacheError(f"max_memory {text}: expected at least 1024 bytes")
        return int(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*|%)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or (unit != "%" and unit not in _UNITS):
        raise FeatcacheError(f"{option} {text}: expected a size such as 1GB, 512MB or 25% (of available RAM)")
    number = float(match.group(1))
    value = number / 100 * available_memory() if unit == "%" else number * _UNITS[unit]
    if not math.isfinite(value) or value < 2**20:
        raise FeatcacheError(f"{option} {text}: a memory budget of at least 1MB is needed")
    return int(value)


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def in_memory_bytes(n_train: int, n_val: int, width: int) -> int:
    """What the in-memory loop holds: the loaded float32 rows and their standardised copy."""
    return 2 * 4 * (n_train + n_val) * width


def chunk_rows(X: Any) -> int:
    """Rows per chunk of a lazy feature matrix (reads aligned to them decompress each chunk once)."""
    arrays = getattr(X, "arrays", None) or [p for part in getattr(X, "parts", []) for p in getattr(part, "arrays", [])]
    for array in arrays:
        chunks = getattr(array, "chunks", None)
        if chunks:
            return max(1, int(chunks[0]))
    return DEFAULT_CHUNK_ROWS


def window_rows(budget: int, width: int, chunk: int) -> int:
    """Rows per window: whole chunks while WINDOWS_HELD windows fit the budget (else part of one chunk)."""
    fit = budget // (WINDOWS_HELD * 4 * max(width, 1))
    if fit < 1:
        raise FeatcacheError(f"--max-memory {format_bytes(budget)} cannot hold even one row of {width} features "
                             "a few times over; raise it")
    return max(chunk, (fit // chunk) * chunk) if fit >= chunk else int(fit)


def val_held(X_val: Any, budget: int) -> bool:
    """Validation rows are loaded once when they take at most a sixth of the budget (else streamed in order)."""
    return isinstance(X_val, np.ndarray) or 4 * len(X_val) * int(X_val.shape[1]) <= budget // WINDOWS_HELD


def epoch_windows(n: int, window: int, chunk: int, gen: torch.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch's plan: per window, (its rows' (start, stop) ranges in read order, the permutation of its rows).

    The chunks are dealt in a random order and consecutive runs of them form the windows; with a single
    window the plan is `torch.randperm(n)` over all rows, the in-memory loop's order."""
    step = chunk if window >= chunk else window
    starts = np.arange(0, n, step)
    per_window = max(1, window // step)
    if len(starts) <= per_window:
        ranges = np.stack([starts, np.minimum(starts + step, n)], axis=1)
        return [(ranges, torch.randperm(n, generator=gen).numpy())]
    order = torch.randperm(len(starts), generator=gen).numpy()
    plan = []
    for i in range(0, len(order), per_window):
        picked = np.sort(starts[order[i:i + per_window]])  # read in file order; the rows are permuted anyway
        ranges = np.stack([picked, np.minimum(picked + step, n)], axis=1)
        size = int((ranges[:, 1] - ranges[:, 0]).sum())
        plan.append((ranges, torch.randperm(size, generator=gen).numpy()))
    return plan


@dataclass
class StreamedRows:
    """Train rows read lazily from a row-sliceable matrix (FeatureMatrix), standardised on the fly; the
    validation rows in memory when they fit a window's share of the budget, else streamed in order too."""

    X: Any
    y: np.ndarray                # standardised targets (n, T), float32
    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: np.ndarray
    y_scale: np.ndarray
    window: int
    chunk: int
    device: torch.device
    X_val: Any = None
    y_val: np.ndarray | None = None  # standardised
    budget: int = 0
    hold_val: bool = False           # load the validation rows once (they fit a share of the budget)

    @property
    def n_train(self) -> int:
        return int(self.y.shape[0])

    @property
    def has_val(self) -> bool:
        return self.X_val is not None

    def describe(self) -> dict[str, Any]:
        """How the rows were fed (the fit's metrics and config record it)."""
        return {"sampler": "block-shuffle", "window_rows": self.window, "chunk_rows": self.chunk,
                "max_memory_bytes": self.budget}

    def _standardise(self, values: np.ndarray) -> np.ndarray:
        """A standardised float32 copy (the matrix's own buffer is never written)."""
        out = np.subtract(values, self._mean32, dtype=np.float32)
        out /= self._scale32
        return out

    def __post_init__(self) -> None:
        self._mean32 = self.x_mean.astype(np.float32)
        self._scale32 = self.x_scale.astype(np.float32)
        self._val_standardised = False
        if self.X_val is not None and self.hold_val:
            self.X_val = self._standardise(np.asarray(self.X_val[0:len(self.X_val)]))
            self._val_standardised = True

    def _read_standardised(self, ranges: np.ndarray) -> np.ndarray:
        """The window's rows read chunk by chunk into one buffer, standardised in place."""
        out = np.empty((int((ranges[:, 1] - ranges[:, 0]).sum()), int(self.X.shape[1])), dtype=np.float32)
        pos = 0
        for a, b in ranges:
            out[pos:pos + int(b - a)] = self.X[int(a):int(b)]
            pos += int(b - a)
        out -= self._mean32
        out /= self._scale32
        return out

    def train_batches(self, gen: torch.Generator, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled batches; the next window is read in a thread while this one trains."""
        plan = epoch_windows(self.n_train, self.window, self.chunk, gen)

        def windows() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for ranges, perm in plan:
                rows = np.concatenate([np.arange(a, b) for a, b in ranges])[perm]
                x = self._read_standardised(ranges)[perm]
                yield torch.from_numpy(x).to(self.device), torch.from_numpy(self.y[rows]).to(self.device)

        for xw, yw in background(windows(), depth=1, name="featcache-rows"):
            for i in range(0, xw.shape[0], batch_size):
                yield xw[i:i + batch_size], yw[i:i + batch_size]

    def train_blocks(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The train rows in order (the uncertainty heads' sigma warm start)."""
        yield from self._ordered(self.X, self.y, batch_size, standardised=False)

    def val_blocks(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        assert self.X_val is not None and self.y_val is not None
        yield from self._ordered(self.X_val, self.y_val, batch_size, standardised=self._val_standardised)

    def _ordered(self, X: Any, y: np.ndarray, batch_size: int, standardised: bool
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        step = min(batch_size, self.window)
        for i in range(0, len(y), step):
            block = X[i:i + step]
            xb = block if standardised else self._standardise(block)
            yield torch.from_numpy(np.ascontiguousarray(xb)).to(self.device), \
                torch.from_numpy(y[i:i + step]).to(self.device)


def streamed_rows(X_train: Any, y_train: Any, X_val: Any, y_val: Any, device: torch.device, budget: int,
                  target_names: Sequence[str] | None) -> StreamedRows:
    """Check and standardise as the in-memory path does (train moments), without loading the train rows."""
    ytr = checked_targets(y_train, "train", target_names)
    if len(X_train) != ytr.shape[0]:
        raise FeatcacheError(f"train: features and targets do not match: {len(X_train)} and {ytr.shape[0]} rows")
    width = int(X_train.shape[1])
    chunk = chunk_rows(X_train)
    # validation rows held in memory (when they fit a share of the budget) leave the rest to the windows
    hold_val = X_val is not None and val_held(X_val, budget)
    window = window_rows(budget - (4 * len(X_val) * width if hold_val else 0), width, chunk)
    step = max(1, window // 2)  # the moments' float64 copy of a block is twice its float32 size
    x_mean, x_std = column_moments(X_train, step, split="train")
    x_scale = np.where(is_constant(x_std, x_mean), 1.0, x_std)
    y_mean, y_scale = target_moments(ytr, target_names)
    yvs = None
    if X_val is not None:
        yv = checked_targets(y_val, "validation", target_names)
        if int(X_val.shape[1]) != width:
            raise FeatcacheError(f"validation features have {X_val.shape[1]} columns; train has {width}")
        check_val_targets(yv, ytr.shape[1], target_names)
        column_moments(X_val, step, split="validation")  # the NaN check; the moments are train's
        yvs = ((yv - y_mean) / y_scale).astype(np.float32)
    return StreamedRows(X_train, ((ytr - y_mean) / y_scale).astype(np.float32), x_mean, x_scale, y_mean, y_scale,
                        window, chunk, device, X_val, yvs, budget, hold_val)

