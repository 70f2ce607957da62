"""The end-to-end model: encoder (up to the tap) -> pooling -> fixed standardisation -> head.

Standardisation is the mean and population std of the *initial* encoder's train features under the extract
noise (fit's standardisation of the same cache), kept fixed afterwards as buffers. When encoder blocks train,
each column's scale is floored at --scale-floor times a typical column scale: a pretrained encoder has
near-constant channels (std 1e-6 next to a median of 0.06 in the demo encoder), and dividing the smallest
encoder update (Adam moves every weight by about the learning rate) by such a std hands the head a jump of
thousands of standard deviations. A --init-head's first layer is rescaled to match, so the starting function
is unchanged. Frozen blocks stay in eval mode; with --batchnorm eval so does every BatchNorm layer.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from ..common.errors import FeatcacheError
from ..heads.attention import AttentionHead
from ..model.encoder import BlindspotModel1D
from ..model.pooling import Pooling


class FinetuneModel(nn.Module):
    """encoder (up to the tap) -> pooling -> (f - x_mean) / x_scale -> head, standardised targets out."""

    def __init__(self, encoder: BlindspotModel1D, tap: str, pooling: Pooling, direction: str, head: nn.Module,
                 x_mean: np.ndarray, x_scale: np.ndarray, unfrozen: list[int], batchnorm: str = "eval"):
        super().__init__()
        self.batchnorm = batchnorm
        self.encoder = encoder
        self.head = head
        self.tap, self.pooling, self.direction = tap, pooling, direction
        self.unfrozen = list(unfrozen)
        self.register_buffer("x_mean", torch.as_tensor(np.asarray(x_mean, dtype=np.float32)))
        self.register_buffer("x_scale", torch.as_tensor(np.asarray(x_scale, dtype=np.float32)))
        encoder.requires_grad_(False)
        for i in self.unfrozen:
            encoder.encoders[i].requires_grad_(True)
        head.requires_grad_(True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled tap, what the cache stores (no graph is built through frozen blocks)."""
        return self.pooling(self.encoder.encode(x, [self.tap], self.direction)[self.tap])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.features(x) - self.x_mean) / self.x_scale)

    def train(self, mode: bool = True) -> FinetuneModel:
        """Frozen blocks stay in eval mode even while the rest trains (their BatchNorm statistics are kept);
        with batchnorm='eval' so does every BatchNorm layer."""
        super().train(mode)
        if mode:
            self.encoder.eval()
            for i in self.unfrozen:
                self.encoder.encoders[i].train()
            if self.batchnorm == "eval":
                for module in self.encoder.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def parameter_groups(self, lr: float, encoder_lr: float) -> list[dict[str, Any]]:
        """AdamW groups: the head at lr, the unfrozen encoder blocks at encoder_lr (omitted when frozen)."""
        groups: list[dict[str, Any]] = [{"params": list(self.head.parameters()), "lr": lr}]
        encoder = [p for p in self.encoder.parameters() if p.requires_grad]
        if encoder:
            groups.append({"params": encoder, "lr": encoder_lr})
        return groups


def floored_scale(scale: np.ndarray, relative_floor: float, mean: np.ndarray | None = None) -> np.ndarray:
    """Column scales no smaller than relative_floor x a typical scale: the median column std, or a tenth of
    the features' median RMS value where that is larger (an encoder whose features barely vary across
    spectra, such as a random-init one, would otherwise get a floor far below what one update moves them).
    See the module docstring for why a trained encoder needs it."""
    scale = np.asarray(scale, dtype=np.float64)
    positive = scale[scale > 0]
    if relative_floor <= 0 or positive.size == 0:
        return scale
    typical = float(np.median(positive))
    if mean is not None:
        rms = np.sqrt(np.asarray(mean, dtype=np.float64) ** 2 + scale ** 2)
        typical = max(typical, 0.1 * float(np.median(rms[rms > 0])))
    return np.maximum(scale, relative_floor * typical)


def rescale_first_layer(head: nn.Module, old_scale: np.ndarray, new_scale: np.ndarray) -> None:
    """Multiply the first Linear layer's input columns by new/old, so that head((f - m) / new) equals the
    original head((f - m) / old) exactly in real arithmetic."""
    if isinstance(head, AttentionHead):  # per-column scales do not fold into the position scores
        if np.allclose(np.asarray(new_scale), np.asarray(old_scale)):
            return
        raise FeatcacheError("an attn --init-head cannot take the scale floor (per-column scales of the map do not "
                             "fold into its attention scores): give --scale-floor 0 or start attn without --init-head")
    first = next((m for m in head.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise FeatcacheError("the head has no Linear layer to rescale")
    factor = torch.as_tensor(np.asarray(new_scale) / np.asarray(old_scale), dtype=first.weight.dtype)
    with torch.no_grad():
        first.weight.mul_(factor.to(first.weight.device)[None, :])


def params_digest(module: nn.Module) -> str:
    """sha256 over every parameter's bytes: equal on all ranks iff their weights are bitwise equal."""
    digest = hashlib.sha256()
    for _, p in module.named_parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def head_shape(head: nn.Module, hidden: int, dropout: float) -> tuple[int, float]:
    """hidden width and dropout of a loaded head (for head.pt), falling back to the options."""
    if isinstance(head, AttentionHead):  # the mlp after the attention pooling
        head = head.mlp
    hidden = next((m.out_features for m in head.modules() if isinstance(m, nn.Linear)), hidden)
    dropout = next((m.p for m in head.modules() if isinstance(m, nn.Dropout)), dropout)
    return int(hidden), float(dropout)
