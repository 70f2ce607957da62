"""BlindspotModel1D with the original parameter names, so original state dicts load strictly.

The encoder path can be run alone (taps by name, only as deep as needed); the full model forward
(decoders and the 1x1 head) is here for pretraining and to check against the fixture's model output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import FeatcacheError, choices_message
from .config import EncoderConfig
from .taps import DIRECTIONS, tap_depth
from .taps import tap_names as all_tap_names

# Bump when a change to the encoder or pooling code changes the numbers it computes (part of every cache
# fingerprint, so caches made by older code are recomputed rather than mixed with new rows).
CODE_VERSION = 1


class Conv1D(nn.Module):
    """Conv1d('same') -> BatchNorm1d (or identity) -> LeakyReLU(0.1); causal when blindspot."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, *, dilation: int = 1, use_bn: bool = True,
                 blindspot: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, padding="same", dilation=dilation)
        self.bn = nn.BatchNorm1d(out_ch) if use_bn else nn.Identity()
        self.act = nn.LeakyReLU(0.1)
        self.offset = (kernel_size - 1) * dilation // 2 if blindspot else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.offset:
            # pad ofs zeros on the left, 'same' conv, drop the last ofs outputs: output t sees t-2*ofs..t
            x = self.conv(F.pad(x, (self.offset, 0)))[..., : -self.offset]
        else:
            x = self.conv(x)
        return self.act(self.bn(x))


def shift_right(h: torch.Tensor) -> torch.Tensor:
    """Shift by one pixel along length (zero in front), keeping the length."""
    return F.pad(h[..., :-1], (1, 0))


def shifted_max_pool(h: torch.Tensor) -> torch.Tensor:
    """The original down-sampling: shift right by one, then max-pool by 2 (length halves, floor)."""
    return F.max_pool1d(shift_right(h), kernel_size=2, stride=2)


class BlindspotModel1D(nn.Module):
    """The 1-D blind-spot UNet of the BlindSpotDenoiser research code (parameter names match)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        c, e, k = config, config.embed_dim, config.kernel_size
        block = dict(use_bn=c.use_bn, blindspot=c.blindspot)
        self.encoders = nn.ModuleList(
            [Conv1D(c.in_channels, e, k, **block)]
            + [Conv1D(e, e, k, dilation=c.dilation, **block) for _ in range(c.num_layers)])
        n_dec = c.num_layers - 1
        self.decoders_a = nn.ModuleList(
            [Conv1D(2 * e, e, k, **block) for _ in range(n_dec - 1)] + [Conv1D(e + c.in_channels, e, k, **block)])
        self.decoders_b = nn.ModuleList([Conv1D(e, e, k, **block) for _ in range(n_dec)])
        width = 2 * e if c.blindspot else e
        self.nin_layers = nn.Sequential(
            Conv1D(width, 4 * e, 1, **block), Conv1D(4 * e, 2 * e, 1, **block), Conv1D(2 * e, 2, 1, **block),
            nn.Softplus())

    # -- taps ---------------------------------------------------------------------------------------
    @property
    def tap_names(self) -> list[str]:
        return all_tap_names(self.config.num_layers)

    def tap_index(self, name: str) -> int:
        """enc_{i} -> i; enc_pre_latent -> num_layers-1; enc_last -> num_layers."""
        depth = tap_depth(name, self.config.num_layers)
        if depth is None:
            raise FeatcacheError(choices_message("layer", name, self.tap_names))
        return depth

    def tap_length(self, name: str, n_pixels: int) -> int:
        """L' of a tap for an input of n_pixels (each pooling halves, floor)."""
        length = n_pixels
        for _ in range(min(self.tap_index(name), self.config.num_layers - 1)):
            length //= 2
        return length

    def _encode_one(self, x: torch.Tensor, depth: int, keep: set[int]) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        h = self.encoders[0](x)
        if 0 in keep:
            out[0] = h
        n = self.config.num_layers
        for i in range(1, depth + 1):
            h = self.encoders[i](h)
            if i < n:
                h = shifted_max_pool(h)
            if i in keep:
                out[i] = h
        return out

    def encode(self, x: torch.Tensor, taps: list[str], direction: str = "forward") -> dict[str, torch.Tensor]:
        """The (B, C, L') maps of the named taps, running only as deep as the deepest one.

        forward: taps of x; reverse: taps of x.flip(-1) flipped back to forward order; both: the two
        concatenated on channels. In eval mode this equals the original doubled-batch forward.
        """
        if direction not in DIRECTIONS:
            raise FeatcacheError(choices_message("direction", direction, DIRECTIONS))
        if x.ndim != 3 or x.shape[1] != self.config.in_channels:
            raise FeatcacheError(f"encoder input must be (B, {self.config.in_channels}, L), got {tuple(x.shape)}")
        index = {name: self.tap_index(name) for name in taps}
        keep = set(index.values())
        depth = max(keep) if keep else 0
        results: dict[str, torch.Tensor] = {}
        fwd = self._encode_one(x, depth, keep) if direction in ("forward", "both") else {}
        rev = self._encode_one(x.flip(-1), depth, keep) if direction in ("reverse", "both") else {}
        for name, i in index.items():
            if direction == "forward":
                results[name] = fwd[i]
            elif direction == "reverse":
                results[name] = rev[i].flip(-1)
            else:
                results[name] = torch.cat([fwd[i], rev[i].flip(-1)], dim=1)
        return results

    # -- full model ---------------------------------------------------------------------------------
    def _unet(self, x: torch.Tensor, keep: frozenset[int] = frozenset()
              ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The UNet's last decoder map, and the encoder maps of the depths in `keep` as this pass computes them."""
        n = self.config.num_layers
        taps: dict[int, torch.Tensor] = {}
        skips = [x]
        h = self.encoders[0](x)
        if 0 in keep:
            taps[0] = h
        for i in range(1, n):
            h = shifted_max_pool(self.encoders[i](h))
            if i in keep:
                taps[i] = h
            skips.append(h)
        skips.pop()  # the deepest pooled map is the last encoder's input, not a skip
        h = self.encoders[n](h)
        if n in keep:
            taps[n] = h
        for dec_a, dec_b in zip(self.decoders_a, self.decoders_b, strict=True):
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-1], mode="nearest")
            h = dec_b(dec_a(torch.cat([h, skip], dim=1)))
        return h, taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, L) -> (B, 2, L): mu_x and sigma_x of the denoised signal."""
        return self.forward_with_taps(x, [])[0]

    def forward_with_taps(self, x: torch.Tensor, taps: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The full forward, and the named taps of x (the forward half of the doubled batch) from the same pass:
        pretraining's auxiliary head reads them without a second encoder pass (so BatchNorm's batch statistics
        and running averages are those of the plain forward). In train mode the maps use the doubled batch's
        statistics; in eval mode they equal `encode(x, taps)`."""
        index = {name: self.tap_index(name) for name in taps}
        keep = frozenset(index.values())
        if not self.config.blindspot:
            h, maps = self._unet(x, keep)
            return self.nin_layers(h), {name: maps[i] for name, i in index.items()}
        batch = x.shape[0]
        h, maps = self._unet(torch.cat([x, x.flip(-1)], dim=0), keep)
        h = shift_right(h)
        h = torch.cat([h[:batch], h[batch:].flip(-1)], dim=1)
        return self.nin_layers(h), {name: maps[i][:batch] for name, i in index.items()}

    def encoder_parameters(self) -> int:
        return sum(p.numel() for p in self.encoders.parameters())


def denoise(output: torch.Tensor, noisy: torch.Tensor, sigma_n: torch.Tensor) -> torch.Tensor:
    """The posterior-mean estimate (sigma_x^2 * noisy + sigma_n^2 * mu_x) / (sigma_x^2 + sigma_n^2)."""
    mu_x, sigma_x = output[:, 0], output[:, 1]
    var_x, var_n = sigma_x**2, sigma_n**2
    return (var_x * noisy + var_n * mu_x) / (var_x + var_n)
