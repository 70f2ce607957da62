"""Files that ship inside the package (featcache/data/: the synthetic benchmark's line list, the demo encoder
with its YAML and mask), found with importlib.resources so that an installed wheel finds them exactly as a
clone does; nothing is looked up relative to a source tree."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGE = "featcache"
DATA_DIR = "data"


def embedded(*parts: str) -> Path:
    """The path of an embedded file, e.g. embedded("lines.csv"); readers need a real file (h5py, torch.load
    and the YAML beside a checkpoint), so the package is installed unzipped, as pip always does."""
    return Path(str(resources.files(PACKAGE).joinpath(DATA_DIR, *parts)))


def missing_message(path: Path, what: str) -> str:
    """The one-line error for an embedded file that is not where the package should have it."""
    return f"{path}: {what} is missing from the installed featcache package (featcache/{DATA_DIR}/); reinstall it"
