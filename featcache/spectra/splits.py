"""--data NAME=FILE[:START:STOP]: named splits of a file's rows, parsed and resolved the same way in every
command that reads spectra."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.errors import FeatcacheError
from ..common.overlap import check_disjoint  # noqa: F401 -- re-exported: where a reader looks for it


@dataclass(frozen=True)
class SplitSpec:
    """One --data NAME=FILE[:START:STOP] value: a named split of rows [start, stop) of a file."""

    name: str
    path: Path
    start: int | None = None
    stop: int | None = None

    def resolve(self, n_rows: int) -> tuple[int, int]:
        """Concrete [start, stop) in the file (Python slice rules, negative counts from the end), refusing a
        bound outside the file (never clamped: a typo must not silently shrink a split) and an empty split."""
        for bound in (self.start, self.stop):
            if bound is not None and not -n_rows <= bound <= n_rows:
                raise FeatcacheError(f"--data {self.text}: row {bound} is outside the file, which has {n_rows} "
                                     f"rows ({self.path}); give bounds in -{n_rows}..{n_rows}")
        start, stop, _ = slice(self.start, self.stop).indices(n_rows)
        if stop <= start:
            raise FeatcacheError(f"--data {self.text}: split '{self.name}' has no rows "
                                 f"(rows {start}:{stop} of {n_rows} in {self.path})")
        return start, stop

    @property
    def text(self) -> str:
        rows = "" if self.start is None and self.stop is None else \
            f":{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}"
        return f"{self.name}={self.path}{rows}"


# names of the cache's own root entries: a split cannot take them
RESERVED_NAMES = ("mask", "wave", "zarr.json")


def parse_split_spec(text: str) -> SplitSpec:
    """Parse NAME=FILE[:START:STOP]; NAME becomes a group of the cache, so it is a plain word."""
    match = re.fullmatch(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)=(?P<path>.+?)(?::(?P<start>-?\d*):(?P<stop>-?\d*))?",
                         str(text).strip(), flags=re.DOTALL)  # a file name may hold any character, newlines too
    if not match:
        raise FeatcacheError(f"--data {text}: expected NAME=FILE[:START:STOP] with NAME of letters, digits, '_', '-' "
                             "and '.' (starting with a letter or digit), e.g. train=train.h5 or val=all.h5:0:1000")
    if match["name"] in RESERVED_NAMES or len(match["name"]) > 100:
        raise FeatcacheError(f"--data {text}: '{match['name'][:100]}' cannot name a split (reserved by the cache's "
                             f"layout: {', '.join(RESERVED_NAMES)}; at most 100 characters)")
    start = int(match["start"]) if match["start"] else None
    stop = int(match["stop"]) if match["stop"] else None
    return SplitSpec(match["name"], Path(match["path"]), start, stop)


def parse_split_specs(values: list[str] | tuple[str, ...]) -> list[SplitSpec]:
    """Several --data values; a split name given twice is an error."""
    specs = [parse_split_spec(v) for v in values]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise FeatcacheError(f"--data: split name '{spec.name}' given twice")
        seen.add(spec.name)
    if not specs:
        raise FeatcacheError("--data: give at least one split, e.g. --data train=train.h5")
    return specs



@dataclass
class OpenedSplit:
    """A --data split whose file was opened and checked: its rows [start, stop) and what the file offers."""

    spec: SplitSpec
    start: int
    stop: int
    n_pixels: int
    has_noisy: bool
    label_names: list[str]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def path(self) -> Path:
        return self.spec.path


def check_same_grid(wave: Any, first: Any, path: Any, first_path: Any) -> None:
    """Every split on the first split's wavelength grid (to 1e-6 A), saying how the grids differ."""
    import numpy as np

    if wave.shape != first.shape:
        raise FeatcacheError(f"{path}: wavelength grid has {wave.shape[0]} pixels, {first_path} has {first.shape[0]};"
                             " every split must share one grid")
    if not np.allclose(wave, first, rtol=0, atol=1e-6):
        pixel = int(np.argmax(np.abs(wave - first)))
        raise FeatcacheError(f"{path}: wavelength grid differs from {first_path}'s (both {wave.shape[0]} pixels; "
                             f"pixel {pixel} is at {wave[pixel]:.6f} A vs {first[pixel]:.6f} A, a shift of "
                             f"{wave[pixel] - first[pixel]:+.3g} A); every split must share one grid")


def open_splits(values: list[str] | tuple[str, ...], *, stored_noise: bool = False, generated_noise: bool = False,
                names: tuple[str, ...] | None = None, required: tuple[str, ...] = (),
                whole_files: str | None = None) -> tuple[list[OpenedSplit], Any]:
    """The --data splits of every command that reads spectra, parsed and opened once each: rows resolved in
    their file, every file on the first one's wavelength grid, a stored noisy array in each where `stored_noise`
    (--noise stored) needs one, and no observed spectra (featcache import) where `generated_noise` would add
    noise to flux that carries its own. names: the split names the command knows (None: any); required: names that
    must be given; whole_files: the command's name when it reads whole files (row slices refused). Returns the
    splits and the first file's wavelength grid."""
    from .pfsspec import PfsDataset

    specs = parse_split_specs(values)
    for spec in specs:
        if names is not None and spec.name not in names:
            raise FeatcacheError(f"--data {spec.text}: unknown split '{spec.name}'; choose from: {', '.join(names)}")
        if whole_files and (spec.start is not None or spec.stop is not None):
            raise FeatcacheError(f"--data {spec.text}: {whole_files} reads whole files; use --max-train / --max-val "
                                 "for the first N rows")
    missing = [name for name in required if name not in [s.name for s in specs]]
    if missing:
        others = [n for n in names or () if n not in required]
        raise FeatcacheError(f"--data {missing[0]}=FILE is required"
                             + (f" (and optionally {', '.join(f'--data {n}=FILE' for n in others)})" if others else ""))
    opened: list[OpenedSplit] = []
    wave: Any = None
    for spec in specs:
        with PfsDataset(spec.path) as ds:
            start, stop = spec.resolve(ds.n_rows)
            if wave is None:
                wave = ds.wave
            else:
                check_same_grid(ds.wave, wave, spec.path, specs[0].path)
            if generated_noise and ds.observed:
                raise FeatcacheError(f"{spec.path}: observed spectra (written by featcache import): their flux "
                                     "already carries its noise; use --noise stored")
            if stored_noise and not ds.has_noisy:
                raise FeatcacheError(f"{spec.path}: --noise stored but the file has no 'noisy' array "
                                     "(dataset/arrays/noisy/value); use --noise generated")
            labels = ds.label_names() if ds.params_key else []
            opened.append(OpenedSplit(spec, start, stop, int(ds.n_pixels), bool(ds.has_noisy), labels))
    return opened, wave
