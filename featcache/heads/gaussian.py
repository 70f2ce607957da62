"""Heads that give each star an uncertainty: a mean and a standard deviation per target (Gaussian NLL).

`mlp_1_gauss` is mlp_1 with 2T outputs: columns 0..T-1 are the mean, columns T..2T-1 go through softplus
plus a floor to give sigma (both in standardised target units inside the head). Training is stable because
it starts as plain regression: the first `warmup` epochs train the mean with MSE (sigma untouched), then the
sigma outputs are warm-started to the train residual RMS of each target (weights zero, bias at the inverse
softplus), and from there the loss is the Gaussian negative log-likelihood of mean and sigma together.
The floor (SIGMA_FLOOR of the target's train std) keeps one confidently fitted train row from driving sigma to
zero and the loss to minus infinity.

After training, sigma is multiplied by one scale per target chosen on the validation rows (the closed-form
minimiser of the validation NLL; the epoch is chosen by that calibrated validation NLL too); test never
takes part. metrics.json records it as chosen.sigma_scale.

The module stays a plain nn.Sequential (stable state-dict keys '0.weight', '3.bias'), so saving, loading and
the training loop treat it like the other MLPs; its loss, schedule metric and early-stopping score are its
`objective` (GaussianObjective), which the heads' one loop asks every module for.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .dropout import Dropout
from .entry import register
from .loop import Objective, regression_scores
from .mlp import TorchHead

SIGMA_FLOOR = 1e-2      # in units of the target's train std
WARMUP_EPOCHS = 5       # MSE epochs before the NLL (fewer when max_epochs is small: at least one NLL epoch)
LOG_2PI = math.log(2.0 * math.pi)


class GaussianMLP(nn.Sequential):
    """Layers ending in Linear(h, 2T): the mean and the pre-softplus sigma of each of T targets."""

    def __init__(self, *layers: nn.Module, n_targets: int):
        super().__init__(*layers)
        self.n_targets = int(n_targets)
        # per target, set once after training from the validation rows (see calibrate_on); 1 while training
        self.register_buffer("sigma_scale", torch.ones(self.n_targets))

    def objective(self, max_epochs: int) -> GaussianObjective:
        """How the heads' loop trains it (heads.loop): warm-up, NLL, scores."""
        return GaussianObjective(max_epochs)

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, sigma) of a forward's output, sigma = (softplus(raw) + floor) x the validation scale."""
        t = self.n_targets
        return out[:, :t], (nn.functional.softplus(out[:, t:]) + SIGMA_FLOOR) * self.sigma_scale

    def nll(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean Gaussian negative log-likelihood over rows and targets (standardised units)."""
        mean, sigma = self.split(out)
        return gaussian_nll_torch(y, mean, sigma).mean()

    def calibrated_nll(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean NLL after the best per-target sigma scale, that scale): s^2 = mean(z^2) minimises the NLL of
        s x sigma in closed form. On validation rows this is what chooses the epoch and sets sigma_scale: a
        head whose mean fits train more closely than new rows learns too small a sigma on train (seen on the
        3481-pixel raw flux: std(z) 2.5 on test without it), and the scale is the one number that corrects it."""
        mean, sigma = self.split(out)
        z = (y - mean) / sigma
        scale = torch.sqrt((z * z).mean(dim=0)).clamp(min=1e-6)
        return gaussian_nll_torch(y, mean, sigma * scale).mean(), scale

    @torch.no_grad()
    def warm_start_sigma(self, rms: torch.Tensor) -> None:
        """Set every row's sigma to the train residual RMS of its target: the sigma weights to zero and
        the bias to softplus^-1(rms - floor), so the NLL phase starts from a calibrated constant."""
        last = self[-1]
        t = self.n_targets
        target = (rms.to(last.bias) - SIGMA_FLOOR).clamp(min=1e-4)
        last.weight[t:].zero_()
        last.bias[t:] = target + torch.log(-torch.expm1(-target))  # inverse softplus


def gaussian_nll_torch(y: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-element 0.5 log(2 pi sigma^2) + 0.5 ((y - mean) / sigma)^2 (the one formula; metrics.py has its
    NumPy twin for reports)."""
    z = (y - mean) / sigma
    return 0.5 * LOG_2PI + torch.log(sigma) + 0.5 * z * z


def warmup_epochs(max_epochs: int) -> int:
    """MSE epochs before the NLL: WARMUP_EPOCHS, but always leave at least one NLL epoch."""
    return max(0, min(WARMUP_EPOCHS, int(max_epochs) - 1))


class GaussianObjective(Objective):
    """MSE on the mean for the warm-up epochs (their scores are never kept), then sigma warm-started to the
    train residual RMS and the Gaussian NLL; scheduled and early-stopped on the calibrated validation NLL."""

    def __init__(self, max_epochs: int):
        self.warm = warmup_epochs(max_epochs)
        self.nll_phase = False

    def begin_epoch(self, epoch: int, model: nn.Module, rows: Any, batch_size: int) -> bool:
        self.nll_phase = epoch > self.warm
        if self.nll_phase and epoch == self.warm + 1:
            warm_start_from_rows(model, rows, batch_size)
            return True  # the plateau schedule starts again on the NLL
        return False

    def loss(self, model: nn.Module, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model.nll(out, y) if self.nll_phase else nn.functional.mse_loss(model.split(out)[0], y)

    def val_scores(self, model: nn.Module, out: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, r2 = regression_scores(model.split(out)[0], y)
        return loss, r2, model.calibrated_nll(out, y)[0].double()

    def schedule_metric(self, train_loss: float, val: tuple[float, float, float] | None) -> float:
        return train_loss if val is None else (val[2] if self.nll_phase else val[0])

    def score(self, val: tuple[float, float, float] | None) -> float | None:
        return None if val is None or not self.nll_phase else -val[2]

    def history_extra(self, val: tuple[float, float, float] | None) -> dict[str, float]:
        return {"val_nll": float("nan") if val is None else val[2]}

    def finish(self, model: nn.Module, rows: Any, batch_size: int) -> None:
        """The sigma scale of the kept weights, from the validation rows."""
        if rows.has_val:
            with torch.inference_mode():
                outs, ys = zip(*[(model(xb), yb) for xb, yb in rows.val_blocks(batch_size)], strict=True)
                model.sigma_scale.copy_(model.calibrated_nll(torch.cat(outs), torch.cat(ys))[1])

    def best_val_r2(self, best_epoch: int, best_score: float, history: list[dict[str, float]],
                    has_val: bool) -> float | None:
        """Chosen on validation NLL: that epoch's validation R2."""
        return next((h["val_r2"] for h in history if h["epoch"] == best_epoch), None) if has_val else None


def warm_start_from_rows(model: GaussianMLP, rows: Any, batch_size: int) -> None:
    """Sigma starts at the train residual RMS of the warmed-up mean (per target)."""
    model.eval()
    with torch.inference_mode():
        sse: torch.Tensor | int = 0
        for xb, yb in rows.train_blocks(batch_size):
            mean = model.split(model(xb))[0]
            sse = sse + ((mean - yb).double() ** 2).sum(dim=0)
    model.train()
    model.warm_start_sigma((sse / rows.n_train).sqrt().float())


class GaussianHead(TorchHead):
    """`mlp_1_gauss`: mlp_1 giving a mean and a sigma per target."""

    name = "mlp_1_gauss"
    description = "mlp_1 giving a mean and a sigma per target, Gaussian NLL after an MSE warm-up"
    uncertainty = True
    finetune = False  # finetune trains with MSE

    def build(self, in_dim: int, out_dim: int, hidden: int, dropout: float, **kwargs: Any) -> GaussianMLP:
        return GaussianMLP(nn.Linear(in_dim, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, 2 * out_dim),
                           n_targets=out_dim)

    def describe_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {"uncertainty": {"sigma_scale": "validation"}}  # in every mlp_1_gauss key since its first release

    def chosen(self, predictor: Any) -> dict[str, Any]:
        chosen = super().chosen(predictor)
        scale = predictor.model.sigma_scale.tolist()  # the validation-chosen sigma scale, per target
        chosen["sigma_scale"] = scale[0] if len(scale) == 1 else scale
        return chosen


register(GaussianHead())
