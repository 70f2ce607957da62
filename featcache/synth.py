"""Synthetic PFS red-arm stellar spectra: the embedded default benchmark (`featcache synth`).

The real pfsspec spectra are private, so featcache ships a generator that writes the same file layout
(`featcache.data.PfsDataset` reads it) with the same wavelength grid and noise regime, and with the
stellar labels encoded through (simplified) physics:

* continuum: a Planck curve at T_eff;
* atomic lines from ``data/lines.csv`` (real air wavelengths) plus a documented pseudo-random forest of
  weak metal lines; each line's equivalent width comes from a curve of growth (Voigt profile,
  thermal + microturbulent Doppler width, radiative + van der Waals damping) with a line opacity set by
  abundance ([M/H], [a/M], [C/M]), Boltzmann excitation and a Saha ion/neutral ratio whose electron
  pressure depends on T_eff, log_g and [M/H], relative to the H- continuum opacity;
* the strong lines (Ca II triplet, Na I 8183/8195, K I 7665/7699, Mg I 8807) and the Paschen series get
  explicit pressure-broadened (van der Waals / Stark) wings that grow with log_g;
* TiO bands in the coolest stars and CN bands (giants, [C/M]) from a molecular-equilibrium factor;
* everything at R ~ 5000, Doppler shifted by the radial velocity, median-normalised to 0.5;
* noise: a sky spectrum (smooth continuum + OH Meinel emission lines), object photon noise, read noise,
  scaled by magnitude; ``error`` is the resulting 1-sigma per pixel. The object term uses the line-free
  continuum, so the error vector does not encode the lines (nor log_g).

Spectrum ``i`` of a file with seed ``S`` depends only on ``(S, i)``: its random numbers come from its own
Philox generator keyed by ``random_seed = SeedSequence([S, i])`` (stored in the params table), and every
array operation is row-wise, so blocks can be generated in any order or in parallel and give bitwise the
same arrays. See ``data/README.md`` for the line table, the rules and the calibration figures.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FeatcacheError

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
LINES_CSV = Path(__file__).resolve().parent.parent / "data" / "lines.csv"

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
    """The documented line table (``data/lines.csv``)."""
    import pandas as pd

    path = Path(path) if path is not None else LINES_CSV
    if not path.exists():
        raise FeatcacheError(f"{path}: line table not found (the synthetic benchmark needs data/lines.csv "
                             "from the featcache source tree)")
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


def _gauss_rows(centres: np.ndarray, sigmas: np.ndarray, wave0: float, step: float, n_pix: int,
                half: int, weights: np.ndarray | None = None):
    """Sparse (n_lines, n_pix) matrix of unit-area Gaussians sampled on a linear grid (1/A)."""
    from scipy import sparse

    pos = (centres - wave0) / step
    first = np.floor(pos).astype(np.int64) - half + 1
    cols = first[:, None] + np.arange(2 * half)[None, :]
    dx = cols * step + wave0 - centres[:, None]
    vals = np.exp(-0.5 * (dx / sigmas[:, None]) ** 2) / (np.sqrt(2 * np.pi) * sigmas[:, None])
    if weights is not None:
        vals = vals * weights[:, None]
    keep = (cols >= 0) & (cols < n_pix)
    rows = np.broadcast_to(np.arange(len(centres))[:, None], cols.shape)
    return sparse.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(len(centres), n_pix))


def _voigt_h(a: float, v: np.ndarray) -> np.ndarray:
    from scipy.special import voigt_profile

    return np.sqrt(np.pi) * voigt_profile(v, 1.0 / np.sqrt(2.0), a)


@functools.lru_cache(maxsize=1)
def _curve_of_growth() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log10 (W / Doppler width) on a (log tau0, log a) grid: W = int (1 - exp(-tau0 H(a, v))) dv."""
    log_tau = np.arange(-4.0, 9.0001, 0.1)
    log_a = np.arange(-4.5, 1.0001, 0.25)
    v = np.concatenate([np.linspace(0.0, 8.0, 1601)[:-1], np.geomspace(8.0, 3e6, 2400)])
    table = np.empty((len(log_tau), len(log_a)))
    tau0 = 10.0 ** log_tau[:, None]
    for j, la in enumerate(log_a):
        h = _voigt_h(10.0 ** la, v)[None, :]
        absorb = -np.expm1(-tau0 * h)
        table[:, j] = np.log10(2.0 * np.trapezoid(absorb, v, axis=1))
    return log_tau, log_a, table


@functools.lru_cache(maxsize=1)
def _wing_integral() -> tuple[np.ndarray, np.ndarray]:
    """log10 h(u), h(u) = int (1 - exp(-u / (x^2 + 1))) dx: the rendered wing's equivalent width / b."""
    log_u = np.arange(-5.0, 12.0001, 0.05)
    x = np.concatenate([np.linspace(0.0, 10.0, 2001)[:-1], np.geomspace(10.0, 1e7, 3000)])
    out = np.empty(len(log_u))
    for k, lu in enumerate(log_u):
        out[k] = np.log10(2.0 * np.trapezoid(-np.expm1(-(10.0 ** lu) / (x * x + 1.0)), x))
    return log_u, out


def _interp_cog(log_tau: np.ndarray, log_a: np.ndarray) -> np.ndarray:
    """Bilinear interpolation in the curve-of-growth table (linear regime below, sqrt regime above)."""
    grid_t, grid_a, table = _curve_of_growth()
    flat = _cog_flat32()
    na = len(grid_a)
    f32 = np.float32
    ft = (np.clip(log_tau, grid_t[0], grid_t[-1]) - f32(grid_t[0])) * f32(1.0 / (grid_t[1] - grid_t[0]))
    fa = (np.clip(log_a, grid_a[0], grid_a[-1]) - f32(grid_a[0])) * f32(1.0 / (grid_a[1] - grid_a[0]))
    it = np.minimum(ft.astype(np.int32), len(grid_t) - 2)
    ia = np.minimum(fa.astype(np.int32), na - 2)
    tt, ta = ft - it, fa - ia
    idx = it * na + ia
    v00, v01, v10, v11 = (flat.take(idx + d) for d in (0, 1, na, na + 1))
    top = v00 + (v01 - v00) * ta
    out = top + (v10 + (v11 - v10) * ta - top) * tt
    out = np.where(log_tau < grid_t[0], f32(np.log10(np.sqrt(np.pi))) + log_tau, out)
    return np.where(log_tau > grid_t[-1], out + f32(0.5) * (log_tau - f32(grid_t[-1])), out)


@functools.lru_cache(maxsize=1)
def _cog_flat32() -> np.ndarray:
    return _curve_of_growth()[2].astype(np.float32).ravel()


def _interp_wing(log_u: np.ndarray) -> np.ndarray:
    grid, table = _wing_integral()
    return np.interp(log_u, grid, table)


class SynthModel:
    """Everything that does not change from spectrum to spectrum, for one rv_max (the rest-frame pad)."""

    def __init__(self, rv_max: float = DEFAULT_RV_MAX, physics: Physics = PHYSICS):
        from scipy import sparse

        self.physics = physics
        self.wave = observed_wave()
        self.step = float(self.wave[1] - self.wave[0])
        beta = abs(rv_max) / C_KMS
        self.pad = int(math.ceil(WAVE_MAX * beta / (1.0 - beta) / self.step)) + 4
        self.rest_wave = self.wave[0] + self.step * np.arange(-self.pad, N_PIXELS + self.pad)
        n_rest = len(self.rest_wave)

        table = load_lines()
        forest = forest_lines(physics)
        atomic = table[table["damping"] != "band"]
        bands = table[table["damping"] == "band"]

        # all atomic lines (table + forest) share the equivalent-width machinery
        self.line_wave = np.concatenate([atomic["wavelength"].to_numpy(float), forest["wavelength"]])
        elements = np.concatenate([atomic["element"].to_numpy(str), forest["element"]])
        self.line_ion = np.concatenate([atomic["ion"].to_numpy(int), forest["ion"]])
        self.line_chi = np.concatenate([atomic["excitation_ev"].to_numpy(float), forest["excitation_ev"]])
        self.line_loggf = np.concatenate([atomic["log_gf"].to_numpy(float), forest["log_gf"]])
        damping = np.concatenate([atomic["damping"].to_numpy(str), np.full(len(forest["wavelength"]), "weak")])
        g6 = atomic["log_gamma6"].to_numpy(float) if "log_gamma6" in atomic else np.full(len(atomic), np.nan)
        g6 = np.concatenate([g6, np.full(len(forest["wavelength"]), np.nan)])
        offset = (atomic["strength_offset"].fillna(0.0).to_numpy(float) if "strength_offset" in atomic
                  else np.zeros(len(atomic)))
        self.line_offset = np.concatenate([offset, np.zeros(len(forest["wavelength"]))])
        self.line_log_gamma6 = np.where(np.isfinite(g6), g6, physics.log_gamma6_default) + physics.gamma6_enhance
        self.line_log_eps = np.array([ELEMENTS[e][2] for e in elements])
        self.line_group = np.array([ELEMENTS[e][3] for e in elements])
        self.line_is_h = elements == "H"
        elem_names = sorted(set(elements))
        self.elem_mass = np.array([ELEMENTS[e][0] for e in elem_names])
        self.elem_chi_ion = np.array([ELEMENTS[e][1] for e in elem_names])
        self.elem_log_u = np.array([ELEMENTS[e][4] for e in elem_names])
        self.elem_is_h = np.array([e == "H" for e in elem_names])
        self.line_elem = np.array([elem_names.index(e) for e in elements])
        self.line_stage_idx = self.line_elem + len(elem_names) * (self.line_ion == 2)
        self.line_group_idx = np.array([("metal", "alpha", "C", "H").index(g) for g in self.line_group])
        self.line_is_h_idx = self.line_is_h.astype(np.int64)
        self.h_index = np.flatnonzero(self.line_is_h)
        self.line_log_wave = np.log10(self.line_wave)
        self.line_const = (physics.log_tau_scale + self.line_loggf + self.line_log_eps - 12.0
                           + 2.0 * np.log10(self.line_wave / 8000.0) + self.line_offset
                           + np.where(self.line_is_h, physics.h_offset, 0.0))
        # log10(lambda^2 / (4 pi c)) with lambda in cm, plus log10(1e8 A/cm) for dl_D in A
        self.line_a_const = 2.0 * np.log10(self.line_wave * 1e-8) - np.log10(4 * np.pi * 2.99792458e10) + 8.0
        self.line_a_const32 = self.line_a_const.astype(np.float32)
        self.line_const32 = self.line_const.astype(np.float32)
        self.line_chi32 = self.line_chi.astype(np.float32)
        self.line_log_gamma6_32 = self.line_log_gamma6.astype(np.float32)
        self.line_log_dl0 = (self.line_log_wave - np.log10(C_KMS)).astype(np.float32)
        self.rendered = (damping == "strong") | (damping == "hydrogen")
        self.line_stark = damping == "hydrogen"

        # weak lines: W x (instrument Gaussian), a fixed sparse (n_weak, n_rest) matrix
        weak = np.flatnonzero(~self.rendered)
        self.weak_index = weak
        sig = self.line_wave[weak] / (RESOLUTION * 2.0 * math.sqrt(2.0 * math.log(2.0)))
        self.weak_matrix = _gauss_rows(self.line_wave[weak], sig, float(self.rest_wave[0]), self.step,
                                       n_rest, half=8).astype(np.float32)

        # rendered (strong / hydrogen) lines: a pixel window each
        self.strong_index = np.flatnonzero(self.rendered)
        self.strong_windows = []
        for k in self.strong_index:
            half_width = 30.0 if self.line_wave[k] > 8490 and not self.line_is_h[k] else 18.0
            lo = max(int(np.searchsorted(self.rest_wave, self.line_wave[k] - half_width)), 0)
            hi = min(int(np.searchsorted(self.rest_wave, self.line_wave[k] + half_width)), n_rest)
            dl = self.rest_wave[lo:hi] - self.line_wave[k]
            sig_k = self.line_wave[k] / (RESOLUTION * 2.0 * math.sqrt(2.0 * math.log(2.0)))
            gauss = np.exp(-0.5 * (dl / sig_k) ** 2) / (np.sqrt(2 * np.pi) * sig_k)
            self.strong_windows.append((lo, hi, (dl * dl).astype(np.float32), gauss.astype(np.float32)))
        self.wing_b = physics.wing_b_pixels * self.step

        # molecular bands: fixed, instrument-convolved shapes (n_bands, n_rest), unit peak strength
        self.band_species = bands["species"].to_numpy(str)
        self.band_logs = bands["log_gf"].to_numpy(float)
        shapes = []
        fine = np.arange(self.rest_wave[0] - 20.0, self.rest_wave[-1] + 20.0, 0.05)
        for head, length in zip(bands["wavelength"].to_numpy(float), bands["length_A"].to_numpy(float),
                                strict=True):
            d = fine - head
            spacing = 0.35 + 0.012 * np.maximum(d, 0.0)  # rotational lines spread away from the head
            phase = np.cumsum(0.05 / spacing)
            texture = 0.65 + 0.35 * np.cos(2 * np.pi * phase)
            shape = np.where(d >= 0, np.exp(-np.maximum(d, 0.0) / length) * texture, 0.0)
            shape = shape * (1.0 - np.exp(-np.maximum(d, 0.0) / 0.6))  # the head's sharp onset
            sig = head / (RESOLUTION * 2.0 * math.sqrt(2.0 * math.log(2.0)))
            kx = np.arange(-6 * sig, 6 * sig + 1e-9, 0.05)
            kern = np.exp(-0.5 * (kx / sig) ** 2)
            smooth = np.convolve(shape, kern / kern.sum(), mode="same")
            shapes.append(np.interp(self.rest_wave, fine, smooth))
        self.band_matrix = sparse.csr_matrix(np.array(shapes, dtype=np.float32)) if shapes else None

        # the sky (observed frame): smooth continuum and OH lines
        x = (self.wave - 7975.0) / 875.0
        self.throughput = (1.0 + 0.13 * x).astype(np.float32)     # relative; error rises to the blue
        self.sky_continuum = (1.0 + 0.08 * x).astype(np.float32)  # relative sky continuum
        oh = oh_lines()
        sig_obs = oh["wavelength"] / (RESOLUTION * 2.0 * math.sqrt(2.0 * math.log(2.0)))
        inside = (oh["wavelength"] > WAVE_MIN - 10) & (oh["wavelength"] < WAVE_MAX + 10)
        mat = _gauss_rows(oh["wavelength"][inside], sig_obs[inside], WAVE_MIN, self.step, N_PIXELS, half=8,
                          weights=oh["intensity"][inside])
        band_of = oh["band"][inside]
        self.oh_bands = np.stack([np.asarray(mat[band_of == k].sum(axis=0)).ravel()
                                  for k in range(N_OH_BANDS)]).astype(np.float32)  # (5, P), 1/A

    # -- per-spectrum physics ----------------------------------------------------------------------
    def atmosphere(self, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Layer temperature, electron and gas pressure and H- continuum opacity (log10, relative)."""
        p = self.physics
        teff, logg, mh = labels["T_eff"], labels["log_g"], labels["M_H"]
        t_layer = p.t_layer * teff
        theta = 5040.0 / t_layer
        theta_sun = 5040.0 / (p.t_layer * 5772.0)
        log_pe = (p.log_pe_sun + p.dlogpe_dlogg * (logg - 4.44) + p.dlogpe_dmh * np.clip(mh, -2.5, 0.5)
                  + p.dlogpe_dtheta * (theta - theta_sun))
        log_pg = (p.log_pg_sun + p.dlogpg_dlogg * (logg - 4.44) + p.dlogpg_dmh * mh
                  + p.dlogpg_dtheta * (theta - theta_sun))
        # H- bound-free: kappa ~ P_e theta^(5/2) 10^(0.754 theta) per H atom
        log_kc = log_pe + 2.5 * np.log10(theta) + 0.754 * theta
        return {"t_layer": t_layer, "theta": theta, "log_pe": log_pe, "log_pg": log_pg, "log_kc": log_kc}

    def line_strengths(self, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per (spectrum, line): log tau0, log damping a, Doppler width (A) and equivalent width (A).

        Terms that depend on the element only (ionisation balance, thermal speed) are computed per
        (spectrum, element) and gathered; the rest is a few vectorised passes over (spectrum, line).
        """
        p = self.physics
        atm = self.atmosphere(labels)
        teff = labels["T_eff"]
        n = len(teff)
        ln10 = np.log(10.0)
        # temperatures: metal lines in the line-forming layer, hydrogen deeper (T_eff)
        t_metal, t_h = atm["t_layer"], teff
        t_line = np.stack([t_metal, t_h], axis=1)                    # (n, 2): [metal, hydrogen]
        theta_line = 5040.0 / t_line
        # Saha ion/neutral ratio per (spectrum, element), at the ionisation temperature
        t_ion = np.where(self.elem_is_h[None, :], teff[:, None], p.t_ion * teff[:, None])
        log_r = (self.elem_log_u[None, :] + 2.5 * np.log10(t_ion) - 5040.0 / t_ion * self.elem_chi_ion[None, :]
                 - atm["log_pe"][:, None] - 0.4772)
        log_f_neutral = -np.logaddexp(0.0, log_r * ln10) / ln10
        log_f = np.concatenate([log_f_neutral, log_r + log_f_neutral], axis=1)   # (n, 2E)
        # Doppler speed per (spectrum, element): thermal + microturbulence (larger in giants)
        xi = p.xi_giant + (p.xi_dwarf - p.xi_giant) * (labels["log_g"] - 1.0) / 4.0
        t_elem = np.where(self.elem_is_h[None, :], t_h[:, None], t_metal[:, None])
        log_v = 0.5 * np.log10(0.016629 * t_elem / self.elem_mass[None, :] + (xi * xi)[:, None])
        # abundances per (spectrum, group): metal, alpha, C, H
        mh = labels["M_H"]
        xh_group = np.stack([mh, mh + labels["a_M"], mh + labels["C_M"], np.zeros(n)], axis=1)

        # (spectrum, line) arrays in float32: gathers and a few in-place passes
        f32 = np.float32
        log_dl = log_v.astype(f32)[:, self.line_elem]
        log_dl += self.line_log_dl0[None, :]                            # log10 Doppler width (A)
        log_tau0 = xh_group.astype(f32)[:, self.line_group_idx]
        log_tau0 += log_f.astype(f32)[:, self.line_stage_idx]
        log_tau0 -= theta_line.astype(f32)[:, self.line_is_h_idx] * self.line_chi32[None, :]
        log_tau0 -= log_dl
        log_tau0 += self.line_const32[None, :]
        log_tau0 -= atm["log_kc"].astype(f32)[:, None]
        # damping: radiative + van der Waals (gas pressure) for metals, Stark (n_e^(2/3)) for hydrogen
        log_nh = atm["log_pg"] - np.log10(K_BOLTZ * t_metal)
        log_a = self.line_log_gamma6_32[None, :] + (log_nh + 0.3 * np.log10(t_metal / 1e4)).astype(f32)[:, None]
        if self.h_index.size:
            log_ne = atm["log_pe"] - np.log10(K_BOLTZ * t_h)
            log_a[:, self.h_index] = (p.stark_scale + 2.0 / 3.0 * log_ne).astype(f32)[:, None]
        log_a *= f32(ln10)
        np.logaddexp(f32(8.0 * ln10), log_a, out=log_a)
        log_a *= f32(1.0 / ln10)                                         # log10 gamma
        # a = gamma lambda^2 / (4 pi c dl_D), lambda and dl_D in cm
        log_a += self.line_a_const32[None, :]
        log_a -= log_dl
        log_w = _interp_cog(log_tau0, log_a).astype(f32)
        log_w += log_dl
        return {"log_tau0": log_tau0, "log_a": log_a, "log_dl": log_dl, "w": np.power(f32(10.0), log_w)}

    def band_strengths(self, labels: dict[str, np.ndarray]) -> np.ndarray:
        """Peak optical depth of each molecular band per spectrum (molecular equilibrium, schematic)."""
        if self.band_matrix is None:
            return np.zeros((len(labels["T_eff"]), 0))
        p = self.physics
        atm = self.atmosphere(labels)
        theta = atm["theta"][:, None]
        mh, am, cm = labels["M_H"][:, None], labels["a_M"][:, None], labels["C_M"][:, None]
        is_tio = (self.band_species == "TiO")[None, :]
        # TiO ~ P_Ti P_O 10^(theta D0) / kappa: Ti and O are alpha elements; D0(TiO) = 6.87 eV
        log_tio = (p.tio_scale + (4.95 - 12.0) + (8.69 - 12.0) + 2.0 * (mh + am) + 6.87 * theta
                   + atm["log_pg"][:, None] - atm["log_kc"][:, None])
        # CN ~ P_C P_N 10^(theta D) / kappa, stronger in giants through kappa; D = 4 eV rather than
        # D0(CN) = 7.72 eV because CO locks up ever more of the carbon as the star cools
        log_cn = (p.cn_scale + (8.43 - 12.0) + (7.83 - 12.0) + 2.0 * mh + cm + 4.0 * theta
                  + atm["log_pg"][:, None] - atm["log_kc"][:, None] - 0.5 * (labels["log_g"][:, None] - 2.5))
        log_s = np.where(is_tio, log_tio, log_cn) + self.band_logs[None, :]
        return 10.0 ** np.minimum(log_s, 0.3)

    @staticmethod
    def planck(teff: np.ndarray, wave: np.ndarray) -> np.ndarray:
        """B_lambda(T_eff) / B_8000(T_eff) on ``wave`` (float32, one row per spectrum)."""
        inv = (HC_K / wave).astype(np.float32)
        lam5 = ((wave / 8000.0) ** -5).astype(np.float32)
        x8 = HC_K / (8000.0 * teff)
        scale = np.expm1(x8).astype(np.float32)[:, None]
        inv_t = (1.0 / teff).astype(np.float32)[:, None]
        out = np.multiply(inv_t, inv[None, :])
        np.expm1(out, out=out)
        np.divide(scale, out, out=out)
        out *= lam5[None, :]
        return out

    def rest_frame_flux(self, labels: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(cont x exp(-sum of line depths), cont) on the padded rest-frame grid, float32 (n, P + 2 pad)."""
        s = self.line_strengths(labels)
        w = s["w"]
        wt = np.ascontiguousarray(w[:, self.weak_index].T, dtype=np.float32)
        depth = np.ascontiguousarray((self.weak_matrix.T @ wt).T)
        if self.band_matrix is not None:
            bs = np.ascontiguousarray(self.band_strengths(labels).T, dtype=np.float32)
            depth += (self.band_matrix.T @ bs).T
        b2 = np.float32(self.wing_b ** 2)
        log_b = np.log10(self.wing_b)
        for j, k in enumerate(self.strong_index):
            lo, hi, dl2, gauss = self.strong_windows[j]
            # damping wings: tau = C / dl^2, C = tau0 a dl_D^2 / sqrt(pi); rendered as 1 - exp(-C/(dl^2+b^2))
            log_c = s["log_tau0"][:, k] + s["log_a"][:, k] + 2.0 * s["log_dl"][:, k] - 0.2486
            c = (10.0 ** log_c).astype(np.float32)
            wing = -np.expm1(-c[:, None] / (dl2[None, :] + b2))
            w_wing = self.wing_b * 10.0 ** _interp_wing(log_c - 2.0 * log_b)
            core = np.maximum(w[:, k] - w_wing, 0.0).astype(np.float32)
            depth[:, lo:hi] += wing + core[:, None] * gauss[None, :]
        # line cores never go black (the source function does not vanish): the total depth saturates
        # at max_depth, so the flux stays above exp(-max_depth) of the continuum
        dmax = np.float32(self.physics.max_depth)
        depth *= -1.0 / dmax
        np.expm1(depth, out=depth)
        depth *= dmax
        np.exp(depth, out=depth)
        cont = self.planck(labels["T_eff"], self.rest_wave)
        depth *= cont
        return depth, cont

    def shift(self, rest_flux: np.ndarray, redshift: np.ndarray) -> np.ndarray:
        """Doppler shift: sample the rest-frame spectrum at wave / (1 + z) (Catmull-Rom cubic)."""
        n, width = rest_flux.shape
        pos = (self.wave[None, :] / (1.0 + redshift[:, None]) - self.rest_wave[0]) / self.step
        i0 = np.floor(pos)
        t = (pos - i0).astype(np.float32)
        base = i0.astype(np.int64) + (np.arange(n, dtype=np.int64) * width)[:, None]
        flat = rest_flux.ravel()
        f0, f1, f2, f3 = (np.take(flat, base + k) for k in (-1, 0, 1, 2))
        # Horner form of the Catmull-Rom spline through f0..f3 at t in [0, 1) between f1 and f2
        c3 = f3 - f0
        c3 *= 0.5
        c3 += 1.5 * (f1 - f2)
        c2 = 2.0 * f2
        c2 += f0
        c2 -= 2.5 * f1
        c2 -= 0.5 * f3
        c1 = f2 - f0
        c1 *= 0.5
        c3 *= t
        c3 += c2
        c3 *= t
        c3 += c1
        c3 *= t
        c3 += f1
        return c3

    def noise_sigma(self, cont: np.ndarray, mag: float, sky_scale: np.ndarray, oh_scale: np.ndarray
                    ) -> np.ndarray:
        """1-sigma per pixel (normalised flux units): object photons, sky, read noise.

        ``cont`` is the object's line-free continuum on the observed grid (any scale): the object term
        does not see the lines, so the error vector does not encode them.
        """
        obj0 = NOISE.obj_counts * 10.0 ** (-0.4 * (mag - DEFAULT_MAG))
        cont = cont / np.median(cont, axis=1, keepdims=True)  # the normalised continuum / 0.5
        oh_lin = np.zeros_like(cont)
        for k in range(N_OH_BANDS):
            oh_lin += oh_scale[:, k:k + 1].astype(np.float32) * self.oh_bands[k][None, :]
        oh_lin *= np.float32(-NOISE.oh_counts / NOISE.oh_var_max)
        np.expm1(oh_lin, out=oh_lin)
        oh_lin *= np.float32(-NOISE.oh_var_max)          # saturating OH variance
        var = cont
        var *= np.float32(obj0)
        var += (NOISE.sky_counts * sky_scale).astype(np.float32)[:, None] * self.sky_continuum[None, :]
        var += oh_lin
        var *= self.throughput[None, :]
        var += np.float32(NOISE.read_var)
        np.sqrt(var, out=var)
        var *= (0.5 / (obj0 * self.throughput)).astype(np.float32)[None, :]
        return var


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


@functools.lru_cache(maxsize=4)
def get_model(rv_max: float = DEFAULT_RV_MAX) -> SynthModel:
    return SynthModel(rv_max)


# -- random numbers: one generator per spectrum -----------------------------------------------------
def spectrum_seed(seed: int, index: int) -> int:
    """The stored ``random_seed`` of spectrum ``index``: a 63-bit key derived from (seed, index)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def spectrum_rng(random_seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(key=int(random_seed)))


CHUNK_ROWS = 64
N_UNIFORMS = 5 + 1 + 2 + N_OH_BANDS  # labels, rv, sky and OH scales, per-band OH scales


def _draws(seed: int, start: int, stop: int, noisy: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    seeds = np.array([spectrum_seed(seed, i) for i in range(start, stop)], dtype=np.int64)
    uni = np.empty((stop - start, N_UNIFORMS))
    eps = np.empty((stop - start, N_PIXELS), dtype=np.float32) if noisy else None
    for row, rs in enumerate(seeds):
        gen = spectrum_rng(int(rs))
        uni[row] = gen.random(N_UNIFORMS)
        if eps is not None:
            eps[row] = gen.standard_normal(N_PIXELS, dtype=np.float32)
    return seeds, uni, eps


def _check_args(seed: int, start: int, stop: int, rv_max: float) -> None:
    if int(seed) < 0:
        raise FeatcacheError(f"seed must be >= 0, got {seed}")
    if not 0 <= start <= stop:
        raise FeatcacheError(f"bad row range {start}:{stop}")
    if not 0 <= rv_max < 3000:
        raise FeatcacheError(f"--rv-max must be in [0, 3000) km/s, got {rv_max}")


def generate_block(seed: int, start: int, stop: int, mag: float = DEFAULT_MAG, rv_max: float = DEFAULT_RV_MAX,
                   noise_free: bool = False) -> dict[str, Any]:
    """Spectra [start, stop) of the benchmark with this seed.

    Returns ``{"wave": (P,), "flux": (n, P), "error": (n, P), "noisy": (n, P) or None, "params": DataFrame}``
    (float32 arrays). Spectrum i depends only on (seed, i): any split into blocks gives the same rows.
    """
    import pandas as pd

    _check_args(seed, start, stop, rv_max)
    model = get_model(float(rv_max))
    seeds, uni, eps = _draws(seed, start, stop, noisy=not noise_free)
    labels = {}
    for k, (name, (lo, hi)) in enumerate(LABEL_RANGES.items()):
        labels[name] = lo + (hi - lo) * uni[:, k]
    rv = rv_max * (2.0 * uni[:, 5] - 1.0)
    redshift = rv / C_KMS
    sky_scale = 1.0 + NOISE.sky_jitter * (2.0 * uni[:, 6] - 1.0)
    oh_scale = ((1.0 + NOISE.oh_jitter * (2.0 * uni[:, 7] - 1.0))[:, None]
                * (1.0 + 0.1 * (2.0 * uni[:, 8:8 + N_OH_BANDS] - 1.0)))
    n = stop - start
    flux = np.empty((n, N_PIXELS), np.float32)
    error = np.empty((n, N_PIXELS), np.float32)
    noisy = None if eps is None else eps  # filled in place, chunk by chunk
    snr = np.empty(n)
    for a in range(0, n, CHUNK_ROWS):  # row chunks keep the temporaries in cache; rows are independent
        b = min(a + CHUNK_ROWS, n)
        sub = {k: v[a:b] for k, v in labels.items()}
        rest, cont = model.rest_frame_flux(sub)
        obs = model.shift(rest, redshift[a:b])
        obs *= (0.5 / np.median(obs, axis=1, keepdims=True)).astype(np.float32)
        err = model.noise_sigma(cont[:, model.pad:model.pad + N_PIXELS], mag, sky_scale[a:b], oh_scale[a:b])
        flux[a:b], error[a:b] = obs, err
        snr[a:b] = np.sqrt(np.einsum("ij,ij->i", obs, obs, dtype=np.float64)
                           / np.einsum("ij,ij->i", err, err, dtype=np.float64))
        if noisy is not None:
            chunk = noisy[a:b]
            chunk *= err
            chunk += obs
    params = pd.DataFrame({**labels, "mag": np.full(n, float(mag)), "redshift": redshift, "snr": snr,
                           "random_seed": seeds})
    params.index = pd.RangeIndex(start, stop)
    return {"wave": model.wave.copy(), "flux": flux, "error": error, "noisy": noisy, "params": params}


# -- writing a file ---------------------------------------------------------------------------------
def _block_job(args: tuple[int, int, int, float, float, bool]) -> dict[str, Any]:
    return generate_block(*args[:3], mag=args[3], rv_max=args[4], noise_free=args[5])


def write_synth(path: str | os.PathLike[str], n: int, seed: int, *, mag: float = DEFAULT_MAG,
                rv_max: float = DEFAULT_RV_MAX, noise_free: bool = False, block: int = 1000, workers: int = 1,
                progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write ``n`` spectra in the pfsspec layout, streaming blocks of ``block`` rows (bounded memory).

    ``workers`` > 1 generates blocks in that many processes (each block depends only on its rows, so the
    file is bitwise the same); the writer keeps at most ``2 * workers`` blocks in flight.
    ``progress(k)`` is called with the number of rows just written.
    """
    import h5py
    import pandas as pd

    if n < 1:
        raise FeatcacheError(f"--n must be >= 1, got {n}")
    if block < 1:
        raise FeatcacheError(f"--block-size must be >= 1, got {block}")
    _check_args(seed, 0, n, rv_max)
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FeatcacheError(f"{path.parent}: no such directory")
    jobs = [(int(seed), s, min(s + block, n), float(mag), float(rv_max), bool(noise_free))
            for s in range(0, n, block)]
    tmp = path.with_name(path.name + ".partial")
    names = ["flux", "error"] + ([] if noise_free else ["noisy"])
    frames = []
    chunk_rows = max(1, min(64, n))
    try:
        with h5py.File(tmp, "w") as h5:
            wave = observed_wave()
            h5.create_dataset("spectrumdataset/wave", data=wave)
            edges = np.concatenate([[wave[0] - 0.5 * (wave[1] - wave[0])], 0.5 * (wave[1:] + wave[:-1]),
                                    [wave[-1] + 0.5 * (wave[-1] - wave[-2])]])
            h5.create_dataset("spectrumdataset/wave_edges", data=edges)
            dsets = {name: h5.create_dataset(f"dataset/arrays/{name}/value", shape=(n, N_PIXELS),
                                             dtype=np.float32, chunks=(chunk_rows, N_PIXELS))
                     for name in names}
            h5.attrs.update({"generator": "featcache.synth", "generator_version": GENERATOR_VERSION,
                             "seed": int(seed), "n": int(n), "mag": float(mag), "rv_max": float(rv_max),
                             "noise_free": int(bool(noise_free))})
            for out in _iterate_blocks(jobs, workers):
                s, e = int(out["params"].index[0]), int(out["params"].index[-1]) + 1
                for name in names:
                    dsets[name][s:e] = out[name]
                frames.append(out["params"])
                if progress is not None:
                    progress(e - s)
        params = pd.concat(frames)
        params.index = pd.RangeIndex(0, n)
        params.to_hdf(tmp, key="dataset/params", format="table", mode="a")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(path), "n": n, "seed": seed, "mag": mag, "arrays": names,
            "snr_median": float(np.median(params["snr"])), "size": path.stat().st_size}


def _iterate_blocks(jobs: list[tuple[int, int, int, float, float, bool]], workers: int):
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _block_job(job)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending = []
        it = iter(jobs)
        for job in it:
            pending.append(pool.submit(_block_job, job))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_block_job, nxt))
            yield result
