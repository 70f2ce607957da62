"""The synthetic benchmark's fixed physics: the grid, the label space, the line table
(featcache/data/lines.csv: which pixels follow [alpha/M] and [C/M]), the OH sky lines and the noise model's
count levels. The stellar spectra themselves come from the reference grid (emulator.py)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.errors import FeatcacheError
from ..common.resources import embedded, missing_message

# -- the grid and the label space ------------------------------------------------------------------
WAVE_MIN, WAVE_MAX, N_PIXELS = 7100.0, 8850.0, 4096
RESOLUTION = 5000.0
DEFAULT_MAG = 21.5
DEFAULT_RV_MAX = 300.0
LABEL_RANGES: dict[str, tuple[float, float]] = {
    "T_eff": (3750.0, 6000.0), "log_g": (1.0, 5.0), "M_H": (-2.5, 0.75), "a_M": (-0.25, 0.5),
    "C_M": (-0.75, 0.5)}
PARAM_COLUMNS = [*LABEL_RANGES, "mag", "redshift", "snr", "random_seed"]
GENERATOR_VERSION = "2"
"""1: a one-layer line-by-line model with a pseudo-random weak-line forest (gravity trends of the Ca II
triplet backwards; see data/README.md). 2: rest-frame spectra interpolated from Korg/MARCS model spectra."""
WAVE_MEDIUM = "air"

C_KMS = 299792.458
HC_K = 1.4387769e8  # h c / k in Angstrom K
LINES_CSV = embedded("lines.csv")  # documented in the top-level data/README.md

# element symbols the line table may name (the table's lines choose which pixels follow [alpha/M] and [C/M])
ELEMENTS = ("H", "C", "N", "O", "Na", "Mg", "Al", "Si", "S", "K", "Ca", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni")


@dataclass(frozen=True)
class Physics:
    """The generator's fixed choices (data/README.md, "Physics"): the instrument's resolving power, the
    line-spread truncation and the labels' extrapolation guard."""

    resolution: float = RESOLUTION  # Gaussian line spread of FWHM lambda / R
    lsf_sigmas: float = 5.0         # the line spread is truncated at this many sigma
    mh_min: float = -4.0            # effective metallicities (with the [alpha/M], [C/M] offsets) are clipped
    mh_max: float = 1.5             # to this range (wider than any label allows) in the linear extension


PHYSICS = Physics()


# -- the static model: lines, grids, sky ------------------------------------------------------------
def observed_wave() -> np.ndarray:
    """The PFS medium-resolution red-arm grid: 4096 pixels, linear, 7100-8850 A."""
    return np.linspace(WAVE_MIN, WAVE_MAX, N_PIXELS)


def load_lines(path: str | os.PathLike[str] | None = None):  # -> pandas.DataFrame
    """The documented line table (``featcache/data/lines.csv``, described in data/README.md)."""
    import pandas as pd

    path = Path(path) if path is not None else LINES_CSV
    if not path.exists():
        raise FeatcacheError(missing_message(path, "the line table") if path == LINES_CSV
                             else f"{path}: line table not found")
    table = pd.read_csv(path)
    missing = {"species", "element", "ion", "wavelength", "excitation_ev", "log_gf", "damping"} - set(table)
    if missing:
        raise FeatcacheError(f"{path}: missing columns {sorted(missing)}")
    unknown = set(table["element"]) - set(ELEMENTS)
    if unknown:
        raise FeatcacheError(f"{path}: unknown elements {sorted(unknown)}")
    return table


def air_from_vacuum(wave_vac: np.ndarray) -> np.ndarray:
    """Air wavelengths (A) of vacuum wavelengths (A): Edlen (1966) as adopted by Morton (2000)."""
    sigma2 = (1e4 / wave_vac) ** 2
    n = 1.0 + 1e-8 * (8342.13 + 2406030.0 / (130.0 - sigma2) + 15997.0 / (38.9 - sigma2))
    return wave_vac / n


def oh_lines(t_rot: float = 100.0, n_max: int = 12) -> dict[str, np.ndarray]:
    """OH Meinel emission lines from a documented rule (not a measured atlas).

    Band origins from the X2Pi vibrational ladder G(v) = we(v+1/2) - wexe(v+1/2)^2 + weye(v+1/2)^3
    (we 3737.76, wexe 84.88, weye 0.54 cm^-1), rotational constants B_v = 18.91 - 0.724 (v+1/2); P, Q
    and R branches for N'' = 1..n_max with a rotational temperature of 100 K, each split into the two
    spin-orbit ladders (F2 shifted by -(8 + 1.1 N) cm^-1); bands (8,3), (9,4), (5,1), (6,2), (7,3) with
    relative band strengths 1.0, 0.55, 0.8, 1.0, 0.9. Wavelengths converted to air.
    """
    def g(v: int) -> float:
        x = v + 0.5
        return 3737.76 * x - 84.88 * x * x + 0.54 * x ** 3

    def b(v: int) -> float:
        return 18.91 - 0.724 * (v + 0.5)

    waves, intens, band_id = [], [], []
    bands = [((8, 3), 1.0), ((9, 4), 0.55), ((5, 1), 0.8), ((6, 2), 1.0), ((7, 3), 0.9)]
    for k, ((vu, vl), strength) in enumerate(bands):
        nu0, bu, bl = g(vu) - g(vl), b(vu), b(vl)
        for n_low in range(1, n_max + 1):
            for branch, dn, weight in (("P", -1, 0.55), ("Q", 0, 0.25), ("R", 1, 0.30)):
                n_up = n_low + dn
                if n_up < 1:
                    continue
                if branch == "Q" and n_low > 4:
                    continue
                nu = nu0 + bu * n_up * (n_up + 1) - bl * n_low * (n_low + 1)
                pop = (2 * n_up + 1) * math.exp(-bu * n_up * (n_up + 1) * 1.4388 / t_rot)
                for shift, w_spin in ((0.0, 1.0), (-(8.0 + 1.1 * n_low), 0.8)):
                    waves.append(1e8 / (nu + shift))
                    intens.append(strength * weight * w_spin * pop)
                    band_id.append(k)
    wave = air_from_vacuum(np.array(waves))
    inten = np.array(intens)
    return {"wavelength": wave, "intensity": inten / inten.max(), "band": np.array(band_id)}


N_OH_BANDS = 5


@dataclass(frozen=True)
class Noise:
    """Count levels of the noise model at mag 21.5 (per pixel, throughput 1)."""

    obj_counts: float = 100.0     # object continuum
    sky_counts: float = 800.0     # sky continuum
    read_var: float = 190.0       # read noise variance (several exposures, binned)
    oh_counts: float = 30000.0    # OH intensity scale (times the unit-peak line spectrum in 1/A)
    oh_var_max: float = 3900.0    # OH variance saturates here (the simulator's sky residual level)
    sky_jitter: float = 0.08      # per-spectrum sky continuum scale: uniform 1 +- this
    oh_jitter: float = 0.15       # per-spectrum OH scale: uniform 1 +- this, times 1 +- 0.1 per band


NOISE = Noise()
