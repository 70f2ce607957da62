"""The independent reference that extraction speed is measured against: a minimal eager forward of the
encoder, written from the specification of the original model (ARCHITECTURE.md points to it) and sharing no
code with featcache.model: per block, pad on the left, a valid convolution, BatchNorm, LeakyReLU(0.1), then
the shifted max-pool. Plus the count of its operations and the machine's measured matrix-multiply peak, so
a rate can be read as a fraction of what the cores can do.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F


class MinimalEncoder(torch.nn.Module):
    """The taps enc_pre_latent and enc_last of a BlindspotModel1D state dict, forward direction, eval mode."""

    def __init__(self, state: dict[str, torch.Tensor], dilation: int = 1):
        super().__init__()
        n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("encoders."))
        self.convs = torch.nn.ModuleList()
        self.norms = torch.nn.ModuleList()
        for i in range(n_blocks):
            weight = state[f"encoders.{i}.conv.weight"]
            conv = torch.nn.Conv1d(weight.shape[1], weight.shape[0], weight.shape[2],
                                   dilation=1 if i == 0 else dilation)
            conv.weight.data, conv.bias.data = weight.clone(), state[f"encoders.{i}.conv.bias"].clone()
            norm = torch.nn.BatchNorm1d(weight.shape[0])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(norm, name).data = state[f"encoders.{i}.bn.{name}"].clone()
            self.convs.append(conv)
            self.norms.append(norm)
        self.eval()

    def block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        conv = self.convs[i]
        shift = (conv.kernel_size[0] - 1) * conv.dilation[0]
        return F.leaky_relu(self.norms[i](conv(F.pad(x, (shift, 0)))), 0.1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.block(0, x)
        for i in range(1, len(self.convs) - 1):
            h = F.max_pool1d(F.pad(self.block(i, h)[..., :-1], (1, 0)), 2, 2)
        return h, self.block(len(self.convs) - 1, h)


def conv_flops(num_layers: int, embed_dim: int, kernel_size: int, in_channels: int, n_pixels: int) -> float:
    """Multiply-adds x 2 of the direct convolutions up to enc_last, per spectrum."""
    total, length = 2.0 * in_channels * embed_dim * kernel_size * n_pixels, n_pixels
    for i in range(1, num_layers + 1):
        total += 2.0 * embed_dim * embed_dim * kernel_size * length
        if i < num_layers:
            length //= 2
    return total


def matmul_peak_gflops(device: torch.device, sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 5) -> float:
    """The best float32 matrix-multiply rate measured here (an attainable peak, below the data-sheet one),
    GFLOP/s: the fastest of `repeats` products at each size."""
    best_rate = 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device)
        b = torch.randn(size, size, device=device)
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            best_rate = max(best_rate, 2.0 * size**3 / (time.perf_counter() - start) / 1e9)
    return best_rate


def spectra_per_second(forward: Any, x: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Rate of `forward` over the in-memory rows of x in batches (one warm-up batch first)."""
    with torch.inference_mode():
        forward(x[:batch_size].to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for s in range(0, len(x), batch_size):
            forward(x[s:s + batch_size].to(device, non_blocking=True))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return len(x) / (time.perf_counter() - start)
