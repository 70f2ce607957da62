"""Reconstruction S/N: per spectrum over the kept pixels, ||flux|| / ||noisy - flux|| for the input and
||flux|| / ||denoised - flux|| for the model; a set is summarised by the median over spectra."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..common.device import resolve_device
from ..common.errors import FeatcacheError
from ..model.checkpoint import LoadedEncoder
from ..model.encoder import BlindspotModel1D, denoise
from ..spectra.inputs import NoiseSpec, consecutive_runs
from ..spectra.pfsspec import PfsDataset
from .data import read_block
from .losses import Batch, model_input, pretrain_loss

VAL_STREAM = 0  # validation noise: draw 0 of the seed, the same every epoch so epochs compare


@dataclass
class EvalResult:
    """Per-spectrum reconstruction S/N of a set, and the mean loss when one was asked for."""

    snr_noisy: np.ndarray
    snr_denoised: np.ndarray
    loss: float = math.nan

    @property
    def median_noisy(self) -> float:
        return float(np.median(self.snr_noisy)) if self.snr_noisy.size else math.nan

    @property
    def median_denoised(self) -> float:
        return float(np.median(self.snr_denoised)) if self.snr_denoised.size else math.nan

    @property
    def gain(self) -> float:
        """median denoised S/N over median noisy S/N."""
        return self.median_denoised / self.median_noisy




def _rows_list(rows: int | slice | Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    if rows is None:
        return np.arange(n)
    if isinstance(rows, int | np.integer):
        if rows < 0:
            raise FeatcacheError(f"rows must be >= 0, got {rows}")
        return np.arange(min(int(rows), n))
    if isinstance(rows, slice):
        return np.arange(n)[rows]
    out = np.asarray(rows, dtype=np.int64)
    if out.ndim != 1 or (out.size and (out.min() < 0 or out.max() >= n)):
        raise FeatcacheError(f"rows must be indices in 0..{n - 1}")
    return out


@torch.no_grad()
def evaluate(model: BlindspotModel1D | LoadedEncoder, dataset: PfsDataset | str | os.PathLike[str],
             rows: int | slice | Sequence[int] | np.ndarray | None = None, mask: np.ndarray | None = None, *,
             seed: int = 0, noise_level: float = 1.0, noise: str = "generated", stream: int = VAL_STREAM,
             loss: str | None = None, batch_size: int = 64, device: str | torch.device | None = None
             ) -> EvalResult:
    """Per-spectrum reconstruction S/N (kept pixels) of the model in eval mode, and the mean loss.

    Noise is drawn per row from (seed, row, stream), so the same rows give the same noisy input whatever
    the batch size or device; noise='stored' uses the file's noisy array (sigma = error).
    """
    if isinstance(model, LoadedEncoder):
        model = model.model
    own = not isinstance(dataset, PfsDataset)
    ds = PfsDataset(dataset) if own else dataset
    try:
        if mask is not None and mask.shape != (ds.n_pixels,):
            raise FeatcacheError(f"{ds.path}: mask has shape {mask.shape}, the data have {ds.n_pixels} pixels")
        idx = _rows_list(rows, ds.n_rows)
        spec = NoiseSpec("generated" if noise == "fresh" else noise, seed, noise_level)  # 'fresh': before 0.2
        dev = next(model.parameters()).device if device is None else resolve_device(device)
        was_training = model.training
        model.eval()
        snr_in, snr_out, loss_sum = [], [], 0.0
        try:
            for lo in range(0, len(idx), batch_size):
                chunk = idx[lo:lo + batch_size]
                batch = Batch.concatenate([read_block(ds, int(s), int(e), mask, spec, stream=stream, need_flux=True)
                                           for s, e in consecutive_runs(chunk)]).to(dev)
                out = model(model_input(batch.noisy, batch.sigma, model.config.input_sigma))
                est = denoise(out, batch.noisy, batch.sigma)
                assert batch.flux is not None
                norm = torch.linalg.vector_norm(batch.flux, dim=1)
                snr_in.append((norm / torch.linalg.vector_norm(batch.noisy - batch.flux, dim=1)).cpu())
                snr_out.append((norm / torch.linalg.vector_norm(est - batch.flux, dim=1)).cpu())
                if loss is not None:
                    loss_sum += float(pretrain_loss(loss, out, batch.noisy, batch.sigma, batch.flux)) * len(batch)
        finally:
            model.train(was_training)
        cat = (lambda xs: torch.cat(xs).double().numpy() if xs else np.empty(0))  # noqa: E731
        return EvalResult(cat(snr_in), cat(snr_out),
                          loss_sum / len(idx) if loss is not None and len(idx) else math.nan)
    finally:
        if own:
            ds.close()


def reconstruction_snr(model: BlindspotModel1D | LoadedEncoder, dataset: PfsDataset | str | os.PathLike[str],
                       rows: int | slice | Sequence[int] | np.ndarray | None = None,
                       mask: np.ndarray | None = None, seed: int = 0, noise_level: float = 1.0, *,
                       noise: str = "generated", batch_size: int = 64,
                       device: str | torch.device | None = None) -> tuple[float, float]:
    """(median S/N of the noisy input, median S/N of the denoised estimate) over the rows' spectra.

    Per spectrum, over the kept pixels: ||flux|| / ||noisy - flux|| and ||flux|| / ||denoised - flux||;
    the medians make the summary robust to the odd nearly-empty spectrum.
    """
    result = evaluate(model, dataset, rows, mask, seed=seed, noise_level=noise_level, noise=noise,
                      batch_size=batch_size, device=device)
    return result.median_noisy, result.median_denoised
