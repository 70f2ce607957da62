"""Pretrain the full BlindspotModel1D with the original losses, so users can make their own encoders.

The data are streamed from HDF5 in row blocks (shuffled at block level, then within each block,
deterministically from the seed and the epoch), each epoch gets fresh noise keyed by (seed, epoch, row),
and every epoch ends with a checkpoint in the original Lightning layout (weights under `model.`) plus
the optimizer, scheduler and featcache metadata needed to resume to the same result.

Losses (out = model(x) = (mu_x, sigma_x), sigma_n = error * noise_level, var = sigma_x^2 + sigma_n^2):
- T1: Laplace NLL of the denoised estimate `denoise(out, noisy, sigma_n)` against the clean flux, with
  scale b = sqrt(var / 2): mean(|est - flux| / b + log(2b)).
- E1: Laplace NLL of mu_x against the noisy input, same b (self-supervised).
- E2: Gaussian NLL of mu_x against the noisy input: mean(0.5 (noisy - mu)^2 / var + 0.5 log var).

Reconstruction S/N, per spectrum over the kept (unmasked) pixels: ||flux|| / ||noisy - flux|| for the
input and ||flux|| / ||denoised - flux|| for the model; a set is summarised by the median over spectra.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .checkpoint import LoadedEncoder, _torch_load, save_checkpoint
from .data import PfsDataset
from .encoder import BlindspotModel1D, EncoderConfig, denoise
from .errors import FeatcacheError, choices_message
from .mask import load_mask_file, parse_mask_spec, quantile_mask
from .noise import add_noise, fresh_stream
from .progress import progress, status

LOSSES = ("T1", "E1", "E2")
NOISE_SOURCES = ("fresh", "stored")
DEVICES = ("auto", "cpu", "cuda")
LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "val_snr_noisy", "val_snr_denoised", "lr", "seconds")
VAL_STREAM = 0  # validation noise: draw 0 of the seed, the same every epoch so epochs compare
_VAR_FLOOR = 1e-12  # keeps log(var) finite where both sigma_x and the error are zero
_FLUX_SAMPLE_ROWS = 32  # rows checked up front for usable clean flux


@dataclass(frozen=True)
class PretrainRecipe:
    """How to train. 'auto' picks T1 and fresh noise when the train file has clean flux, else E2 on the
    file's stored noisy array. Fields in RESUME_FREE may change when resuming; the others must match."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    loss: str = "auto"  # auto | T1 | E1 | E2
    noise: str = "auto"  # auto | fresh | stored
    noise_level: float = 1.0
    seed: int = 0
    mask: str = "quantile:0.85"  # FILE.npy | quantile:R | none
    max_train: int | None = None  # the first N train rows
    max_val: int | None = None  # the first N val rows
    block_rows: int = 4096
    clip_grad: float = 1.0  # max gradient norm (0: no clipping)
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    min_lr: float = 1e-6
    time_limit: float | None = None  # minutes; stop after the epoch that passes it
    device: str = "auto"
    head_init: bool = True  # start mu_x and sigma_x at the data's flux level and spread (init_head)
    head_lr_mult: float = 10.0  # lr factor of the last BatchNorm (head_parameter_groups)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


RESUME_FREE = ("epochs", "time_limit", "device")


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


@dataclass
class PretrainResult:
    """What a pretraining run produced (the files) and how it went (per-epoch history)."""

    path: Path
    config: EncoderConfig
    recipe: PretrainRecipe
    epochs_done: int
    global_step: int
    history: list[dict[str, float]]
    stopped: str  # 'epochs' | 'time-limit' | 'already-done'
    seconds: float
    mask_path: Path
    log_path: Path
    yaml_path: Path
    n_kept: int

    @property
    def last(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


# -- files beside the checkpoint --------------------------------------------------------------------------
def mask_path_for(out: str | os.PathLike[str]) -> Path:
    """<stem>.mask.npy beside the checkpoint."""
    out = Path(out)
    return out.with_name(out.stem + ".mask.npy")


def log_path_for(out: str | os.PathLike[str]) -> Path:
    """<stem>.log.csv beside the checkpoint."""
    out = Path(out)
    return out.with_name(out.stem + ".log.csv")


def checkpoint_mask(ckpt: str | os.PathLike[str]) -> np.ndarray:
    """The wavelength mask a pretrained encoder was trained with (<stem>.mask.npy beside it)."""
    path = mask_path_for(ckpt)
    if not path.exists():
        raise FeatcacheError(f"{path}: no mask beside the checkpoint (pretrain writes <stem>.mask.npy)")
    return np.load(path, allow_pickle=False).astype(bool)


# -- losses -----------------------------------------------------------------------------------------------
def pretrain_loss(name: str, output: torch.Tensor, noisy: torch.Tensor, sigma_n: torch.Tensor,
                  flux: torch.Tensor | None = None) -> torch.Tensor:
    """The original T1 / E1 / E2 losses (see the module docstring), averaged over spectra and pixels."""
    mu_x, sigma_x = output[:, 0], output[:, 1]
    var = (sigma_x**2 + sigma_n**2).clamp_min(_VAR_FLOOR)
    if name == "E2":
        return (0.5 * (noisy - mu_x) ** 2 / var + 0.5 * torch.log(var)).mean()
    b = torch.sqrt(var / 2)
    if name == "E1":
        return ((noisy - mu_x).abs() / b + torch.log(2 * b)).mean()
    if name == "T1":
        if flux is None:
            raise FeatcacheError("loss T1 needs the clean flux")
        est = denoise(output, noisy, sigma_n)
        return ((est - flux).abs() / b + torch.log(2 * b)).mean()
    raise FeatcacheError(choices_message("loss", name, LOSSES))


def model_input(noisy: torch.Tensor, sigma: torch.Tensor, input_sigma: bool) -> torch.Tensor:
    """(B, 2, L) = [noisy, sigma] with input_sigma, else (B, 1, L)."""
    return torch.stack([noisy, sigma], dim=1) if input_sigma else noisy[:, None]


@dataclass
class Batch:
    """Masked model-ready arrays of some spectra (flux may be None without clean flux)."""

    noisy: torch.Tensor
    sigma: torch.Tensor
    flux: torch.Tensor | None

    def to(self, device: torch.device) -> Batch:
        nb = device.type == "cuda"
        return Batch(self.noisy.to(device, non_blocking=nb), self.sigma.to(device, non_blocking=nb),
                     None if self.flux is None else self.flux.to(device, non_blocking=nb))

    def __len__(self) -> int:
        return int(self.noisy.shape[0])

    def take(self, index: torch.Tensor | slice) -> Batch:
        return Batch(self.noisy[index], self.sigma[index], None if self.flux is None else self.flux[index])


def training_step(model: BlindspotModel1D, optimizer: torch.optim.Optimizer, batch: Batch, loss_name: str,
                  clip_grad: float = 1.0) -> float:
    """One Adam step on a batch (model in train mode); returns the batch loss."""
    output = model(model_input(batch.noisy, batch.sigma, model.config.input_sigma))
    loss = pretrain_loss(loss_name, output, batch.noisy, batch.sigma, batch.flux)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad and clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    return float(loss.detach())


def init_head(model: BlindspotModel1D, flux_level: float, flux_spread: float, sigma_level: float,
              sigma_spread: float) -> None:
    """Start the output head at mu_x ~ flux_level +- flux_spread and sigma_x ~ sigma_level +- sigma_spread.

    The head ends in BatchNorm -> LeakyReLU(0.1) -> Softplus, so with the default initialisation both
    outputs start near softplus(0) = 0.69 and only the last BatchNorm's scale and bias can move them:
    values below 0.69 sit on the 0.1 slope, where Adam needs thousands of steps to walk the bias down.
    Setting that scale and bias (the conv bias without BatchNorm) from the data starts training where
    the original long runs end up, without changing the architecture or the losses.
    """
    block = model.nin_layers[2]
    slope = float(block.act.negative_slope)
    with torch.no_grad():
        for ch, (value, spread) in enumerate(((flux_level, flux_spread), (sigma_level, sigma_spread))):
            value = max(float(value), 1e-3)
            y0 = math.log(math.expm1(value))  # softplus^-1
            dy = max(float(spread), 1e-4) / (1.0 / (1.0 + math.exp(-y0)))  # spread / softplus'(y0)
            beta, gamma = (y0, dy) if y0 >= 0 else (y0 / slope, dy / slope)
            if isinstance(block.bn, torch.nn.BatchNorm1d):
                block.bn.weight[ch] = gamma
                block.bn.bias[ch] = beta
            else:
                block.conv.bias[ch] = beta


def data_levels(batch: Batch) -> tuple[float, float, float, float]:
    """(mu_x level, spread, sigma_x level, spread) to start the head at, from some spectra (init_head).

    mu_x starts at the median flux over kept pixels (clean flux, else the noisy flux) with its robust
    spread; sigma_x, the model's uncertainty about the signal, starts at that spread too -- the error of a
    constant mu_x -- so the denoised estimate leans on mu_x from the start and mu_x gets full gradients.
    """
    signal = (batch.flux if batch.flux is not None else batch.noisy).double()
    q25, q50, q75 = (float(torch.quantile(signal.flatten()[:1_000_000], q)) for q in (0.25, 0.5, 0.75))
    spread = max((q75 - q25) / 1.349, 0.05 * abs(q50))
    if batch.flux is None:  # the noisy spread includes the noise: take it out
        noise = float(batch.sigma.double().pow(2).mean().sqrt())
        spread = max(math.sqrt(max(spread**2 - noise**2, 0.0)), 0.05 * abs(q50))
    return q50, spread, spread, 0.25 * spread


def head_parameter_groups(model: BlindspotModel1D, lr: float, mult: float) -> list[dict[str, Any]]:
    """Adam groups: the last BatchNorm (or conv bias) of the head at lr * mult, the rest at lr.

    Its outputs reach mu_x and sigma_x through LeakyReLU's 0.1 slope wherever they are below
    softplus(0) = 0.69 (always, for normalised flux), so at the common lr they would move 10x slower.
    """
    block = model.nin_layers[2]
    head = list(block.bn.parameters()) if isinstance(block.bn, torch.nn.BatchNorm1d) else [block.conv.bias]
    ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups: list[dict[str, Any]] = [{"params": rest, "lr": lr}]
    if mult != 1.0:
        groups.append({"params": head, "lr": lr * mult})
    else:
        groups[0]["params"] = list(model.parameters())
    return groups


# -- reading -----------------------------------------------------------------------------------------------
def read_block(ds: PfsDataset, start: int, stop: int, mask: np.ndarray | None, *, noise: str, seed: int,
               noise_level: float, stream: int, need_flux: bool) -> Batch:
    """Rows [start, stop): noise added over all P pixels (keyed by seed, row, stream), then the mask."""
    error = ds.read_error(start, stop)
    flux = ds.read_flux(start, stop) if (need_flux or noise == "fresh") else None
    if flux is not None and need_flux:
        empty = ~flux.any(axis=1)
        if empty.any():
            row = start + int(np.flatnonzero(empty)[0])
            raise FeatcacheError(f"{ds.path}: row {row} has no clean flux (all zero after the reading rules); "
                                 "T1 and fresh noise need clean flux for every spectrum")
    if noise == "fresh":
        assert flux is not None
        noisy, sigma = add_noise(flux, error, np.arange(start, stop), seed=seed, noise_level=noise_level,
                                 stream=stream)
    else:
        noisy, sigma = ds.read_noisy(start, stop), error
    if mask is not None:
        noisy, sigma = noisy[:, mask], sigma[:, mask]
        flux = flux[:, mask] if flux is not None else None
    as_t = torch.from_numpy
    return Batch(as_t(np.ascontiguousarray(noisy)), as_t(np.ascontiguousarray(sigma)),
                 None if flux is None or not need_flux else as_t(np.ascontiguousarray(flux)))


def flux_problem(ds: PfsDataset, n_rows: int | None = None) -> str | None:
    """Why the file has no usable clean flux (None when it has): rows sampled across the file."""
    n = ds.n_rows if n_rows is None else min(n_rows, ds.n_rows)
    if n == 0:
        return "it has no spectra"
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


def epoch_blocks(n_rows: int, block_rows: int, seed: int, epoch: int
                 ) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, within-block permutation) per row block, blocks in shuffled order.

    A function of (seed, epoch) only, so a resumed run sees the same order as an uninterrupted one.
    """
    rng = np.random.default_rng([int(seed), int(epoch), 0x5EED])
    starts = list(range(0, n_rows, block_rows))
    for b in rng.permutation(len(starts)):
        start = starts[b]
        stop = min(start + block_rows, n_rows)
        yield start, stop, rng.permutation(stop - start)


def _iterate_training(ds: PfsDataset, n_rows: int, mask: np.ndarray | None, recipe: PretrainRecipe,
                      epoch: int, need_flux: bool) -> Iterator[Batch]:
    """The epoch's batches: blocks in shuffled order, rows shuffled within; a block's tail is carried into
    the next block's first batch, so every batch but the epoch's last has batch_size spectra."""
    carry: Batch | None = None
    bs = recipe.batch_size
    for start, stop, perm in epoch_blocks(n_rows, recipe.block_rows, recipe.seed, epoch):
        block = read_block(ds, start, stop, mask, noise=recipe.noise, seed=recipe.seed,
                           noise_level=recipe.noise_level, stream=fresh_stream(epoch), need_flux=need_flux)
        block = block.take(torch.from_numpy(perm))
        if carry is not None:
            block = Batch(torch.cat([carry.noisy, block.noisy]), torch.cat([carry.sigma, block.sigma]),
                          None if block.flux is None else torch.cat([carry.flux, block.flux]))
        n_full = len(block) // bs * bs
        for i in range(0, n_full, bs):
            yield block.take(slice(i, i + bs))
        carry = block.take(slice(n_full, len(block))) if n_full < len(block) else None
    if carry is not None:
        yield carry


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


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise FeatcacheError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    if str(device).split(":")[0] not in ("cpu", "cuda"):
        raise FeatcacheError(choices_message("device", str(device), DEVICES))
    return torch.device(device)


@torch.no_grad()
def evaluate(model: BlindspotModel1D | LoadedEncoder, dataset: PfsDataset | str | os.PathLike[str],
             rows: int | slice | Sequence[int] | np.ndarray | None = None, mask: np.ndarray | None = None, *,
             seed: int = 0, noise_level: float = 1.0, noise: str = "fresh", stream: int = VAL_STREAM,
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
        dev = next(model.parameters()).device if device is None else _resolve_device(device)
        was_training = model.training
        model.eval()
        snr_in, snr_out, loss_sum = [], [], 0.0
        try:
            for lo in range(0, len(idx), batch_size):
                chunk = idx[lo:lo + batch_size]
                parts = [read_block(ds, int(s), int(e), mask, noise=noise, seed=seed, noise_level=noise_level,
                                    stream=stream, need_flux=True) for s, e in _runs(chunk)]
                batch = Batch(torch.cat([p.noisy for p in parts]), torch.cat([p.sigma for p in parts]),
                              torch.cat([p.flux for p in parts]))  # type: ignore[misc]
                batch = batch.to(dev)
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


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive row indices grouped into [start, stop) runs (in the given order)."""
    runs: list[tuple[int, int]] = []
    for r in rows.tolist():
        if runs and runs[-1][1] == r:
            runs[-1] = (runs[-1][0], r + 1)
        else:
            runs.append((r, r + 1))
    return runs


def reconstruction_snr(model: BlindspotModel1D | LoadedEncoder, dataset: PfsDataset | str | os.PathLike[str],
                       rows: int | slice | Sequence[int] | np.ndarray | None = None,
                       mask: np.ndarray | None = None, seed: int = 0, noise_level: float = 1.0, *,
                       noise: str = "fresh", batch_size: int = 64,
                       device: str | torch.device | None = None) -> tuple[float, float]:
    """(median S/N of the noisy input, median S/N of the denoised estimate) over the rows' spectra.

    Per spectrum, over the kept pixels: ||flux|| / ||noisy - flux|| and ||flux|| / ||denoised - flux||;
    the medians make the summary robust to the odd nearly-empty spectrum.
    """
    result = evaluate(model, dataset, rows, mask, seed=seed, noise_level=noise_level, noise=noise,
                      batch_size=batch_size, device=device)
    return result.median_noisy, result.median_denoised


# -- the training run ---------------------------------------------------------------------------------------
def _make_mask(spec_text: str, ds: PfsDataset, n_rows: int) -> np.ndarray:
    spec = parse_mask_spec(spec_text)
    if spec.kind == "none":
        return np.ones(ds.n_pixels, dtype=bool)
    if spec.kind == "file":
        assert spec.path is not None
        return load_mask_file(spec.path, ds.n_pixels)
    status(f"mask {spec.text}: median error of {n_rows} train spectra per pixel")
    assert spec.ratio is not None
    return quantile_mask(ds.read_error, n_rows, ds.n_pixels, spec.ratio)


def _check_recipe(recipe: PretrainRecipe) -> None:
    checks = [(recipe.epochs >= 0, f"epochs must be >= 0, got {recipe.epochs}"),
              (recipe.batch_size >= 1, f"batch size must be >= 1, got {recipe.batch_size}"),
              (recipe.lr > 0, f"learning rate must be > 0, got {recipe.lr}"),
              (recipe.noise_level > 0, f"noise level must be > 0, got {recipe.noise_level}"),
              (recipe.block_rows >= 1, f"block rows must be >= 1, got {recipe.block_rows}"),
              (recipe.max_train is None or recipe.max_train >= 1,
               f"--max-train must be >= 1, got {recipe.max_train}"),
              (recipe.max_val is None or recipe.max_val >= 1, f"--max-val must be >= 1, got {recipe.max_val}"),
              (0 <= recipe.seed < 2**63, f"seed must be in 0..2**63-1, got {recipe.seed}"),
              (0 < recipe.plateau_factor < 1, f"plateau factor must be in (0, 1), got {recipe.plateau_factor}")]
    for ok, message in checks:
        if not ok:
            raise FeatcacheError(message)
    if recipe.loss not in ("auto", *LOSSES):
        raise FeatcacheError(choices_message("loss", recipe.loss, ("auto", *LOSSES)))
    if recipe.noise not in ("auto", *NOISE_SOURCES):
        raise FeatcacheError(choices_message("noise source", recipe.noise, ("auto", *NOISE_SOURCES)))
    if str(recipe.device).split(":")[0] not in DEVICES:
        raise FeatcacheError(choices_message("device", str(recipe.device), DEVICES))
    parse_mask_spec(recipe.mask)


def resolve_recipe(recipe: PretrainRecipe, train: PfsDataset) -> PretrainRecipe:
    """Replace 'auto' loss and noise by what the train file supports, and refuse what it cannot do."""
    n = min(recipe.max_train or train.n_rows, train.n_rows)
    problem = flux_problem(train, n)
    loss, noise = recipe.loss, recipe.noise
    if loss == "auto":
        loss = "T1" if problem is None else "E2"
    if noise == "auto":
        noise = "fresh" if problem is None else "stored"
    if problem is not None and (loss == "T1" or noise == "fresh"):
        what = "--loss T1 (against clean flux)" if loss == "T1" else "fresh noise (flux + noise)"
        raise FeatcacheError(f"{train.path}: {what} needs clean flux, but {problem}; use --loss E1 or E2 "
                             "with --noise stored on a file with a noisy array")
    if noise == "stored":
        if not train.has_noisy:
            raise FeatcacheError(f"{train.path}: --noise stored needs a 'noisy' array, the file has "
                                 f"{', '.join(train.arrays)}" + (f" ({problem})" if problem else ""))
        if recipe.noise_level != 1.0:
            raise FeatcacheError(f"--noise-level {recipe.noise_level:g} applies to fresh noise only; a stored "
                                 "noisy array comes with its error as sigma (noise level 1)")
    return replace(recipe, loss=loss, noise=noise)


def _check_data(train: PfsDataset, val: PfsDataset | None, recipe: PretrainRecipe) -> None:
    if train.n_rows == 0:
        raise FeatcacheError(f"{train.path}: no spectra to train on")
    if val is not None:
        if val.n_pixels != train.n_pixels:
            raise FeatcacheError(f"shape mismatch: train {train.path} has {train.n_pixels} pixels per spectrum, "
                                 f"val {val.path} has {val.n_pixels}")
        if not np.allclose(val.wave, train.wave, rtol=1e-6, atol=1e-6):
            raise FeatcacheError(f"{val.path}: its wavelength grid differs from the train file's")
        if val.n_rows == 0:
            raise FeatcacheError(f"{val.path}: no validation spectra")
        problem = flux_problem(val, recipe.max_val)
        if problem is not None:
            raise FeatcacheError(f"{val.path}: validation S/N needs clean flux, but {problem}")
        if recipe.noise == "stored" and not val.has_noisy:
            raise FeatcacheError(f"{val.path}: --noise stored needs a 'noisy' array in the val file too")


def _check_mask(mask: np.ndarray, train: PfsDataset, config: EncoderConfig) -> None:
    if mask.shape != (train.n_pixels,):
        raise FeatcacheError(f"mask has shape {mask.shape}, the data have {train.n_pixels} pixels")
    kept = int(mask.sum())
    need = 2 ** (config.num_layers - 1)
    if kept < need:
        raise FeatcacheError(f"the mask keeps {kept} pixels, too few for num_layers {config.num_layers} "
                             f"(each of its {config.num_layers - 1} poolings halves the length: needs >= {need})")


def _write_log(path: Path, history: list[dict[str, float]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(LOG_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in LOG_COLUMNS})
    os.replace(tmp, path)


def read_log(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The per-epoch metrics a run wrote to <stem>.log.csv."""
    with open(path, newline="") as handle:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(handle)]


def load_resume_state(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint dict of an earlier pretrain run (with its 'featcache' metadata) to resume from."""
    out = Path(out)
    if not out.exists():
        raise FeatcacheError(f"--resume: {out} does not exist (nothing to resume; drop --resume to start)")
    state = _torch_load(out)
    meta = state.get("featcache") if isinstance(state, dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != "pretrain" or "optimizer_states" not in state:
        raise FeatcacheError(f"--resume: {out} was not written by featcache pretrain (no optimizer state and "
                             "pretrain metadata to continue from)")
    return state


def saved_settings(state: dict[str, Any]) -> tuple[EncoderConfig, PretrainRecipe]:
    """The architecture and recipe stored in a pretrain checkpoint's metadata."""
    meta = state["featcache"]
    names = {f.name for f in fields(PretrainRecipe)}
    recipe = PretrainRecipe(**{k: v for k, v in meta["recipe"].items() if k in names})
    return EncoderConfig(**meta["config"]), recipe


def _recipe_differences(saved: PretrainRecipe, wanted: PretrainRecipe) -> list[str]:
    diffs = []
    for f in fields(PretrainRecipe):
        if f.name in RESUME_FREE:
            continue
        a, b = getattr(saved, f.name), getattr(wanted, f.name)
        if a != b:
            diffs.append(f"{f.name.replace('_', '-')} {b!r} (saved {a!r})")
    return diffs


def _to_cpu(obj: Any) -> Any:
    """Optimizer state with every tensor on the CPU, so a GPU run resumes anywhere."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _plain(value: Any) -> Any:
    """Python floats/ints for metadata, so torch.load(weights_only=True) reads the checkpoint."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def pretrain(train_path: str | os.PathLike[str], val_path: str | os.PathLike[str] | None,
             out: str | os.PathLike[str], config: EncoderConfig | None = None,
             recipe: PretrainRecipe | None = None, *, resume: bool = False,
             overwrite: bool = False) -> PretrainResult:
    """Train BlindspotModel1D on train_path (validating on val_path each epoch) and write `out`.

    Every epoch rewrites `out` (original layout + optimizer/scheduler/metadata for --resume), its YAML,
    <stem>.mask.npy and <stem>.log.csv. The plateau schedule follows the validation loss (the train loss
    without val_path). With resume=True the run continues from `out` up to recipe.epochs in total; the
    architecture and the recipe (bar epochs, time_limit, device) must match.
    """
    recipe = recipe or PretrainRecipe()
    _check_recipe(recipe)
    out = Path(out)
    if out.suffix != ".ckpt":
        raise FeatcacheError(f"--out {out}: expected a .ckpt file name")
    state: dict[str, Any] | None = None
    if resume:
        state = load_resume_state(out)
    elif out.exists() and not overwrite:
        raise FeatcacheError(f"--out {out} exists: pass --resume to continue it or --overwrite to start again")
    device = _resolve_device(recipe.device)
    started = time.monotonic()

    with PfsDataset(train_path) as train, (PfsDataset(val_path) if val_path else nullcontext()) as val:
        recipe = resolve_recipe(recipe, train)
        _check_data(train, val, recipe)
        n_train = min(recipe.max_train or train.n_rows, train.n_rows)
        n_val = min(recipe.max_val or val.n_rows, val.n_rows) if val is not None else 0
        if state is not None:
            saved_config, saved_recipe = saved_settings(state)
            if config is not None and config != saved_config:
                raise FeatcacheError(f"--resume: {out} is a {saved_config.tag} model, the options ask for "
                                     f"{config.tag}")
            config = saved_config
            diffs = _recipe_differences(saved_recipe, recipe)
            if diffs:
                raise FeatcacheError(f"--resume: the recipe differs from {out.name}'s: " + "; ".join(diffs))
            mask = state["featcache"]["mask"].numpy().astype(bool)
            before = state["featcache"]
            if (before.get("train"), before.get("n_train")) != (str(train_path), n_train):
                status(f"note: {out.name} was trained on {before.get('n_train')} spectra of {before.get('train')}, "
                       f"resuming on {n_train} of {train_path}")
        else:
            config = config or EncoderConfig()
            mask = _make_mask(recipe.mask, train, n_train)
        _check_mask(mask, train, config)
        need_flux = recipe.loss == "T1"

        model = _new_model(config, recipe.seed).to(device)
        optimizer = torch.optim.Adam(head_parameter_groups(model, recipe.lr, recipe.head_lr_mult), lr=recipe.lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=recipe.plateau_factor, patience=recipe.plateau_patience,
            min_lr=recipe.min_lr)
        history: list[dict[str, float]] = []
        epochs_done, global_step, seconds_before = 0, 0, 0.0
        if state is None and recipe.head_init:
            probe = read_block(train, 0, min(n_train, 256), mask, noise=recipe.noise, seed=recipe.seed,
                               noise_level=recipe.noise_level, stream=fresh_stream(0), need_flux=need_flux)
            levels = data_levels(probe)
            init_head(model, *levels)
            status("head init: mu_x ~ {:.3g} +- {:.2g}, sigma_x ~ {:.3g} +- {:.2g}".format(*levels))
        if state is not None:
            model.load_state_dict({k[len("model."):]: v for k, v in state["state_dict"].items()
                                   if k.startswith("model.")}, strict=True)
            optimizer.load_state_dict(state["optimizer_states"][0])
            scheduler.load_state_dict(state["lr_schedulers"][0])
            meta = state["featcache"]
            epochs_done, global_step = int(meta["epochs_done"]), int(state.get("global_step", 0))
            history = [dict(row) for row in meta.get("history", [])]
            seconds_before = float(meta.get("seconds", 0.0))
            status(f"resuming {out} after epoch {epochs_done} (step {global_step})")

        mask_path, log_path, yaml_path = mask_path_for(out), log_path_for(out), out.with_suffix(".yaml")
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(mask_path, mask)
        kept = int(mask.sum())
        status(f"pretrain {config.tag} on {n_train} spectra of {train.path.name} ({kept} of {train.n_pixels} "
               f"pixels kept), loss {recipe.loss}, {recipe.noise} noise, device {device.type}")

        def save() -> None:
            meta = {"kind": "pretrain", "featcache_version": __version__, "torch_version": str(torch.__version__),
                    "config": config.as_dict(), "recipe": {k: _plain(v) for k, v in recipe.as_dict().items()},
                    "epochs_done": epochs_done, "mask": torch.from_numpy(mask.copy()),
                    "mask_spec": recipe.mask, "n_kept": kept, "n_pixels": int(train.n_pixels),
                    "train": str(train_path), "val": str(val_path) if val_path else None,
                    "n_train": n_train, "n_val": n_val, "history": history,
                    "seconds": seconds_before + (time.monotonic() - started)}
            extra = {"optimizer_states": [_to_cpu(optimizer.state_dict())],
                     "lr_schedulers": [scheduler.state_dict()],
                     "featcache": meta}
            spec = parse_mask_spec(recipe.mask)
            mask_cfg: dict[str, Any] = {"mask_ratio": spec.ratio} if spec.kind == "quantile" else {}
            config_extra = {"mask": mask_cfg, "noise": {"noise_level": recipe.noise_level},
                            "featcache": {"mask_file": mask_path.name, "mask": recipe.mask, "n_kept": kept,
                                          "loss": recipe.loss, "noise": recipe.noise, "seed": recipe.seed,
                                          "epochs_done": epochs_done, "train": str(train_path),
                                          "val": str(val_path) if val_path else None}}
            save_checkpoint(model, out, epoch=epochs_done, global_step=global_step, extra=extra,
                            config_extra=config_extra)
            _write_log(log_path, history)

        stopped = "epochs"
        if epochs_done >= recipe.epochs:
            stopped = "already-done"
            status(f"{out} already has {epochs_done} epochs (asked for {recipe.epochs}): nothing to do")
            save()  # refresh the side files (mask, YAML, log) from the checkpoint
        n_batches = math.ceil(n_train / recipe.batch_size)
        epoch_bar = progress(total=recipe.epochs, initial=epochs_done, desc="pretrain", unit="epoch")
        try:
            while epochs_done < recipe.epochs:
                epoch = epochs_done  # 0-based index of the epoch being trained
                t0 = time.monotonic()
                lr = float(optimizer.param_groups[0]["lr"])
                model.train()
                total, count = 0.0, 0
                with progress(total=n_batches, desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="batch") as bar:
                    for batch in _iterate_training(train, n_train, mask, recipe, epoch, need_flux):
                        loss = training_step(model, optimizer, batch.to(device), recipe.loss, recipe.clip_grad)
                        if not math.isfinite(loss):
                            raise FeatcacheError(f"the loss became {loss} at epoch {epoch + 1}, step "
                                                 f"{global_step + 1}; lower --lr or check the data")
                        total += loss * len(batch)
                        count += len(batch)
                        global_step += 1
                        bar.update(1)
                        bar.set_postfix(loss=f"{total / count:.4f}")
                train_loss = total / max(count, 1)
                row: dict[str, float] = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": math.nan,
                                         "val_snr_noisy": math.nan, "val_snr_denoised": math.nan, "lr": lr}
                if val is not None:
                    ev = evaluate(model, val, n_val, mask, seed=recipe.seed, noise_level=recipe.noise_level,
                                  noise=recipe.noise, loss=recipe.loss, batch_size=max(recipe.batch_size, 64),
                                  device=device)
                    row.update(val_loss=ev.loss, val_snr_noisy=ev.median_noisy,
                               val_snr_denoised=ev.median_denoised)
                scheduler.step(row["val_loss"] if val is not None else train_loss)
                row["seconds"] = time.monotonic() - t0
                history.append(row)
                epochs_done += 1
                save()
                epoch_bar.update(1)
                epoch_bar.set_postfix(loss=f"{train_loss:.4f}", val_snr=f"{row['val_snr_denoised']:.1f}")
                status(_epoch_line(row, recipe.epochs))
                elapsed_min = (time.monotonic() - started) / 60
                if recipe.time_limit is not None and elapsed_min >= recipe.time_limit \
                        and epochs_done < recipe.epochs:
                    stopped = "time-limit"
                    status(f"time limit {recipe.time_limit:g} min passed ({elapsed_min:.1f} min): stopping after "
                           f"epoch {epochs_done}; continue with --resume")
                    break
        finally:
            epoch_bar.close()
        return PretrainResult(path=out, config=config, recipe=recipe, epochs_done=epochs_done,
                              global_step=global_step, history=history, stopped=stopped,
                              seconds=seconds_before + time.monotonic() - started, mask_path=mask_path,
                              log_path=log_path, yaml_path=yaml_path, n_kept=kept)


def _epoch_line(row: dict[str, float], epochs: int) -> str:
    text = f"epoch {int(row['epoch'])}/{epochs}: train loss {row['train_loss']:.4f}"
    if math.isfinite(row["val_loss"]):
        text += (f", val loss {row['val_loss']:.4f}, val S/N {row['val_snr_noisy']:.2f} -> "
                 f"{row['val_snr_denoised']:.2f} ({row['val_snr_denoised'] / row['val_snr_noisy']:.2f}x)")
    return text + f", lr {row['lr']:.3g}, {row['seconds']:.1f} s"


def _new_model(config: EncoderConfig, seed: int) -> BlindspotModel1D:
    """PyTorch's default initialisation under the seed, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BlindspotModel1D(config)
