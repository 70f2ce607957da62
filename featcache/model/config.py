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

    def __post_init__(self) -> None:
        for name, value, why in self.problems(self.as_dict()):
            raise FeatcacheError(f"{name.replace('_', ' ')} {value}: {why}")

    @staticmethod
    def problems(values: dict) -> list[tuple[str, object, str]]:
        """(field, value, why) for every hyper-parameter the architecture cannot take."""
        found = []
        for name, low in (("num_layers", 2), ("embed_dim", 1), ("kernel_size", 1), ("dilation", 1)):
            value = values.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                found.append((name, value, f"must be an integer >= {low}"))
        kernel = values.get("kernel_size")
        if values.get("blindspot", True) and isinstance(kernel, int) and kernel >= 1 and kernel % 2 == 0:
            found.append(("kernel_size", kernel, "must be odd: the blind spot needs a centred kernel (with an "
                                                 "even one, output pixel j would see input pixel j)"))
        return found

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
        try:
            return cls(num_layers=int(n), embed_dim=int(e), kernel_size=int(k), input_sigma=s == "1",
                       use_bn=bn == "1", dilation=int(d))
        except FeatcacheError as exc:
            raise FeatcacheError(f"--arch {tag}: {exc}") from None
