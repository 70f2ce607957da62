"""Attention pooling over a cached feature map, then the mlp_1 recipe on the pooled vector (`attn`).

Why: the fixed poolings (global mean, segment means) decide in advance which positions of the (C, L') map
matter; attention pooling learns it. Per position a score is computed from its C channels (a linear map to
H heads) plus a learned position embedding (L', H); a softmax over positions turns each head's scores into
weights that sum to 1, and each head returns the weighted mean of the C channels. The H x C pooled vector
goes through Linear(H*C, h) -> GELU -> Dropout -> Linear(h, T), exactly mlp_1, and everything is trained by
train_head on the standardised flattened map.

Input: the flattened map as `featcache extract --pool none` stores it, channel-major (element c*L' + t),
or the maps kept with `--keep-maps` (fit's pool name `maps`, read flattened the same way); the attrs give
C and L'. Without the position embedding the head is invariant to any permutation
of the positions (a test checks it), so the embedding is what lets it prefer regions of the spectrum.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..common.errors import FeatcacheError
from .dropout import Dropout
from .recipe import DEFAULT_ATTN_HEADS

DEFAULT_HEADS = DEFAULT_ATTN_HEADS


class AttentionPool(nn.Module):
    """(B, C, L') -> (B, H*C): H softmax-weighted means over positions."""

    def __init__(self, channels: int, length: int, heads: int = DEFAULT_HEADS, position: bool = True):
        super().__init__()
        self.channels, self.length, self.heads = int(channels), int(length), int(heads)
        self.score = nn.Linear(self.channels, self.heads)
        self.position = nn.Parameter(torch.zeros(self.length, self.heads)) if position else None

    def weights(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, H, L') attention weights, each head's summing to 1 over positions."""
        scores = self.score(maps.transpose(1, 2))            # (B, L', H)
        if self.position is not None:
            scores = scores + self.position
        return torch.softmax(scores, dim=1).transpose(1, 2)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        pooled = torch.bmm(self.weights(maps), maps.transpose(1, 2))  # (B, H, C)
        return pooled.reshape(maps.shape[0], -1)


class AttentionHead(nn.Module):
    """The flattened (C*L') map -> attention pooling -> mlp_1."""

    def __init__(self, channels: int, length: int, out_dim: int, hidden: int, dropout: float,
                 heads: int = DEFAULT_HEADS, position: bool = True):
        super().__init__()
        self.pool = AttentionPool(channels, length, heads, position)
        self.mlp = nn.Sequential(nn.Linear(heads * channels, hidden), nn.GELU(), Dropout(dropout),
                                 nn.Linear(hidden, out_dim))

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.pool.channels, self.pool.length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pool(self.maps(x)))


def map_shape(feature: tuple[str, str], info: dict[str, Any], in_dim: int) -> tuple[int, int]:
    """(C, L') of a feature stored with its positions (--pool none); a pooled feature is refused."""
    layer, pool = feature
    if pool not in ("none", "maps") or not info.get("C") or not info.get("L"):
        raise FeatcacheError(f"head attn pools over positions: {layer}/{pool} is already pooled; extract the layer "
                             "with --pool none (the flattened map, whose attrs give C and L') and fit on "
                             f"{layer}/none, or on {layer}/maps when the cache kept its maps (--keep-maps)")
    channels, length = int(info["C"]), int(info["L"])
    if channels * length != in_dim:
        raise FeatcacheError(f"{layer}/none: width {in_dim} is not C x L' = {channels} x {length}")
    return channels, length
