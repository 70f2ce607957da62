"""The original blind-spot losses, the model's input, and one optimiser step.

Losses (out = model(x) = (mu_x, sigma_x), sigma_n = error * noise_level, var = sigma_x^2 + sigma_n^2):
- T1: Laplace NLL of the denoised estimate `denoise(out, noisy, sigma_n)` against the clean flux, with
  scale b = sqrt(var / 2): mean(|est - flux| / b + log(2b)).
- E1: Laplace NLL of mu_x against the noisy input, same b (self-supervised).
- E2: Gaussian NLL of mu_x against the noisy input: mean(0.5 (noisy - mu)^2 / var + 0.5 log var).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..common.errors import FeatcacheError, choices_message
from ..model.encoder import BlindspotModel1D, denoise
from ..spectra.inputs import Inputs
from .recipe import LOSSES

if TYPE_CHECKING:
    from .auxiliary import AuxObjective

_VAR_FLOOR = 1e-12  # keeps log(var) finite where both sigma_x and the error are zero


def _variance(output: torch.Tensor, sigma_n: torch.Tensor) -> torch.Tensor:
    return (output[:, 1] ** 2 + sigma_n**2).clamp_min(_VAR_FLOOR)


def loss_e2(output: torch.Tensor, noisy: torch.Tensor, sigma_n: torch.Tensor, flux: torch.Tensor | None
            ) -> torch.Tensor:
    """E2: Gaussian NLL of mu_x against the noisy input (self-supervised)."""
    var = _variance(output, sigma_n)
    return (0.5 * (noisy - output[:, 0]) ** 2 / var + 0.5 * torch.log(var)).mean()


def loss_e1(output: torch.Tensor, noisy: torch.Tensor, sigma_n: torch.Tensor, flux: torch.Tensor | None
            ) -> torch.Tensor:
    """E1: Laplace NLL of mu_x against the noisy input, scale b = sqrt(var / 2) (self-supervised)."""
    b = torch.sqrt(_variance(output, sigma_n) / 2)
    return ((noisy - output[:, 0]).abs() / b + torch.log(2 * b)).mean()


def loss_t1(output: torch.Tensor, noisy: torch.Tensor, sigma_n: torch.Tensor, flux: torch.Tensor | None
            ) -> torch.Tensor:
    """T1: Laplace NLL of the denoised estimate against the clean flux (needs a file with clean flux)."""
    if flux is None:
        raise FeatcacheError("loss T1 needs the clean flux")
    b = torch.sqrt(_variance(output, sigma_n) / 2)
    return ((denoise(output, noisy, sigma_n) - flux).abs() / b + torch.log(2 * b)).mean()


# the losses by name (a new loss: one function and one entry; its name joins recipe.LOSSES, docs/extending.md)
LOSS_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {"T1": loss_t1, "E1": loss_e1, "E2": loss_e2}


def pretrain_loss(name: str, output: torch.Tensor, noisy: torch.Tensor, sigma_n: torch.Tensor,
                  flux: torch.Tensor | None = None) -> torch.Tensor:
    """The original T1 / E1 / E2 losses (see the module docstring), averaged over spectra and pixels."""
    if name not in LOSS_FUNCTIONS:
        raise FeatcacheError(choices_message("loss", name, LOSSES))
    return LOSS_FUNCTIONS[name](output, noisy, sigma_n, flux)


def model_input(noisy: torch.Tensor, sigma: torch.Tensor, input_sigma: bool) -> torch.Tensor:
    """(B, 2, L) = [noisy, sigma] with input_sigma, else (B, 1, L)."""
    return torch.stack([noisy, sigma], dim=1) if input_sigma else noisy[:, None]


@dataclass
class Batch:
    """Masked model-ready arrays of some spectra (flux may be None without clean flux)."""

    noisy: torch.Tensor
    sigma: torch.Tensor
    flux: torch.Tensor | None
    rows: torch.Tensor | None = None  # each spectrum's row in its file (on the CPU: the auxiliary loss's labels)

    def to(self, device: torch.device) -> Batch:
        nb = device.type == "cuda"
        return Batch(self.noisy.to(device, non_blocking=nb), self.sigma.to(device, non_blocking=nb),
                     None if self.flux is None else self.flux.to(device, non_blocking=nb), self.rows)

    def __len__(self) -> int:
        return int(self.noisy.shape[0])

    def take(self, index: torch.Tensor | slice) -> Batch:
        return Batch(self.noisy[index], self.sigma[index], None if self.flux is None else self.flux[index],
                     None if self.rows is None else self.rows[index])

    @classmethod
    def from_inputs(cls, inputs: Inputs, first_row: int | None = None) -> Batch:
        """A batch of read_inputs' arrays; first_row: the file row of the first spectrum (rows consecutive)."""
        as_t = torch.from_numpy
        rows = None if first_row is None else torch.arange(first_row, first_row + inputs.noisy.shape[0])
        return cls(as_t(inputs.noisy), as_t(inputs.sigma), None if inputs.flux is None else as_t(inputs.flux), rows)

    @staticmethod
    def concatenate(parts: list[Batch]) -> Batch:
        flux = None if any(p.flux is None for p in parts) else torch.cat([p.flux for p in parts])  # type: ignore[misc]
        rows = None if any(p.rows is None for p in parts) else torch.cat([p.rows for p in parts])  # type: ignore[misc]
        return Batch(torch.cat([p.noisy for p in parts]), torch.cat([p.sigma for p in parts]), flux, rows)


def training_step(model: BlindspotModel1D, optimizer: torch.optim.Optimizer, batch: Batch, loss_name: str,
                  grad_clip: float = 1.0, aux: AuxObjective | None = None) -> float:
    """One Adam step on a batch (model in train mode); returns the loss the encoder minimised: the blind-spot
    loss, plus LAMBDA x the auxiliary MSE over the batch's labelled rows with an auxiliary objective."""
    taps = [aux.tap] if aux is not None else []
    output, maps = model.forward_with_taps(model_input(batch.noisy, batch.sigma, model.config.input_sigma), taps)
    loss = pretrain_loss(loss_name, output, batch.noisy, batch.sigma, batch.flux)
    optimizer.zero_grad(set_to_none=True)
    mse = aux.loss(maps[aux.tap], batch.rows) if aux is not None else None
    (loss if mse is None else loss + mse).backward()  # the head's input scales the encoder's share by LAMBDA
    if grad_clip and grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if aux is not None:
        aux.step(grad_clip)
    value = float(loss.detach())
    return value if mse is None else value + float(aux.recipe.aux_weight) * float(mse.detach())  # type: ignore[union-attr]
