"""What `featcache inspect FILE.fits` prints about a PFS spectra product."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..common.describe import Description
from .masks import DEFAULT_REJECT
from .products import UNITS, read_product

SHOWN_TARGETS = 5


def describe_product(path: Path, reject: tuple[str, ...] = DEFAULT_REJECT) -> Description:
    product = read_product(path)
    spectra = product.spectra
    types: dict[str, int] = {}
    for s in spectra:
        types[s.target.target_type_name] = types.get(s.target.target_type_name, 0) + 1
    plane_sets = {tuple(sorted(s.planes.bits.items())) for s in spectra}
    planes = spectra[0].planes
    counts: dict[str, int] = {}
    usable = total = 0
    for s in spectra:
        for name, n in s.planes.counts(s.mask).items():
            counts[name] = counts.get(name, 0) + n
        usable += int(s.usable(reject).sum())
        total += s.flux.size
    lengths = sorted({s.flux.size for s in spectra})
    waves = [s.wavelength[np.isfinite(s.wavelength)] for s in spectra]
    visits = sorted({int(o["visit"]) for s in spectra for o in s.observations if "visit" in o})
    arms = sorted({str(o.get("arm", "")) for s in spectra for o in s.observations})
    data: dict[str, Any] = {
        "path": str(path), "product": product.product, "product_basis": product.product_basis,
        "layout": product.layout, "damd_ver": product.damd_ver, "versions": product.versions, "hdus": product.hdus,
        "n_targets": len(spectra), "target_types": types, "cat_ids": sorted({s.target.cat_id for s in spectra}),
        "n_pixels": lengths, "wavelength_source": product.wavelength_source,
        "wavelength_nm": [float(min(w.min() for w in waves)), float(max(w.max() for w in waves))],
        "units": UNITS, "n_covariance_planes": sorted({s.covariance.shape[0] for s in spectra}),
        "mask_planes": dict(planes.bits), "mask_planes_vary": len(plane_sets) > 1, "mask_pixels": counts,
        "reject_planes": list(reject), "usable_fraction": usable / max(total, 1),
        "visits": visits, "arms": arms, "n_observations": sum(len(s.observations) for s in spectra),
        "targets": [{"catId": s.target.cat_id, "objId": s.target.obj_id, "ra": s.target.ra, "dec": s.target.dec,
                     "targetType": s.target.target_type_name} for s in spectra[:SHOWN_TARGETS]],
    }
    lines = [f"{product.product} {path}",
             f"  identified by     {product.product_basis} ({product.layout}, DAMD_VER {product.damd_ver})",
             f"  versions          {', '.join(f'{k} {v}' for k, v in product.versions.items()) or '(none)'}",
             f"  targets           {len(spectra)} ({', '.join(f'{v} {k}' for k, v in types.items())}); "
             f"catId {', '.join(map(str, data['cat_ids'][:5]))}{' ...' if len(data['cat_ids']) > 5 else ''}",
             f"  pixels            {', '.join(map(str, lengths))}",
             f"  wavelength        {data['wavelength_nm'][0]:.3f} - {data['wavelength_nm'][1]:.3f} nm (vacuum, "
             f"barycentric), from the {product.wavelength_source}",
             "  units             flux and sky nJy (f_nu), variance nJy^2 (COVAR plane 0; "
             f"{'/'.join(map(str, data['n_covariance_planes']))} planes)",
             f"  mask planes       {', '.join(f'{k}={v}' for k, v in planes.bits.items())}"
             + (" (they differ between targets; the first target's shown)" if data["mask_planes_vary"] else ""),
             f"  masked pixels     {', '.join(f'{k} {v}' for k, v in counts.items() if v) or '(none)'}",
             f"  usable pixels     {100 * data['usable_fraction']:.1f}% (none of {','.join(reject)} set, finite "
             "flux, finite positive variance)",
             f"  observations      {data['n_observations']} rows, visits {', '.join(map(str, visits[:6]))}"
             f"{' ...' if len(visits) > 6 else ''}, arms {', '.join(arms) or '(none)'}"]
    for t in data["targets"]:
        lines.append(f"  target            catId {t['catId']} objId {t['objId']} RA {t['ra']:.6f} Dec {t['dec']:.6f} "
                     f"{t['targetType']}")
    if len(spectra) > SHOWN_TARGETS:
        lines.append(f"  ...               {len(spectra) - SHOWN_TARGETS} more targets")
    return Description(data, "\n".join(lines))
