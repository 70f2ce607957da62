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

from ..common.constraints import Interval, check
from ..common.errors import FeatcacheError
from .dropout import Dropout
from .entry import HeadOption, register
from .mlp import TorchHead
from .recipe import DEFAULT_ATTN_HEADS


class AttentionPool(nn.Module):
    """(B, C, L') -> (B, H*C): H softmax-weighted means over positions."""

    def __init__(self, channels: int, length: int, heads: int = DEFAULT_ATTN_HEADS, position: bool = True):
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
                 heads: int = DEFAULT_ATTN_HEADS, position: bool = True):
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


class AttentionEntry(TorchHead):
    """`attn`: attention pooling over a --pool none map, then mlp_1; the map's shape comes from the cache."""

    name = "attn"
    description = ("attention pooling over a --pool none feature map (learned scores + position embedding, "
                   "softmax over positions, several heads), then mlp_1")
    needs_map = True
    build_keywords = ("channels", "length", "heads")
    options = (HeadOption("attn_heads", "--attn-heads", DEFAULT_ATTN_HEADS, "attn: attention heads pooling the --pool "
                          "none map.", constraint=Interval(int, 1, None, closed="left")),)

    def build(self, in_dim: int, out_dim: int, hidden: int, dropout: float, channels: int | None = None,
              length: int | None = None, heads: int = DEFAULT_ATTN_HEADS) -> AttentionHead:
        if channels is None or length is None or channels * length != in_dim:
            raise FeatcacheError(f"head attn needs the map shape (channels x length = {in_dim}), got {channels} x "
                                 f"{length}")
        check("--attn-heads", int(heads), Interval(int, 1, None, closed="left"))
        return AttentionHead(channels, length, out_dim, hidden, dropout, heads=int(heads))

    def describe_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {"attn": {"heads": options["attn_heads"]}}

    def build_options_for(self, cache: Any, spec: Any, in_dim: int) -> dict[str, Any]:
        if len(spec.features) != 1:
            raise FeatcacheError(f"head {self.name} pools one feature map: give one --layer with --pool none, not "
                                 f"{len(spec.features)} features")
        layer, pool = spec.features[0]
        channels, length = map_shape((layer, pool), cache.feature_info(spec.train_split, layer, pool), in_dim)
        return {"channels": channels, "length": length,
                "heads": self.resolve_options(spec.options)["attn_heads"]}

    def saved_build_options(self, predictor: Any) -> dict[str, Any]:
        pool = predictor.model.pool
        return {"channels": pool.channels, "length": pool.length, "heads": pool.heads}


register(AttentionEntry())
