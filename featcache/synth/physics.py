"""The synthetic benchmark's fixed physics: the grid, the label space, the calibrated constants, the line
table (featcache/data/lines.csv), the weak-line forest, the OH sky lines and the noise model's count levels."""

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
GENERATOR_VERSION = "1"

C_KMS = 299792.458
HC_K = 1.4387769e8  # h c / k in Angstrom K
K_BOLTZ = 1.380649e-16  # erg / K
LINES_CSV = embedded("lines.csv")  # documented in the top-level data/README.md

# element: (mass in amu, first ionisation energy in eV, solar log eps, abundance group, log10(2 U_II / U_I))
ELEMENTS: dict[str, tuple[float, float, float, str, float]] = {
    "H": (1.008, 13.598, 12.00, "H", 0.00), "C": (12.011, 11.260, 8.43, "C", 0.10),
    "N": (14.007, 14.534, 7.83, "metal", 0.65), "O": (15.999, 13.618, 8.69, "alpha", -0.04),
    "Na": (22.990, 5.139, 6.24, "metal", 0.00), "Mg": (24.305, 7.646, 7.60, "alpha", 0.60),
    "Al": (26.982, 5.986, 6.45, "metal", -0.46), "Si": (28.086, 8.152, 7.51, "alpha", 0.07),
    "S": (32.060, 10.360, 7.12, "alpha", -0.02), "K": (39.098, 4.341, 5.03, "metal", -0.02),
    "Ca": (40.078, 6.113, 6.34, "alpha", 0.56), "Ti": (47.867, 6.828, 4.95, "alpha", 0.56),
    "V": (50.942, 6.746, 3.93, "metal", 0.30), "Cr": (51.996, 6.767, 5.64, "metal", 0.08),
    "Mn": (54.938, 7.434, 5.43, "metal", 0.37), "Fe": (55.845, 7.902, 7.50, "metal", 0.48),
    "Co": (58.933, 7.881, 4.99, "metal", 0.30), "Ni": (58.693, 7.640, 6.22, "metal", -0.18)}


# -- physical knobs (the calibration: see data/README.md) -------------------------------------------
@dataclass(frozen=True)
class Physics:
    """Every constant the generator's physics uses; the defaults are the calibrated benchmark."""

    t_layer: float = 0.86          # line-forming temperature / T_eff for metal lines
    t_ion: float = 0.95            # ionisation-balance temperature / T_eff (set deeper than the lines)
    log_pe_sun: float = 1.05       # log electron pressure (dyn cm^-2) of the solar line-forming layer
    dlogpe_dlogg: float = 0.45     # electron pressure vs gravity (g^(1/3) .. g^(1/2); calibrated)
    dlogpe_dmh: float = 0.35       # metals donate the electrons in cool atmospheres
    dlogpe_dtheta: float = -3.75   # ... so P_e falls steeply with temperature
    log_pg_sun: float = 4.95       # log gas pressure (dyn cm^-2), for van der Waals damping
    dlogpg_dlogg: float = 0.55     # gas pressure of the wing-forming layer vs gravity (calibrated)
    dlogpg_dmh: float = -0.25
    dlogpg_dtheta: float = 0.6
    log_tau_scale: float = 10.46   # global line-opacity zero point (Fe I 8688 has W ~ 0.25 A in the Sun)
    xi_dwarf: float = 0.9          # microturbulence (km/s) at log_g 5 ...
    xi_giant: float = 2.1          # ... and at log_g 1
    gamma6_enhance: float = 0.35   # dex added to every log gamma6 (the usual Unsold enhancement)
    log_gamma6_default: float = -7.6
    h_offset: float = 2.3          # dex: Paschen lines form deeper, in hotter layers than the metal lines
    stark_scale: float = 1.7       # log10 of the Paschen Stark width (s^-1) per n_e^(2/3) (cm^-2)
    tio_scale: float = -5.4        # zero point of the TiO band strength
    cn_scale: float = -3.3         # zero point of the CN band strength
    wing_b_pixels: float = 1.6     # softening of the rendered damping wings (pixels)
    max_depth: float = 2.5         # total line depth saturates here: flux >= 8% of the continuum
    n_forest: int = 5000           # pseudo-random metal lines (see forest_lines)
    forest_loggf_mean: float = -1.6
    forest_loggf_sigma: float = 1.2
    forest_seed: int = 20240501


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
    unknown = set(table.loc[table["damping"] != "band", "element"]) - set(ELEMENTS)
    if unknown:
        raise FeatcacheError(f"{path}: unknown elements {sorted(unknown)}")
    return table


FOREST_ELEMENTS = {  # element: (weight, excitation range in eV); Fe-peak lines of the red are high-excitation
    "Fe": (0.50, (2.0, 5.2)), "Ni": (0.10, (2.0, 5.2)), "Cr": (0.07, (2.0, 5.2)), "Co": (0.05, (2.0, 5.2)),
    "Mn": (0.04, (2.0, 5.2)), "Si": (0.08, (4.9, 6.2)), "Ca": (0.04, (2.5, 4.6)), "Ti": (0.09, (0.8, 2.3)),
    "V": (0.03, (0.8, 2.3))}


def forest_lines(physics: Physics = PHYSICS) -> dict[str, np.ndarray]:
    """The weak-line forest: pseudo-random lines standing in for the thousands of weak metal lines.

    Rule (documented in data/README.md): a PCG64 generator seeded with ``physics.forest_seed`` draws
    ``n_forest`` lines uniform in 7060-8890 A; the element follows the weights of ``FOREST_ELEMENTS``;
    9% of the Fe lines are Fe II (excitation 2.8-3.9 eV); the excitation is lo + (hi - lo) u^0.6 in the
    element's range (u uniform: weighted to high excitation); log gf ~ N(forest_loggf_mean,
    forest_loggf_sigma) clipped to [-4.5, 0.5].
    """
    rng = np.random.Generator(np.random.PCG64(physics.forest_seed))
    n = physics.n_forest
    wave = rng.uniform(7060.0, 8890.0, n)
    names = list(FOREST_ELEMENTS)
    weights = np.array([FOREST_ELEMENTS[e][0] for e in names])
    elem = np.array(names)[rng.choice(len(names), n, p=weights / weights.sum())]
    ion = np.where((elem == "Fe") & (rng.random(n) < 0.09), 2, 1)
    lo = np.array([FOREST_ELEMENTS[e][1][0] for e in elem])
    hi = np.array([FOREST_ELEMENTS[e][1][1] for e in elem])
    chi = lo + (hi - lo) * rng.random(n) ** 0.6
    chi = np.where(ion == 2, 2.8 + 1.1 * rng.random(n), chi)
    log_gf = np.clip(rng.normal(physics.forest_loggf_mean, physics.forest_loggf_sigma, n), -4.5, 0.5)
    return {"wavelength": wave, "element": elem, "ion": ion, "excitation_ev": chi, "log_gf": log_gf}


def _air_from_vacuum(wave_vac: np.ndarray) -> np.ndarray:
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
    wave = _air_from_vacuum(np.array(waves))
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
