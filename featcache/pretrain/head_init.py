"""Starting the output head where the data are, so the first thousand steps are not spent walking there."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..model.encoder import BlindspotModel1D
from .losses import Batch


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
