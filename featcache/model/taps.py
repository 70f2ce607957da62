"""Names of what can be read out of the encoder: taps, the input pseudo-layers, directions.

A tap is the (C, L') map after encoder block i (`enc_i`; `enc_pre_latent` = enc_{N-1}, the last block's
input, and `enc_last` = enc_N, its output). The pseudo-layers `input_flux` and `input_error` are the
masked noisy flux and the sigma channel themselves, put through the same poolings: the raw-input baseline
and an error-only leak detector. A direction says which way the spectrum runs through the encoder.
"""

from __future__ import annotations

import re
from typing import Any

from ..common.errors import FeatcacheError

PSEUDO_LAYERS = ("input_flux", "input_error")
DIRECTIONS = ("forward", "reverse", "both")
ALL_LAYERS = "all"  # --layer all: every block's output, enc_0 .. enc_N


def tap_names(num_layers: int) -> list[str]:
    """Every tap of an encoder with num_layers blocks: enc_0 .. enc_N, then the aliases."""
    return [f"enc_{i}" for i in range(num_layers + 1)] + ["enc_pre_latent", "enc_last"]


def tap_depth(name: str, num_layers: int) -> int | None:
    """enc_i -> i; enc_pre_latent -> N-1; enc_last -> N; None for anything else (a pseudo-layer, a typo)."""
    if name == "enc_pre_latent":
        return num_layers - 1
    if name == "enc_last":
        return num_layers
    match = re.fullmatch(r"enc_(\d+)", name)
    if match and int(match.group(1)) <= num_layers:
        return int(match.group(1))
    return None


def expand_layers(names: list[str], num_layers: int) -> list[str]:
    """--layer values with `all` replaced by enc_0 .. enc_N (in place, duplicates dropped)."""
    out: list[str] = []
    for name in names:
        for item in ([f"enc_{i}" for i in range(num_layers + 1)] if name == ALL_LAYERS else [name]):
            if item not in out:
                out.append(item)
    return out


def tap_channels(embed_dim: int, direction: str) -> int:
    """Channels of a tap's map: the encoder's width, twice with --direction both (forward and reverse maps
    side by side)."""
    return int(embed_dim) * (2 if direction == "both" else 1)


def tap_shape(encoder: Any, layer: str, n_kept: int, direction: str) -> tuple[int, int]:
    """(C, L') of a tap's map for an encoder (anything with `config.embed_dim` and `tap_length`) at a mask
    that keeps n_kept pixels; a depth the mask cannot feed is refused."""
    length = int(encoder.tap_length(layer, n_kept))
    if length < 1:
        raise FeatcacheError(f"--layer {layer}: the mask keeps {n_kept} pixels, too few for this depth")
    return tap_channels(encoder.config.embed_dim, direction), length
