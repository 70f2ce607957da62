"""Pretraining's data: rows read through the one input stage into torch batches, and an epoch's batches in
the block-shuffled order of spectra.order (a function of (seed, epoch), so a resumed run sees the same)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..common.errors import FeatcacheError
from ..spectra.inputs import NoiseSpec, read_inputs
from ..spectra.noise import fresh_stream
from ..spectra.order import epoch_order
from ..spectra.pfsspec import PfsDataset
from .losses import Batch
from .recipe import PretrainRecipe

_FLUX_SAMPLE_ROWS = 32  # rows checked up front for usable clean flux


def read_block(ds: PfsDataset, start: int, stop: int, mask: np.ndarray | None, noise: NoiseSpec, *,
               stream: int, need_flux: bool) -> Batch:
    """Rows [start, stop) as a batch (spectra.inputs.read_inputs); with need_flux every row must have clean
    flux (T1 and the S/N compare against it)."""
    inputs = read_inputs(ds, start, stop, mask, noise, stream=stream, need_flux=need_flux)
    if need_flux:
        assert inputs.flux is not None
        empty = ~inputs.flux.any(axis=1)
        if empty.any():
            row = start + int(np.flatnonzero(empty)[0])
            raise FeatcacheError(f"{ds.path}: row {row} has no clean flux (all zero after the reading rules); "
                                 "T1 and generated noise need clean flux for every spectrum")
    return Batch.from_inputs(inputs, start)


def flux_problem(ds: PfsDataset, n_rows: int | None = None) -> str | None:
    """Why the file has no usable clean flux (None when it has): rows sampled across the file."""
    n = ds.n_rows if n_rows is None else min(n_rows, ds.n_rows)
    if n == 0:
        return "it has no spectra"
    if ds.observed:
        return "it holds observed spectra (featcache import): their flux is noisy"
    rows = sorted({int(r) for r in np.linspace(0, n - 1, min(n, _FLUX_SAMPLE_ROWS))})
    same_as_noisy = 0
    for r in rows:
        flux = ds.read_flux(r, r + 1)
        if not flux.any():
            return f"flux row {r} is all zero after the reading rules (NaN -> 0, negatives -> 0)"
        if ds.has_noisy and np.array_equal(flux, ds.read_noisy(r, r + 1)):
            same_as_noisy += 1
    if same_as_noisy == len(rows):
        return "its flux equals its stored noisy array (an observation, not clean model flux)"
    return None


def noise_spec(recipe: PretrainRecipe) -> NoiseSpec:
    """The recipe's noise (resolved: not 'auto') as the input stage takes it."""
    return NoiseSpec(recipe.noise, recipe.effective_noise_seed, recipe.noise_level)


def training_batches(ds: PfsDataset, n_rows: int, mask: np.ndarray | None, recipe: PretrainRecipe, epoch: int,
                     need_flux: bool) -> Iterator[Batch]:
    """Epoch `epoch`'s (0-based) batches: blocks in shuffled order, rows shuffled within; a block's tail is
    carried into the next block's first batch, so every batch but the epoch's last has batch_size spectra."""
    carry: Batch | None = None
    bs = recipe.batch_size
    noise = noise_spec(recipe)
    stream = fresh_stream(epoch) if recipe.train_noise == "fresh" else 0
    for start, stop, perm in epoch_order(n_rows, recipe.block_rows, recipe.seed, epoch + 1):
        block = read_block(ds, start, stop, mask, noise, stream=stream, need_flux=need_flux)
        block = block.take(torch.from_numpy(perm))
        if carry is not None:
            block = Batch.concatenate([carry, block])
        n_full = len(block) // bs * bs
        for i in range(0, n_full, bs):
            yield block.take(slice(i, i + bs))
        carry = block.take(slice(n_full, len(block))) if n_full < len(block) else None
    if carry is not None:
        yield carry
