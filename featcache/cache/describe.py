"""`featcache inspect CACHE.zarr`: what a cache holds, how it was made, and which blocks are missing."""

from __future__ import annotations

import json
from pathlib import Path

from ..common.describe import Description
from .layout import feature_path
from .reader import open_cache


def describe_cache(path: Path) -> Description:
    """Text (and data) for `featcache inspect CACHE.zarr`."""
    cache = open_cache(path)
    info = cache.info()
    enc = info["encoder"] or {}
    lines = [f"feature cache {path}  (featcache {info['version']}, format {info['format']})",
             f"  fingerprint      {info['fingerprint']}",
             f"  encoder          {enc.get('tag', '?')} from {enc.get('source', '?')} "
             f"(dilation {enc.get('dilation')} from {enc.get('dilation_source', '?')})",
             f"  mask             {info['mask'].get('spec')}: {info['mask'].get('n_kept')} of "
             f"{info['mask'].get('n_pixels')} pixels kept",
             f"  noise            {json.dumps(info['noise'])}",
             f"  direction        {info['direction']}, stored as {info['store_dtype']}",
             f"  complete         {'yes' if info['complete'] else 'NO'}"]
    for key, blocks in info["missing_blocks"].items():
        shown = ", ".join(map(str, blocks[:20])) + (" ..." if len(blocks) > 20 else "")
        lines.append(f"    missing {key}: {len(blocks)} blocks ({shown})")
    for split, entry in info["splits"].items():
        world = (entry.get("identity") or {}).get("generator")
        lines.append(f"  split {split}: {entry['n_rows']} rows = {entry['n_source']} spectra x {entry['draws']} "
                     f"draws, from {entry['path']}[{entry['start']}:{entry['stop']}]"
                     + (f" (written by {world})" if world else ""))
        lines.append(f"    labels         {', '.join(entry['labels'])}")
        for layer, pools in entry["features"].items():
            widths = []
            for pool in pools:
                attrs = cache.array(feature_path(split, layer, pool)).attrs
                widths.append(f"{pool} ({attrs.get('D')})")
            lines.append(f"    {layer:<14} {', '.join(widths)}")
    return Description(info, "\n".join(lines))
