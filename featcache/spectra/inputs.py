"""The one input stage: rows of a file -> the encoder's masked (noisy flux, sigma) input.

extract, finetune and pretrain all read spectra through `read_inputs`, so the reading rules, the noise and
the mask are applied in one order everywhere: flux NaN -> 0 and negatives -> 0, error NaNs filled from the
nearest valid pixel; noise drawn over all P pixels from (seed, file row, stream) -- or the file's stored
`noisy` array, whose sigma channel is then the error itself; then the mask removes pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..common.constraints import SEED, Interval, StrOptions, validate
from .noise import add_noise
from .pfsspec import PfsDataset

NOISE_MODES = ("generated", "stored")


@dataclass(frozen=True)
class NoiseSpec:
    """Where the noisy flux comes from: `generated` = flux + eps * error * level with eps keyed by
    (seed, row, stream), or `stored` = the file's own noisy array (seed and level do not apply)."""

    mode: str = "generated"
    seed: int = 42
    level: float = 1.0

    constraints = {"mode": StrOptions(NOISE_MODES), "seed": SEED,
                   "level": Interval(float, 0, None, closed="neither", text="a positive finite number")}
    flags = {"mode": "--noise", "seed": "--noise-seed", "level": "--noise-level"}

    def validate(self) -> NoiseSpec:
        validate(self)
        return self

    @property
    def generated(self) -> bool:
        return self.mode == "generated"


@dataclass
class Inputs:
    """Masked rows of a file, float32 (n, P_kept): the noisy flux, the sigma channel, the clean flux if read."""

    noisy: np.ndarray
    sigma: np.ndarray
    flux: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.noisy.shape[0])

    def encoder_input(self, input_sigma: bool) -> np.ndarray:
        """(n, C, P_kept): [noisy, sigma] with an input_sigma encoder, else [noisy]."""
        channels = [self.noisy, self.sigma] if input_sigma else [self.noisy]
        return np.ascontiguousarray(np.stack(channels, axis=1))

    @staticmethod
    def concatenate(parts: list[Inputs]) -> Inputs:
        if len(parts) == 1:
            return parts[0]
        flux = None if any(p.flux is None for p in parts) else np.concatenate([p.flux for p in parts])  # type: ignore[misc]
        return Inputs(np.concatenate([p.noisy for p in parts]), np.concatenate([p.sigma for p in parts]), flux)


def read_inputs(ds: PfsDataset, start: int, stop: int, mask: np.ndarray | None, noise: NoiseSpec, *,
                stream: int = 0, need_flux: bool = False) -> Inputs:
    """File rows [start, stop): reading rules, noise over all P pixels, then the mask (None keeps all)."""
    error = ds.read_error(start, stop)
    flux = ds.read_flux(start, stop) if (need_flux or noise.generated) else None
    if noise.generated:
        assert flux is not None
        noisy, sigma = add_noise(flux, error, np.arange(start, stop), seed=noise.seed, noise_level=noise.level,
                                 stream=stream)
    else:
        noisy, sigma = ds.read_noisy(start, stop), error
    if mask is not None:
        noisy, sigma = noisy[:, mask], sigma[:, mask]
        flux = flux[:, mask] if flux is not None else None
    return Inputs(np.ascontiguousarray(noisy), np.ascontiguousarray(sigma),
                  np.ascontiguousarray(flux) if (flux is not None and need_flux) else None)


def consecutive_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """File rows (in the given order) grouped into [start, stop) runs of consecutive rows: one read each."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    parts = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)
    return [(int(part[0]), int(part[-1]) + 1) for part in parts]


def read_rows(ds: PfsDataset, rows: np.ndarray, mask: np.ndarray | None, noise: NoiseSpec, *, stream: int,
              need_flux: bool = False) -> Inputs:
    """read_inputs of any file rows (a subset of a split), run by run: the noise is keyed by each row, so a row
    gets the same draw read alone or in a block."""
    return Inputs.concatenate([read_inputs(ds, a, b, mask, noise, stream=stream, need_flux=need_flux)
                               for a, b in consecutive_runs(rows)])
