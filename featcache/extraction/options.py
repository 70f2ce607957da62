"""What `featcache extract` takes, by name, with its defaults (the CLI shows these; they are defined here only).

Kept free of torch and zarr so the command line can read the defaults without importing either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..common.constraints import StrOptions, at_least
from ..model.taps import DIRECTIONS

STORE_DTYPES = ("float32", "float16")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
HASH_MODES = ("full", "sampled")  # full: every byte (the default); sampled: 8 blocks, blind to other edits
MAX_MAP_SIZE = 4096  # --keep-maps stores a tap's raw map only when C * L' is at most this
CONV_MODES = ("auto", "direct", "fft")
# spectra per encoder forward when --batch-size is not given, by device type: measured with `featcache bench`
# (the lean FFT path runs fastest on small batches that stay in the CPU's caches; GPUs want large batches)
DEFAULT_BATCH = {"cpu": 8, "cuda": 256, "mps": 64}


@dataclass
class ExtractOptions:
    """Everything `featcache extract` takes (the CLI options, by name)."""

    data: list[str]
    out: Path = Path("cache/features.zarr")
    ckpt: Path | None = None
    layers: list[str] = field(default_factory=lambda: ["enc_pre_latent", "enc_last"])
    pools: list[str] = field(default_factory=lambda: ["global_mean", "mean_max", "seg_mean_K8"])
    mask: str = "quantile:0.85"
    noise: str = "generated"
    noise_level: float = 1.0
    noise_seed: int = 42
    noise_draws: list[str] = field(default_factory=list)
    direction: str = "forward"
    dilation: int | None = None
    batch_size: int | None = None  # None: DEFAULT_BATCH of the device
    block_rows: int = 1024
    device: str = "auto"
    threads: int | None = None  # CPU threads (None: every core this process may use; common.device)
    dtype: str = "float32"
    conv: str = "auto"  # auto: FFT convolutions where they win (CPU, long maps), direct elsewhere
    store_dtype: str = "float32"
    keep_maps: bool = False
    random_init: bool = False
    init_seed: int = 0
    arch: str | None = None
    hash: str = "full"
    overwrite: bool = False
    shard: tuple[int, int] | None = None
    prepare_only: bool = False
    wait_seconds: float = 300.0  # --wait: how long shards 1..N-1 wait for shard 0 (or --prepare) to create the cache
    command: str = "featcache extract"

    constraints = {"direction": StrOptions(DIRECTIONS, noun="direction"),
                   "store_dtype": StrOptions(STORE_DTYPES, noun="dtype"),
                   "dtype": StrOptions(COMPUTE_DTYPES, noun="dtype"), "batch_size": (at_least(1), None),
                   "block_rows": at_least(1), "threads": (at_least(1), None),
                   "conv": StrOptions(CONV_MODES, noun="convolution"), "hash": StrOptions(HASH_MODES)}

    def __post_init__(self) -> None:  # the Python API takes str paths and any sequences, as the CLI gives
        self.out = Path(self.out)
        self.ckpt = None if self.ckpt is None else Path(self.ckpt)
        self.data, self.layers, self.pools = list(self.data), list(self.layers), list(self.pools)
        self.noise_draws = list(self.noise_draws)
