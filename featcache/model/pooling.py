"""Named poolings of a (B, C, L') map into a vector: the reference experiment's and a few more.

`get_pooling("seg_mean_K8")` parses parametric names; unknown names and K > L' are errors listing the
choices. Segment rule (the spec's): s = L' // K, segment i covers [i*s, (i+1)*s) for i < K-1 and the last
covers [(K-1)*s, L'); outputs are segment-major, so element i*C + c is channel c of segment i.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..common.errors import FeatcacheError, choices_message

FIXED = ("global_mean", "global_max", "mean_max", "none")
PARAMETRIC = ("seg_mean_K{K}", "seg_max_K{K}", "seg_meanmax_K{K}")


def _segments(h: torch.Tensor, k: int, reduce: str) -> torch.Tensor:
    """(B, C, L') -> (B, K*C) segment-major reductions."""
    batch, channels, length = h.shape
    step = length // k
    head = h[..., : (k - 1) * step].reshape(batch, channels, k - 1, step)
    tail = h[..., (k - 1) * step:]
    if reduce == "mean":
        parts = torch.cat([head.mean(-1), tail.mean(-1, keepdim=True)], dim=-1)
    else:
        parts = torch.cat([head.amax(-1), tail.amax(-1, keepdim=True)], dim=-1)
    return parts.transpose(1, 2).reshape(batch, k * channels)


@dataclass(frozen=True)
class Pooling:
    """A named map -> vector reduction that knows its output width."""

    name: str
    definition: str
    segments: int | None
    _fn: Callable[[torch.Tensor], torch.Tensor]
    _width: Callable[[int, int], int]

    def width(self, channels: int, length: int) -> int:
        self.check(length)
        return self._width(channels, length)

    def check(self, length: int) -> None:
        if self.segments is not None and self.segments > length:
            raise FeatcacheError(f"pooling '{self.name}': K={self.segments} segments exceed the map length "
                                 f"L'={length}; choose K <= {length}")

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        self.check(h.shape[-1])
        return self._fn(h)


def _fixed(name: str) -> Pooling:
    if name == "global_mean":
        return Pooling(name, "mean over length -> C", None, lambda h: h.mean(-1), lambda c, length: c)
    if name == "global_max":
        return Pooling(name, "max over length -> C", None, lambda h: h.amax(-1), lambda c, length: c)
    if name == "mean_max":
        return Pooling(name, "[mean over length, max over length] -> 2C", None,
                       lambda h: torch.cat([h.mean(-1), h.amax(-1)], dim=-1), lambda c, length: 2 * c)
    return Pooling(name, "the flattened map (channel-major: element c*L'+t) -> C*L'", None,
                   lambda h: h.reshape(h.shape[0], -1), lambda c, length: c * length)


def get_pooling(name: str) -> Pooling:
    """The pooling called NAME (fixed names, or seg_{mean,max,meanmax}_K{K} for any K >= 1)."""
    if name in FIXED:
        return _fixed(name)
    match = re.fullmatch(r"seg_(mean|max|meanmax)_K(\d+)", name)
    if match and int(match.group(2)) >= 1:
        kind, k = match.group(1), int(match.group(2))
        rule = f"s = L'//{k}; segment i covers [i*s, (i+1)*s), the last [({k}-1)*s, L'); segment-major"
        if kind == "mean":
            return Pooling(name, f"mean of {k} segments ({rule}) -> {k}C", k,
                           lambda h: _segments(h, k, "mean"), lambda c, length: k * c)
        if kind == "max":
            return Pooling(name, f"max of {k} segments ({rule}) -> {k}C", k,
                           lambda h: _segments(h, k, "max"), lambda c, length: k * c)
        return Pooling(name, f"[seg_mean_K{k}, seg_max_K{k}] ({rule}) -> 2*{k}C", k,
                       lambda h: torch.cat([_segments(h, k, "mean"), _segments(h, k, "max")], dim=-1),
                       lambda c, length: 2 * k * c)
    raise FeatcacheError(choices_message("pooling", name, list_poolings()))


def pooled_width(pool: str, channels: int, length: int, layer: str) -> int:
    """The width of a pooled tap (what extract stores and finetune's head takes); a pooling the map cannot
    take is a one-line error naming both options."""
    try:
        return get_pooling(pool).width(channels, length)
    except FeatcacheError as exc:
        raise FeatcacheError(f"--pool {pool} on --layer {layer}: {exc}") from None


def list_poolings() -> list[str]:
    return [*FIXED, *PARAMETRIC]


def parse_poolings(values: list[str] | tuple[str, ...]) -> list[str]:
    """Comma-separated and repeated --pool values, validated, order kept, duplicates dropped."""
    names: list[str] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if part and part not in names:
                get_pooling(part)
                names.append(part)
    return names
