"""The architecture's hyper-parameters, apart from torch (the command line reads their defaults)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ..common.errors import FeatcacheError


@dataclass(frozen=True)
class EncoderConfig:
    """The architecture's hyper-parameters (the checkpoint name spells them: l9e48k25s1bn1d1)."""

    num_layers: int = 9
    embed_dim: int = 48
    kernel_size: int = 25
    input_sigma: bool = True
    use_bn: bool = True
    dilation: int = 1
    blindspot: bool = True

    @property
    def in_channels(self) -> int:
        return 2 if self.input_sigma else 1

    @property
    def tag(self) -> str:
        return (f"l{self.num_layers}e{self.embed_dim}k{self.kernel_size}s{int(self.input_sigma)}"
                f"bn{int(self.use_bn)}d{self.dilation}")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_tag(cls, tag: str) -> EncoderConfig:
        """'l9e48k25s1bn1d1' -> EncoderConfig (the original naming scheme)."""
        match = re.fullmatch(r"l(\d+)e(\d+)k(\d+)s([01])bn([01])d(\d+)", tag)
        if not match:
            raise FeatcacheError(f"--arch {tag}: expected the original naming scheme, e.g. l9e48k25s1bn1d1")
        n, e, k, s, bn, d = match.groups()
        return cls(num_layers=int(n), embed_dim=int(e), kernel_size=int(k), input_sigma=s == "1",
                   use_bn=bn == "1", dilation=int(d))
