"""Dropout masks from one seeded stream per head, shared by a head trained alone and the same head in a stack.

Why not torch's own dropout: on the CPU `bernoulli_` costs about as much per step as a small head's matrix
products (6.3 ns an element on one thread against 2.5 for this stream's whole mask, NumPy's PCG64 floats
included), and a global RNG cannot give each head of a stack (heads.batched) the masks it would have drawn
alone. A `MaskStream` draws uniform float32 values u and keeps a unit where u >= p, scaled by 1 / (1 - p): on
the CPU from `numpy.random.PCG64(seed)`, on a GPU from a `torch.Generator` on that device. `train_head`
attaches one stream per head to its `Dropout` modules (drawn in forward order); `heads.batched` draws each
head's masks from its own stream in the same order and shapes, so both paths see the same masks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn


def keep_scale(p: float) -> float:
    """1 / (1 - p) as float32 (the value a kept unit is multiplied by)."""
    return float(np.float32(1.0) / np.float32(1.0 - p))


class MaskStream:
    """Seeded dropout masks: `draw_into(out, p)` fills `out` with 0 (dropped, probability p) or 1 / (1 - p)."""

    def __init__(self, seed: int, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.seed = int(seed)
        if self.device.type == "cpu":
            self._rng: np.random.Generator | None = np.random.Generator(np.random.PCG64(self.seed))
        else:
            self._rng = None
            self._gen = torch.Generator(device=self.device).manual_seed(self.seed)

    def draw_into(self, out: torch.Tensor, p: float) -> torch.Tensor:
        """Fill the float32 tensor `out` (contiguous) with a mask in place and return it."""
        if out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError("MaskStream.draw_into needs a contiguous float32 tensor")
        if self._rng is not None:
            self._rng.random(out=out.numpy(), dtype=np.float32)
        else:
            out.uniform_(generator=self._gen)
        return out.ge_(p).mul_(keep_scale(p))

    def draw(self, shape: tuple[int, ...], p: float) -> torch.Tensor:
        return self.draw_into(torch.empty(shape, dtype=torch.float32, device=self.device), p)

    def state(self) -> dict[str, Any]:
        """Where the stream stands (plain data: a resumable checkpoint keeps it)."""
        if self._rng is not None:
            return {"pcg64": dict(self._rng.bit_generator.state)}
        return {"torch": self._gen.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        if self._rng is not None and "pcg64" in state:
            self._rng.bit_generator.state = state["pcg64"]
        elif self._rng is None and "torch" in state:
            self._gen.set_state(state["torch"])
        else:
            raise ValueError("a dropout-stream state of another device kind")


class Dropout(nn.Dropout):
    """nn.Dropout (same behaviour, no state) that draws from a MaskStream while one is attached (training)."""

    stream: MaskStream | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stream is None or not self.training or self.p == 0 or x.dtype != torch.float32:
            return super().forward(x)
        return x * self.stream.draw(tuple(x.shape), self.p)


@contextmanager
def mask_streams(model: nn.Module, seed: int, device: str | torch.device) -> Iterator[MaskStream]:
    """One MaskStream(seed) shared by the model's Dropout modules (in forward order) for the duration."""
    stream = MaskStream(seed, device)
    modules = [m for m in model.modules() if isinstance(m, Dropout)]
    for m in modules:
        m.stream = stream
    try:
        yield stream
    finally:
        for m in modules:
            m.stream = None
