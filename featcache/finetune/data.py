"""Fine-tuning's data: each split's rows and labels, and the batches an epoch reads, straight from HDF5.

Each rank owns a contiguous shard of the train rows, read in row blocks (spectra.order: blocks shuffled,
rows shuffled within, a function of (seed + rank, epoch), so a resumed run sees the same batches; with one
block and one process exactly fit's shuffle). Every rank takes ceil((N // W) / batch_size) optimiser steps per
epoch (DDP needs equal counts); the last batch takes the rest. Train rows get fresh noise every epoch
(stream fresh_stream(epoch index)) with --train-noise fresh, the extract noise (stream 0) with fixed;
validation and test always use the extract noise, so their numbers compare with the cache path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..common.background import background
from ..common.errors import FeatcacheError
from ..common.subsets import nested_subset
from ..heads.standardise import is_constant
from ..spectra.inputs import NoiseSpec, read_rows
from ..spectra.noise import fresh_stream
from ..spectra.order import contiguous_blocks, epoch_order, shard_range
from ..spectra.pfsspec import PfsDataset
from ..spectra.splits import open_splits
from .distributed import Dist
from .options import FinetuneOptions

EXTRACT_STREAM = 0  # draw 0: the noise `featcache extract` uses (validation, test, standardisation)
RANK_SEED_STRIDE = 1_000_003  # rank r shuffles and drops out with seed + r * stride (rank 0: fit's seed)


@dataclass
class SplitData:
    """One split's rows of a file and its labels (small: held in memory on every rank): rows [start, stop), or
    with `subset` only those positions of them (finetune --train-size: a nested subset of the train split)."""

    name: str
    path: Path
    start: int
    stop: int
    y: np.ndarray  # (n, T) float64: one row per spectrum the split trains or scores on, in file order
    subset: np.ndarray | None = None  # sorted positions in [0, stop - start); None: every row

    @property
    def n(self) -> int:
        return self.stop - self.start if self.subset is None else len(self.subset)

    def file_rows(self, lo: int, hi: int) -> np.ndarray:
        """The file rows of the split's spectra lo..hi-1 (positions among those it uses)."""
        positions = np.arange(lo, hi) if self.subset is None else self.subset[lo:hi]
        return self.start + positions

    def index(self, rows: np.ndarray) -> np.ndarray:
        """Positions in `y` of the given file rows (rows of this split)."""
        if self.subset is None:
            return rows - self.start
        return np.searchsorted(self.subset, rows - self.start)


@dataclass
class RunContext:
    """What every pass needs: options, mask, noise, the process's place and device."""

    opts: FinetuneOptions
    mask: np.ndarray
    dist: Dist
    input_sigma: bool

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def noise(self) -> NoiseSpec:
        return NoiseSpec(self.opts.noise, self.opts.noise_seed, self.opts.noise_level)

    def stream_blocks(self, split: SplitData, blocks: list[tuple[int, int, np.ndarray | None]], stream: int
                      ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(file rows, encoder inputs) per block (block rows relative to the split), permuted where a
        permutation is given; read and noised in a background thread at most two blocks ahead."""

        def produce() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
            with PfsDataset(split.path) as ds:
                for start, stop, perm in blocks:
                    rows = split.file_rows(start, stop)
                    x = read_rows(ds, rows, self.mask, self.noise, stream=stream).encoder_input(self.input_sigma)
                    if perm is not None:
                        x, rows = x[perm], rows[perm]
                    yield rows, torch.from_numpy(np.ascontiguousarray(x))

        return background(produce(), depth=2)

    def eval_stream(self, split: SplitData) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """This rank's contiguous shard of a split, in order, with the extract noise."""
        lo, hi = shard_range(split.n, self.dist.rank, self.dist.world)
        return self.stream_blocks(split, contiguous_blocks(lo, hi, self.opts.block_rows), EXTRACT_STREAM)


def steps_per_epoch(n_rows: int, world: int, batch_size: int) -> int:
    """Optimiser steps per epoch on every rank: ceil of the smallest shard over the batch size."""
    return max(1, math.ceil((n_rows // world) / batch_size))


def train_batches(split: SplitData, ctx: RunContext, epoch: int, y_std: np.ndarray
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches of an epoch: its shard's blocks shuffled, rows shuffled within, the tail of a
    block carried into the next; exactly `steps_per_epoch` batches, the last taking what is left."""
    opts, rank, world = ctx.opts, ctx.dist.rank, ctx.dist.world
    lo, hi = shard_range(split.n, rank, world)
    steps = steps_per_epoch(split.n, world, opts.recipe.batch_size)
    bs = opts.recipe.batch_size
    blocks = [(lo + s, lo + e, p) for s, e, p in
              epoch_order(hi - lo, opts.block_rows, opts.recipe.seed + RANK_SEED_STRIDE * rank, epoch)]
    stream = fresh_stream(epoch - 1) if opts.train_noise == "fresh" else EXTRACT_STREAM
    carry_x: torch.Tensor | None = None
    carry_y: torch.Tensor | None = None
    done = 0
    for rows, x in ctx.stream_blocks(split, blocks, stream):
        y = torch.from_numpy(y_std[split.index(rows)])
        if carry_x is not None and carry_y is not None:
            x, y = torch.cat([carry_x, x]), torch.cat([carry_y, y])
        i = 0
        while done < steps - 1 and len(x) - i >= bs:
            yield x[i:i + bs], y[i:i + bs]
            i += bs
            done += 1
        carry_x, carry_y = x[i:], y[i:]
    if carry_x is not None and carry_y is not None and len(carry_x):
        yield carry_x, carry_y


def _check_roles(opts: FinetuneOptions, names: list[str]) -> list[str]:
    for flag, role in (("--train-split", opts.train_split), ("--val-split", opts.val_split),
                       ("--test-split", opts.test_split)):
        if role is not None and role not in names:
            hint = "" if flag == "--train-split" else f" (pass {flag} '' to go without)"
            raise FeatcacheError(f"{flag} {role}: no such --data split; given: {', '.join(names)}{hint}")
    roles = [r for r in (opts.train_split, opts.val_split, opts.test_split) if r is not None]
    if len(set(roles)) != len(roles):
        raise FeatcacheError("--train-split, --val-split and --test-split must name different splits")
    return roles


def load_splits(opts: FinetuneOptions) -> tuple[dict[str, SplitData], tuple[Path, int, int]]:
    """The split roles' rows and labels, validated; and (file, start, stop) of the first --data split, which
    the mask is made from (as extract makes it)."""
    opened, _ = open_splits(opts.data, stored_noise=opts.noise == "stored", generated_noise=opts.noise != "stored")
    roles = _check_roles(opts, [s.name for s in opened])
    splits: dict[str, SplitData] = {}
    first = (opened[0].path, opened[0].start, opened[0].stop)
    for spec in opened:
        if spec.name not in roles:
            continue
        with PfsDataset(spec.path) as ds:
            labels = ds.labels(list(opts.targets), spec.start, spec.stop)
        y = np.stack([np.asarray(labels[t], dtype=np.float64) for t in opts.targets], axis=1)
        subset = None
        if spec.name == opts.train_split and opts.train_size is not None:
            if opts.train_size > len(y):
                raise FeatcacheError(f"--train-size {opts.train_size}: the {spec.name} split has {len(y)} spectra")
            subset = nested_subset(len(y), opts.train_size, opts.subset_seed)
            y = y[subset]  # the other rows' labels are never used (nor checked)
        for j, target in enumerate(opts.targets):
            bad = int(np.count_nonzero(~np.isfinite(y[:, j])))
            if bad:
                raise FeatcacheError(f"target '{target}' has {bad} NaN or inf values on the {spec.name} split; "
                                     "drop or fill those rows")
        splits[spec.name] = SplitData(spec.name, spec.path, spec.start, spec.stop, y, subset)
    for role, word in ((opts.train_split, "train"), (opts.val_split, "validation")):
        if role is None:
            continue
        y = splits[role].y
        for j in np.flatnonzero(is_constant(y.std(axis=0), y.mean(axis=0))):
            raise FeatcacheError(f"target '{opts.targets[j]}' is constant on the {word} split "
                                 f"(every value is {y[0, j]:.6g}); nothing to fit")
    return splits, first
