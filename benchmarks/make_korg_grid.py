"""Build the synthetic benchmark's reference grid, featcache/data/korg/grid.npz, from the obafgkm package.

    pip install --no-deps obafgkm==0.1.4     # calibration environment only; not a runtime dependency
    python benchmarks/make_korg_grid.py      # rewrites featcache/data/korg/grid.npz (about 10 s)

obafgkm 0.1.4 (MIT, Copyright (c) 2025 Amaya Sinha) ships 108 spectra synthesised with Korg from MARCS model
atmospheres: T_eff 3000-8000 K (step 1000) x log g 0-5 (step 1) x [M/H] -2, 0, +0.5, sampled monochromatically
at 1 A steps of a vacuum grid converted to air (3000-10000 A). Its folder `unnormalized_spectra` holds the
continuum-normalised flux and `normalized_spectra` the absolute flux (the names are swapped); the script
reads both and checks which is which. It keeps 6990-9010 A (the PFS red arm 7100-8850 A with radial
velocities up to 3000 km/s and the line-spread margin) and stores, per node and sample:

* ``log_tau``: log(tau + EPS) with tau = -ln(normalised flux), the quantity the generator interpolates;
* ``log_cont``: ln of the absolute continuum (flux / normalised flux), up to one constant per node.

The package is found without importing it (its ``__init__`` prints a banner).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "featcache" / "data" / "korg" / "grid.npz"
TEFF = (3000.0, 4000.0, 5000.0, 6000.0, 7000.0, 8000.0)
LOGG = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
MH = (-2.0, 0.0, 0.5)
WAVE_LO, WAVE_HI = 6990.0, 9010.0
EPS = 1e-3  # the floor of tau in log(tau + EPS): continuum pixels interpolate linearly in tau
FLUX_FLOOR = 1e-6


def package_dir() -> Path:
    spec = importlib.util.find_spec("obafgkm")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("obafgkm is not installed: pip install --no-deps obafgkm==0.1.4")
    return Path(list(spec.submodule_search_locations)[0])


def read_node(root: Path, teff: float, logg: float, mh: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(air wavelength, normalised flux, absolute flux) of one node."""
    name = f"teff_{teff}_logg_{logg}_mh_{mh}.txt"
    a = np.loadtxt(root / "unnormalized_spectra" / name)
    b = np.loadtxt(root / "normalized_spectra" / name)
    if not np.array_equal(a[:, 0], b[:, 0]):
        sys.exit(f"{name}: the two folders disagree on the wavelengths")
    normalised, absolute = (a[:, 1], b[:, 1]) if a[:, 1].max() <= 1.0 + 1e-9 else (b[:, 1], a[:, 1])
    if normalised.max() > 1.0 + 1e-9 or absolute.min() <= 0:
        sys.exit(f"{name}: cannot tell the normalised flux from the absolute flux")
    return a[:, 0], normalised, absolute


def build(root: Path) -> dict[str, np.ndarray]:
    wave = None
    rows_tau, rows_cont = [], []
    for teff in TEFF:
        for logg in LOGG:
            for mh in MH:
                w, norm, absolute = read_node(root, teff, logg, mh)
                keep = (w >= WAVE_LO) & (w <= WAVE_HI)
                if wave is None:
                    wave = w[keep]
                elif not np.array_equal(wave, w[keep]):
                    sys.exit("the nodes do not share one wavelength grid")
                tau = -np.log(np.clip(norm[keep], FLUX_FLOOR, 1.0))
                rows_tau.append(np.log(tau + EPS))
                rows_cont.append(np.log(absolute[keep] / norm[keep]))
    shape = (len(TEFF), len(LOGG), len(MH), len(wave))
    log_tau = np.array(rows_tau, dtype=np.float32).reshape(shape)
    log_cont = np.array(rows_cont)
    log_cont -= log_cont.mean(axis=1, keepdims=True)  # only the shape matters (the flux is median-normalised)
    return {"wave_air": wave, "teff": np.array(TEFF), "logg": np.array(LOGG), "mh": np.array(MH),
            "log_tau": log_tau, "log_cont": log_cont.astype(np.float32).reshape(shape), "eps": np.array(EPS),
            "source": np.array("obafgkm 0.1.4: Korg spectra of MARCS model atmospheres (MIT licence)")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    grid = build(package_dir())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **grid)
    print(f"{args.out}: {grid['log_tau'].shape} nodes x samples, {args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
