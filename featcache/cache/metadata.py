"""The cache's metadata (`attrs["featcache"]`, specified in FORMAT.md) as typed, frozen objects, in the manner
of zarr-python's metadata classes: `CacheMetadata.from_dict(attrs)` reads it once (the reader does), `to_dict()`
gives back exactly what was read, and everything outside cache/ asks these objects, never the raw dict.
Keys this version does not know are kept (`extra`), so a newer writer's additions survive a round trip."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..common.errors import FeatcacheError


def _known(cls: type, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {f.name for f in fields(cls)} - {"extra"}
    return {k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names}


@dataclass(frozen=True)
class SplitMetadata:
    """One split: its file rows [start, stop), N source spectra x draws = R rows, labels, blocks, identity."""

    path: str
    start: int
    stop: int
    n_source: int
    draws: int
    n_rows: int
    labels: tuple[str, ...]
    n_blocks: int
    identity: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitMetadata:
        known, extra = _known(cls, data)
        return cls(**{**known, "labels": tuple(known.get("labels", ()))}, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["labels"] = list(self.labels)
        if self.identity is None:
            out.pop("identity")
        return {**out, **self.extra}


@dataclass(frozen=True)
class GenerationMetadata:
    """One run that added arrays: its id, the arrays (path, split, kind, layer, pool, definition), splits."""

    id: int
    arrays: tuple[Mapping[str, Any], ...]
    splits: tuple[str, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)  # command, created, ...

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationMetadata:
        known, extra = _known(cls, data)
        return cls(int(known["id"]), tuple(dict(a) for a in known.get("arrays", ())),
                   tuple(known.get("splits", ())), extra)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "arrays": [dict(a) for a in self.arrays], "splits": list(self.splits), **self.extra}


@dataclass(frozen=True)
class CacheMetadata:
    """Everything `attrs["featcache"]` holds (FORMAT.md, "Metadata")."""

    format: int
    fingerprint: str
    splits: Mapping[str, SplitMetadata]
    generations: tuple[GenerationMetadata, ...]
    parts: Mapping[str, Any] = field(default_factory=dict)
    version: str | None = None
    encoder: Mapping[str, Any] | None = None
    mask: Any = None
    noise: Any = None
    direction: str | None = None
    store_dtype: str | None = None
    prepared: bool = False
    commands: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)  # compute_dtype, block_rows, created, newer keys

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "cache") -> CacheMetadata:
        """Parse the attrs; a missing required key is a one-line error naming the cache."""
        try:
            known, extra = _known(cls, data)
            return cls(**{**known, "format": int(known["format"]), "fingerprint": str(known["fingerprint"]),
                          "splits": {k: SplitMetadata.from_dict(v) for k, v in known["splits"].items()},
                          "generations": tuple(GenerationMetadata.from_dict(g) for g in known["generations"]),
                          "commands": tuple(known.get("commands", ()))}, extra=extra)
        except (KeyError, TypeError, ValueError) as exc:
            raise FeatcacheError(f"{where}: damaged cache metadata ({type(exc).__name__}: {exc}); re-extract it "
                                 "with --overwrite") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                continue
            if f.name == "splits":
                value = {k: v.to_dict() for k, v in value.items()}
            elif f.name == "generations":
                value = [g.to_dict() for g in value]
            elif f.name == "commands":
                value = list(value)
            out[f.name] = value
        return {**out, **self.extra}

    # -- what the rest of featcache asks ------------------------------------------------------------
    @property
    def encoder_parts(self) -> Mapping[str, Any]:
        """The encoder's part of the fingerprint (weights sha256, config, code version, random-init seed)."""
        return (self.parts or {}).get("encoder") or {}

    @property
    def encoder_sha256(self) -> str:
        return str(self.encoder_parts["weights_sha256"])

    @property
    def random_init_seed(self) -> int | None:
        return self.encoder_parts.get("random_init_seed")

    @property
    def encoder_tag(self) -> str | None:
        return (self.encoder or {}).get("tag")

    @property
    def encoder_source(self) -> str | None:
        return (self.encoder or {}).get("source")
