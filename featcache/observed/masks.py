"""Mask planes of the PFS products: the bit of each symbolic name is declared in the file itself.

A pfsObject/pfsSingle declares `MP_<NAME> = bit` (or `HIERARCH MP_<NAME>`) in its MASK header; a
pfsCoadd/pfsCalibrated declares them per target, as YAML lines `MP_<NAME>: bit` in its METADATA table (older
files keep the `HIERARCH ` prefix in the key). The mask value of a plane is 2**bit. Bit numbers are never
assumed here: a plane the file does not declare is simply absent from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError

# Planes whose pixels are not used, after the data model's notes (pfs-datamodel-spectra.md, "Mask"):
# NO_DATA; BAD, SAT, CR; BAD_FLUXCAL, BAD_SKY, BAD_FIBERNORMS; SUSPECT (the coadd rejects it); BAD_FLAT,
# BAD_FIBERTRACE, UNMASKEDNAN, BAD_PFI_CORRECTION. INTRP, REFLINE, OVERLAP and the LSST planes are kept.
DEFAULT_REJECT: tuple[str, ...] = (
    "NO_DATA", "BAD", "SAT", "CR", "BAD_FLUXCAL", "BAD_SKY", "BAD_FIBERNORMS", "SUSPECT",
    "BAD_FLAT", "BAD_FIBERTRACE", "UNMASKEDNAN", "BAD_PFI_CORRECTION")
MAX_BIT = 62  # masks are int32 images (bits 0-31) or int64 flux-table columns


def _plane_name(key: str) -> str | None:
    """'MP_BAD' or 'HIERARCH MP_BAD' -> 'BAD'; None for any other key."""
    key = str(key).strip()
    if key.upper().startswith("HIERARCH "):
        key = key[len("HIERARCH "):].strip()
    return key[3:] if key.startswith("MP_") and len(key) > 3 else None


@dataclass(frozen=True)
class MaskPlanes:
    """The planes a file declares: name -> bit number (the value of the plane is 2**bit)."""

    bits: Mapping[str, int]
    source: str = ""

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, Any]], source: str) -> MaskPlanes:
        """From (key, value) pairs of a header or a metadata mapping; keys that are not MP_* are ignored."""
        bits: dict[str, int] = {}
        for key, value in items:
            name = _plane_name(key)
            if name is None:
                continue
            integral = isinstance(value, int | np.integer | float) and not isinstance(value, bool) and \
                float(value).is_integer()
            bit = int(value) if integral else -1
            if not 0 <= bit <= MAX_BIT:
                raise FeatcacheError(f"{source}: mask plane MP_{name} = {value!r} is not a bit number in 0-{MAX_BIT}")
            bits[name] = bit
        owners: dict[int, str] = {}
        for name, bit in bits.items():
            if bit in owners:
                raise FeatcacheError(f"{source}: mask planes MP_{owners[bit]} and MP_{name} both declare bit {bit}")
            owners[bit] = name
        return cls(dict(sorted(bits.items(), key=lambda kv: kv[1])), source)

    @classmethod
    def from_header(cls, header: Any, source: str) -> MaskPlanes:
        return cls.from_items(header.items(), source)

    @classmethod
    def from_yaml(cls, text: str, source: str) -> MaskPlanes:
        """From a METADATA cell: the YAML dump of a spectrum's metadata (keys sorted, MP_* among them)."""
        import yaml

        try:
            loaded = yaml.safe_load(text) if text.strip() else {}
        except yaml.YAMLError as exc:
            raise FeatcacheError(f"{source}: metadata is not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise FeatcacheError(f"{source}: metadata is not a YAML mapping of keys to values")
        return cls.from_items(loaded.items(), source)

    def value(self, names: Iterable[str]) -> int:
        """The OR of 2**bit over the named planes the file declares (undeclared names add nothing)."""
        return sum(1 << self.bits[n] for n in dict.fromkeys(names) if n in self.bits)

    def declared(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if n in self.bits]

    @property
    def declared_value(self) -> int:
        return self.value(self.bits)

    def decode(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        """name -> boolean array of the pixels where that plane is set."""
        mask = np.asarray(mask).astype(np.int64, copy=False)
        return {name: (mask & (1 << bit)) != 0 for name, bit in self.bits.items()}

    def counts(self, mask: np.ndarray) -> dict[str, int]:
        """name -> number of pixels with that plane set; '(undeclared)' counts pixels with bits no plane declares."""
        mask = np.asarray(mask).astype(np.int64, copy=False)
        out = {name: int(v.sum()) for name, v in self.decode(mask).items()}
        undeclared = int(((mask & ~np.int64(self.declared_value)) != 0).sum())
        if undeclared:
            out["(undeclared)"] = undeclared
        return out


def parse_reject(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """--reject-planes NAME,NAME,...: mask plane names (without MP_); 'default' stands for DEFAULT_REJECT."""
    if text is None:
        return DEFAULT_REJECT
    items = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        if item.lower() == "default":
            names += DEFAULT_REJECT
            continue
        name = item[3:] if item.upper().startswith("MP_") else item
        if not name.replace("_", "").isalnum():
            raise FeatcacheError(f"--reject-planes {item}: expected mask plane names such as NO_DATA,BAD,CR "
                                 "(or 'default')")
        names.append(name.upper())
    if not names:
        raise FeatcacheError("--reject-planes: expected at least one mask plane name (or 'default')")
    return tuple(dict.fromkeys(names))
