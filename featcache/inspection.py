"""`featcache inspect PATH`: pick the description by what PATH is (a dataset, a cache, a checkpoint or a PFS
FITS product); each format describes itself in its own package."""

from __future__ import annotations

from pathlib import Path

from .common.describe import Description
from .common.errors import FeatcacheError


def describe(path: Path) -> Description:
    """Pick the description by what PATH is."""
    if not path.exists():
        raise FeatcacheError(f"{path}: no such file or directory")
    if path.is_dir() or path.suffix == ".zarr":
        from .cache.describe import describe_cache

        return describe_cache(path)
    if path.suffix in (".ckpt", ".pt", ".pth"):
        from .model.checkpoint import describe_checkpoint

        return describe_checkpoint(path)
    with open(path, "rb") as handle:
        magic = handle.read(9)
    if magic[:8] == b"\x89HDF\r\n\x1a\n":
        from .spectra.pfsspec import describe_dataset

        return describe_dataset(path)
    if magic == b"SIMPLE  =" or path.suffix.lower() in (".fits", ".fit"):
        from .observed.describe import describe_product

        return describe_product(path)
    raise FeatcacheError(f"{path}: not a dataset (.h5), cache (.zarr), checkpoint (.ckpt, .pt) or PFS spectra "
                         "product (.fits)")
