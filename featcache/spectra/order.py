"""The order training reads rows in: shuffled blocks, rows shuffled within each, the same on a resume.

Rows are read from HDF5 in contiguous blocks (fast), so an epoch permutes the blocks and then the rows of
each block. The order is drawn from a torch.Generator seeded with `seed`, replaying epochs 1..epoch, so it is
a function of (seed, epoch) alone -- a resumed run sees the same batches -- and, with a single block, epoch
e's permutation is exactly the e-th torch.randperm of that generator (what `featcache fit` shuffles with).
Used by finetune and pretrain; each rank of a distributed run orders its own contiguous shard.
"""

from __future__ import annotations

import numpy as np


def epoch_order(n_rows: int, block_rows: int, seed: int, epoch: int) -> list[tuple[int, int, np.ndarray]]:
    """(start, stop, within-block permutation) per row block, in epoch `epoch`'s (1-based) block order."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    starts = list(range(0, n_rows, block_rows))
    blocks: list[tuple[int, int, np.ndarray]] = []
    for _ in range(max(int(epoch), 1)):
        order = torch.randperm(len(starts), generator=gen).tolist() if len(starts) > 1 else [0]
        blocks = []
        for b in order:
            start, stop = starts[b], min(starts[b] + block_rows, n_rows)
            blocks.append((start, stop, torch.randperm(stop - start, generator=gen).numpy()))
    return blocks


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank r's contiguous share [r*n//W, (r+1)*n//W) of n rows (sizes differ by at most one)."""
    return rank * n // world, (rank + 1) * n // world


def contiguous_blocks(lo: int, hi: int, block_rows: int) -> list[tuple[int, int, None]]:
    """Rows [lo, hi) in order, in blocks (evaluation passes: no permutation)."""
    return [(s, min(s + block_rows, hi), None) for s in range(lo, hi, block_rows)]
