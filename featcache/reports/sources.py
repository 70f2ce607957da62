"""The caches a comparison reads, each under the encoder label its rows carry, and their raw-input rows.

Baselines: a cache's input_flux / input_error pseudo-layers appear as "raw input" rows once per distinct
data, mask and noise, however many caches share them; a --random-init cache given as another --cache is the
random-encoder baseline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..cache.fingerprint import digest
from ..cache.reader import FeatureCache, open_cache
from ..common.errors import FeatcacheError
from ..model.taps import PSEUDO_LAYERS

RAW_INPUT = "raw input"


@dataclass
class Source:
    """One cache in the table, under the encoder label its rows carry."""

    name: str
    path: Path
    cache: FeatureCache
    baseline_name: str | None = None  # label of its raw-input rows; None: another cache already shows them


def parse_cache_args(items: Iterable[str | Path]) -> list[tuple[str | None, Path]]:
    """`--cache NAME=PATH` or `--cache PATH` (an existing path wins over a NAME= reading)."""
    out: list[tuple[str | None, Path]] = []
    for item in items:
        text = str(item)
        name, _, rest = text.partition("=")
        if isinstance(item, Path) or Path(text).exists() or not rest or not name or "/" in name:
            out.append((None, Path(text)))
        else:
            out.append((name, Path(rest)))
    return out


def default_label(cache: FeatureCache) -> str:
    """The encoder tag (marked random-init when it is), else the cache's file stem."""
    tag = str(cache.metadata.encoder_tag or cache.path.stem)
    seed = cache.metadata.random_init_seed
    return f"{tag} random-init" if seed is not None else tag


def data_identity(cache: FeatureCache) -> str:
    """What the raw-input pseudo-layers depend on: the fingerprint's parts without the encoder."""
    parts = {k: v for k, v in (cache.metadata.parts or {}).items() if k not in ("encoder", "direction")}
    return digest(parts)


def test_rows_key(cache: FeatureCache, split: str) -> str:
    """Which spectra, in which order, with which noise, a cache's split holds (draw 0: the rows heads score):
    two caches' predictions of the split pair row by row only when their keys are equal. By the row hashes
    where the cache keeps them, else by the file's content identity and the rows."""
    import hashlib

    hashes = cache.row_hashes(split)
    rows = (hashlib.sha256(hashes.tobytes()).hexdigest() if hashes is not None
            else [cache.split_identity(split), *cache.split_rows(split)])
    return digest({"rows": rows, "noise": (cache.metadata.parts or {}).get("noise")})


def open_sources(caches: Mapping[str, str | Path] | Sequence[str | Path | tuple[str | None, str | Path]],
                 train_split: str = "train") -> list[Source]:
    """Open every cache and give each a unique encoder label (explicit names must be unique)."""
    if isinstance(caches, Mapping):
        pairs: list[tuple[str | None, Path]] = [(k, Path(v)) for k, v in caches.items()]
    else:
        pairs = []
        for item in caches:
            if isinstance(item, tuple):
                pairs.append((item[0], Path(item[1])))
            else:
                pairs.extend(parse_cache_args([item]))
    if not pairs:
        raise FeatcacheError("give at least one --cache")
    explicit = [n for n, _ in pairs if n]
    for name in explicit:
        if explicit.count(name) > 1:
            raise FeatcacheError(f"--cache {name}=...: the name '{name}' is given twice")
    sources: list[Source] = []
    taken = set(explicit) | {RAW_INPUT}
    for name, path in pairs:
        cache = open_cache(path)
        if not name:
            for candidate in (default_label(cache), cache.path.stem, *(f"{cache.path.stem}-{i}" for i in range(2, 99))):
                if candidate not in taken:
                    name = candidate
                    break
        taken.add(str(name))
        sources.append(Source(str(name), Path(path), cache))
    identities: dict[str, list[Source]] = {}
    for src in sources:
        if any(layer in PSEUDO_LAYERS for layer in src.cache.layers(train_split)):
            identities.setdefault(data_identity(src.cache), []).append(src)
    for group in identities.values():
        group[0].baseline_name = RAW_INPUT if len(identities) == 1 else f"{RAW_INPUT} ({group[0].name})"
    return sources
