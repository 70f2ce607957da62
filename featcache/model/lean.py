"""The lean inference path of the encoder: what extraction runs (training keeps BlindspotModel1D).

The same function as `BlindspotModel1D.encode` in eval mode, computed with less work:
- BatchNorm folded into each convolution's weights and bias (in float64, then cast to float32);
- each convolution a valid one on an explicitly left-padded input (the original pads 'same' on both sides,
  pads again on the left and slices the result, leaving a non-contiguous tensor for the next layer);
- LeakyReLU in place, the shifted max-pool as two strided reads (no padded copy);
- no block past the deepest tap;
- on the CPU, the long convolutions (map length >= 256, kernel >= 9) as overlap-save FFT convolutions: per
  output, 2 C K multiply-adds become about 8 C multiply-adds per frequency plus two short FFTs, about 5x
  fewer operations for the reference model's k25 blocks, which oneDNN's direct kernels run near the
  machine's peak already. The result differs from the direct convolution by float32 rounding (1e-6 of the
  activations), well inside the 1e-4 agreement with the original code that the fixture test checks.

`conv` picks the convolution: 'auto' (FFT where it wins on the CPU, direct on a GPU, whose cuDNN kernels are
faster), 'direct' or 'fft' (every block that can, for tests). The resolved plan (`LeanEncoder.plan`) is part
of a cache's fingerprint: it changes the last bits of the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import FeatcacheError, choices_message
from .encoder import BlindspotModel1D
from .taps import DIRECTIONS

CONV_MODES = ("auto", "direct", "fft")
FFT_MIN_LENGTH = 256  # blocks on shorter maps run direct (measured: the FFT's fixed costs dominate there)
FFT_MIN_KERNEL = 9
FFT_BLOCK = 128  # overlap-save block length (128 was fastest for C=48, k=25 at small batches on 2 Zen 4 cores)
NEGATIVE_SLOPE = 0.1


@dataclass
class LeanBlock:
    """One encoder block, folded: y = leaky_relu(conv(pad_left(x, pad), weight, bias, dilation))."""

    weight: torch.Tensor  # (out, in, k) float32, BatchNorm folded in
    bias: torch.Tensor  # (out,)
    dilation: int
    pad: int  # (k - 1) * dilation zeros on the left: output t sees inputs t - pad .. t
    spectrum: torch.Tensor | None = None  # (F, in, out) complex64: the overlap-save FFT of the kernel
    block: int = 0  # the overlap-save block length M (spectrum is rfft of length M)

    @property
    def uses_fft(self) -> bool:
        return self.spectrum is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.spectrum is not None and x.dtype == torch.float32:
            y = _overlap_save(x, self.spectrum, self.block, self.pad, self.bias)
        else:
            y = F.conv1d(F.pad(x, (self.pad, 0)), self.weight.to(x.dtype), self.bias.to(x.dtype),
                         dilation=self.dilation)
        return F.leaky_relu_(y, NEGATIVE_SLOPE)


def fold_block(conv: nn.Conv1d, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv1d followed by eval-mode BatchNorm1d (or identity) as one convolution's weight and bias."""
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    if isinstance(bn, nn.BatchNorm1d):
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        weight = weight * scale[:, None, None]
        bias = (bias - bn.running_mean.detach().double()) * scale + bn.bias.detach().double()
    return weight.float().contiguous(), bias.float().contiguous()


def kernel_spectrum(weight: torch.Tensor, dilation: int, block: int) -> torch.Tensor:
    """(F, in, out) rfft of the flipped, dilated kernel: the overlap-save filter of a causal convolution."""
    out_ch, in_ch, k = weight.shape
    dense = torch.zeros(out_ch, in_ch, (k - 1) * dilation + 1, dtype=torch.float64, device=weight.device)
    dense[..., ::dilation] = weight.double()
    return torch.fft.rfft(dense.flip(-1), n=block).permute(2, 1, 0).to(torch.complex64).contiguous()


def _overlap_save(x: torch.Tensor, spectrum: torch.Tensor, block: int, pad: int, bias: torch.Tensor) -> torch.Tensor:
    """Causal convolution of x (B, C, L) by FFT blocks of `block` samples, each yielding block - pad outputs;
    the channel mixing is one batched complex matmul over frequencies."""
    batch, channels, length = x.shape
    step = block - pad
    n_blocks = -(-length // step)
    padded = F.pad(x, (pad, n_blocks * step - length))
    frames = padded.unfold(-1, block, step)                      # (B, C, n, M) view
    freq = torch.fft.rfft(frames, dim=-1)                         # (B, C, n, F)
    n_freq = freq.shape[-1]
    mixed = torch.bmm(freq.permute(3, 0, 2, 1).reshape(n_freq, batch * n_blocks, channels), spectrum)
    mixed[0] += bias * block  # the bias as each block's DC term: irfft adds it to every output
    out_ch = spectrum.shape[-1]
    mixed = mixed.reshape(n_freq, batch, n_blocks, out_ch).permute(1, 3, 2, 0)   # (B, O, n, F)
    y = torch.fft.irfft(mixed, n=block, dim=-1)[..., pad:]                        # (B, O, n, step)
    return y.reshape(batch, out_ch, n_blocks * step)[..., :length]


def shifted_max_pool(h: torch.Tensor) -> torch.Tensor:
    """The original down-sampling (shift right by one with a zero in front, max-pool by 2) in two strided
    reads: out[0] = max(0, h[0]), out[i] = max(h[2i-1], h[2i])."""
    half = h.shape[-1] // 2
    out = torch.empty(*h.shape[:-1], half, dtype=h.dtype, device=h.device)
    torch.clamp_min(h[..., 0], 0, out=out[..., 0])
    if half > 1:
        torch.maximum(h[..., 1:2 * half - 1:2], h[..., 2:2 * half:2], out=out[..., 1:])
    return out


def conv_plan(config: Any, n_pixels: int, conv: str, device: torch.device | str) -> str:
    """Which blocks of the whole encoder run by FFT for this input length, mode and device ('direct' when
    none): what a cache's fingerprint records, whatever taps a run asks for."""
    device = torch.device(device)
    fft, length = [], n_pixels
    for i in range(config.num_layers + 1):
        if _wants_fft(conv, device, config.kernel_size, length):
            fft.append(str(i))
        if 1 <= i < config.num_layers:
            length //= 2
    return f"fft:{','.join(fft)}" if fft else "direct"


class LeanEncoder:
    """BlindspotModel1D's encoder (eval mode) folded for inference, up to the deepest tap a run needs."""

    def __init__(self, model: BlindspotModel1D, taps: list[str], n_pixels: int, conv: str = "auto",
                 device: torch.device | str = "cpu"):
        if conv not in CONV_MODES:
            raise FeatcacheError("--conv: " + choices_message("convolution", conv, CONV_MODES))
        device = torch.device(device)
        self.config = model.config
        self.taps = {name: model.tap_index(name) for name in taps}
        depth = max(self.taps.values(), default=0)
        self.blocks: list[LeanBlock] = []
        length = n_pixels
        for i in range(depth + 1):
            enc = model.encoders[i]
            weight, bias = fold_block(enc.conv, enc.bn)
            dilation = int(enc.conv.dilation[0])
            pad = (weight.shape[-1] - 1) * dilation
            block = LeanBlock(weight.to(device), bias.to(device), dilation, pad)
            if _wants_fft(conv, device, weight.shape[-1], length):
                size = max(FFT_BLOCK, 1 << (2 * pad).bit_length())
                block.spectrum, block.block = kernel_spectrum(weight, dilation, size).to(device), size
            self.blocks.append(block)
            if 1 <= i < self.config.num_layers:
                length //= 2

    @property
    def plan(self) -> str:
        """Which blocks run by FFT ('direct' when none): recorded in the fingerprint."""
        fft = [str(i) for i, b in enumerate(self.blocks) if b.uses_fft]
        return f"fft:{','.join(fft)}" if fft else "direct"

    def _run(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        keep = set(self.taps.values())
        out: dict[int, torch.Tensor] = {}
        h = self.blocks[0](x)
        if 0 in keep:
            out[0] = h
        for i in range(1, len(self.blocks)):
            h = self.blocks[i](h)
            if i < self.config.num_layers:
                h = shifted_max_pool(h)
            if i in keep:
                out[i] = h
        return out

    def encode(self, x: torch.Tensor, direction: str = "forward") -> dict[str, torch.Tensor]:
        """The (B, C, L') maps of the taps, as BlindspotModel1D.encode computes them in eval mode."""
        if direction not in DIRECTIONS:
            raise FeatcacheError(choices_message("direction", direction, DIRECTIONS))
        fwd = self._run(x) if direction in ("forward", "both") else {}
        rev = self._run(x.flip(-1)) if direction in ("reverse", "both") else {}
        results: dict[str, torch.Tensor] = {}
        for name, i in self.taps.items():
            if direction == "forward":
                results[name] = fwd[i]
            elif direction == "reverse":
                results[name] = rev[i].flip(-1)
            else:
                results[name] = torch.cat([fwd[i], rev[i].flip(-1)], dim=1)
        return results


def _wants_fft(conv: str, device: torch.device, kernel: int, length: int) -> bool:
    if conv == "fft":
        return True
    return conv == "auto" and device.type == "cpu" and kernel >= FFT_MIN_KERNEL and length >= FFT_MIN_LENGTH
