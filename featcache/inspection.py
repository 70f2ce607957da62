"""Human-readable descriptions of the files featcache reads and writes (`featcache inspect`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FeatcacheError


@dataclass
class Description:
    data: dict[str, Any]
    text: str


def describe_dataset(path: Path) -> Description:
    from .data import PfsDataset

    with PfsDataset(path) as ds:
        info = ds.info().as_dict()
        labels = ds.label_names()
    lines = [
        f"pfsspec dataset {path}",
        f"  spectra N        {info['n_rows']}",
        f"  pixels P         {info['n_pixels']}",
        f"  wavelength       {info['wave_min']:.2f} - {info['wave_max']:.2f} A",
        f"  arrays           {', '.join(info['arrays'])}",
        f"  params           {info['params_key'] or '(none)'}",
        f"  params columns   {', '.join(info['params_columns']) or '(none)'}",
        f"  numeric labels   {', '.join(labels) or '(none)'}",
        f"  file size        {info['file_size'] / 1e6:.1f} MB",
    ]
    info["labels"] = labels
    return Description(info, "\n".join(lines))


def describe_checkpoint(path: Path) -> Description:
    from .checkpoint import load_encoder

    loaded = load_encoder(path)
    cfg = loaded.config
    n_total = sum(p.numel() for p in loaded.model.parameters())
    data = {"path": str(path), "format": loaded.file_format, **cfg.as_dict(),
            "dilation_source": loaded.dilation_source, "parameters": n_total,
            "encoder_parameters": loaded.model.encoder_parameters(), "taps": loaded.model.tap_names,
            "weights_sha256": loaded.weights_digest(), **{k: v for k, v in loaded.meta.items()}}
    lines = [f"checkpoint {path} ({loaded.file_format})",
             f"  architecture     BlindspotModel1D {cfg.tag}",
             f"  dilation         {cfg.dilation} (from {loaded.dilation_source})",
             f"  parameters       {n_total:,} (encoder {data['encoder_parameters']:,})",
             f"  taps             {', '.join(loaded.model.tap_names)}",
             f"  weights sha256   {data['weights_sha256'][:16]}"]
    for key, value in loaded.meta.items():
        lines.append(f"  {key:<16} {value}")
    return Description(data, "\n".join(lines))


def describe(path: Path) -> Description:
    """Pick the description by what PATH is."""
    if not path.exists():
        raise FeatcacheError(f"{path}: no such file or directory")
    if path.is_dir() or path.suffix == ".zarr":
        from .cache import describe_cache

        return describe_cache(path)
    if path.suffix in (".ckpt", ".pt", ".pth"):
        return describe_checkpoint(path)
    with open(path, "rb") as handle:
        magic = handle.read(8)
    if magic == b"\x89HDF\r\n\x1a\n":
        return describe_dataset(path)
    raise FeatcacheError(f"{path}: not a dataset (.h5), cache (.zarr) or checkpoint (.ckpt, .pt)")
