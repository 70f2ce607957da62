"""Counter-based Gaussian noise: the noise of spectrum i depends only on (seed, i, stream).

Each spectrum gets its own Philox stream keyed by (seed, row) with the draw (or epoch) in the counter, so
the same noise comes out whatever the batch size, the order, the number of workers or ranks, or the
device the encoder runs on (noise is always drawn on the CPU, over all P pixels before masking).
"""

from __future__ import annotations

import numpy as np

from ..common.errors import FeatcacheError

MAX_U64 = 2**64 - 1
# streams 0 .. 2**32-1 are extraction draws; fresh-noise training epochs live above them
FRESH_STREAM_BASE = 2**32


def fresh_stream(epoch: int) -> int:
    """The stream of an epoch's fresh noise in training (pretrain, finetune): disjoint from extract draws."""
    return FRESH_STREAM_BASE + int(epoch)


def standard_normal_rows(seed: int, rows: np.ndarray, n_pixels: int, stream: int = 0) -> np.ndarray:
    """eps of shape (len(rows), n_pixels), float32, eps[j] a function of (seed, rows[j], stream) only."""
    if not 0 <= int(seed) <= MAX_U64:
        raise FeatcacheError(f"noise seed must be an integer in 0..2**64-1, got {seed}")
    if not 0 <= int(stream) <= MAX_U64:
        raise FeatcacheError(f"noise stream must be in 0..2**64-1, got {stream}")
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), n_pixels), dtype=np.float32)
    counter = np.array([0, 0, 0, int(stream)], dtype=np.uint64)
    for j, row in enumerate(rows):
        key = np.array([int(seed), int(row)], dtype=np.uint64)
        np.random.Generator(np.random.Philox(key=key, counter=counter)).standard_normal(
            n_pixels, dtype=np.float32, out=out[j])
    return out


def add_noise(flux: np.ndarray, error: np.ndarray, rows: np.ndarray, *, seed: int, noise_level: float = 1.0,
              stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """noisy = flux + eps * error * noise_level and the encoder's sigma channel error * noise_level."""
    sigma = (error * np.float32(noise_level)).astype(np.float32, copy=False)
    eps = standard_normal_rows(seed, rows, flux.shape[1], stream=stream)
    eps *= sigma
    eps += flux
    return eps, sigma
