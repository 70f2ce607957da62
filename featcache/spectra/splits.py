"""--data NAME=FILE[:START:STOP]: named splits of a file's rows, parsed and resolved the same way in every
command that reads spectra."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

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

