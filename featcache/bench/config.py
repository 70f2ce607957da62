"""What `featcache bench` measures, by name, with its defaults (torch-free: the CLI reads them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class BenchConfig:
    arch: str = "l9e48k25s1bn1d1"
    n_spectra: int = 3072
    batch_sizes: tuple[int, ...] = (4, 8, 16, 32, 64, 256)  # the encoders are timed at each
    repeats: int = 2  # interleaved rounds; the best of each kept
    encoder_rows: int = 1024  # in-memory spectra the encoders are timed on (extract runs over all n_spectra)
    device: str = "auto"
    dtypes: tuple[str, ...] = ("float32",)
    heads_rows: int = 100_000
    heads_dim: int = 384
    heads_epochs: int = 50
    shards: bool = True
    memory_arch: str = "l4e8k5s1bn1d1"  # small encoder for the N-scaling of the pipeline's own memory
    memory_scale: int = 16  # peak RSS extracting n and memory_scale * n spectra
    heads: bool = True
    workdir: Path | None = None
    out: Path | None = Path("reports/bench.json")

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """Tiny sizes for the test suite: exercises every measurement, times nothing meaningful."""
        base = dict(arch="l4e8k5s1bn1d1", n_spectra=96, encoder_rows=96, batch_sizes=(8, 32), repeats=1, heads_rows=600,
                    heads_dim=16, heads_epochs=2, memory_scale=2, dtypes=("float32", "bfloat16"))
        base.update(overrides)
        return cls(**base)
