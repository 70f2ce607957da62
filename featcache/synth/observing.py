"""Observed-like effects of the synthetic benchmark, off by default: telluric absorption, sky-subtraction
residuals at the OH lines, and a smooth flux-calibration error (`featcache synth --airmass / --sky-residual /
--fluxcal-error`). They make train-on-clean, test-on-observed experiments possible without private data.

With any of them on, a file's ``flux`` is the noise-free *observation* (star x telluric transmission x
calibration error, median-normalised, plus the sky residual), ``noisy = flux + N(0, 1) x error`` as always,
and the params table records each spectrum's draws (``airmass``, ``fluxcal_1..3``, ``sky_residual_1..5``).
The draws come from each spectrum's own Philox key at a counter block far from the one the labels and noise
use, so switching an effect on changes neither the labels nor the noise of any spectrum.

The telluric model is schematic, a documented rule like the OH lines (data/README.md): the O2 A band's P and R
branches from its rotational constants (each line with a companion sub-branch 2 cm^-1 away, rotational
temperature 250 K), and water lines drawn pseudo-randomly (fixed seed) in the 7160-7340 A and 8120-8350 A
bands; Lorentzian lines on a 0.02 A grid, transmission exp(-s tau) at column s (airmass for O2, airmass x
pwv / 2 mm for water), seen through the instrument's line spread. Depths are set to typical values at R ~ 5000:
at airmass 1 the A band's deepest pixel transmits 0.30, and at 2 mm of water the 7200 A and 8200 A bands' deepest
pixels transmit 0.75 and 0.85. Positions of the water lines are not real.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ..common.errors import FeatcacheError
from .physics import DEFAULT_MAG, N_OH_BANDS, NOISE, RESOLUTION, air_from_vacuum, observed_wave
from .profiles import line_spread

PWV_REFERENCE = 2.0  # mm: the water column of the tabulated depths
FINE_STEP = 0.02     # A
O2_TARGET, WATER_TARGETS = 0.30, (0.75, 0.85)
WATER_BANDS = ((7160.0, 7340.0, 260, 20241101), (8120.0, 8350.0, 300, 20241102))  # lo, hi, lines, seed
MAX_COLUMN = 40.0


@dataclass(frozen=True)
class ObservingEffects:
    """Which observed-like effects a synth file gets, with their amplitudes (all off by default)."""

    airmass: tuple[float, float] | None = None  # telluric absorption, airmass uniform in [lo, hi]
    pwv: float = PWV_REFERENCE                  # precipitable water vapour (mm) at zenith
    sky_residual: float = 0.0                   # rms fraction of each OH band's line flux left after subtraction
    fluxcal_error: float = 0.0                  # rms of each Legendre coefficient (orders 1-3) of the calibration

    def __post_init__(self) -> None:
        if self.airmass is not None:
            lo, hi = self.airmass
            if not (math.isfinite(lo) and math.isfinite(hi) and 1.0 <= lo <= hi <= 3.0):
                raise FeatcacheError(f"--airmass must be A or A1:A2 with 1 <= A1 <= A2 <= 3, got {lo}:{hi}")
        if not (math.isfinite(self.pwv) and 0.0 <= self.pwv <= 20.0):
            raise FeatcacheError(f"--pwv must be in [0, 20] mm, got {self.pwv}")
        if not (math.isfinite(self.sky_residual) and 0.0 <= self.sky_residual <= 1.0):
            raise FeatcacheError(f"--sky-residual must be a fraction in [0, 1], got {self.sky_residual}")
        if not (math.isfinite(self.fluxcal_error) and 0.0 <= self.fluxcal_error <= 0.3):
            raise FeatcacheError(f"--fluxcal-error must be in [0, 0.3], got {self.fluxcal_error}")

    @property
    def active(self) -> bool:
        return self.airmass is not None or self.sky_residual > 0 or self.fluxcal_error > 0

    def attrs(self) -> dict[str, float | str]:
        """The settings as the file's attributes (empty when every effect is off)."""
        if not self.active:
            return {}
        out: dict[str, float | str] = {"sky_residual": float(self.sky_residual),
                                       "fluxcal_error": float(self.fluxcal_error)}
        if self.airmass is not None:
            out.update({"airmass_min": float(self.airmass[0]), "airmass_max": float(self.airmass[1]),
                        "pwv": float(self.pwv)})
        return out


def parse_airmass(value: str | None) -> tuple[float, float] | None:
    """``--airmass A`` or ``A1:A2`` as (lo, hi); None stays None (no telluric absorption)."""
    if value is None:
        return None
    parts = str(value).split(":")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2):
        raise FeatcacheError(f"--airmass must be A or A1:A2 (numbers in [1, 3]), got {value!r}")
    return (numbers[0], numbers[-1])


N_EFFECT_DRAWS = 1 + 3 + N_OH_BANDS  # airmass, calibration coefficients, sky residual per OH band


def effect_draws(random_seeds: np.ndarray) -> np.ndarray:
    """(n, N_EFFECT_DRAWS) standard normals (the first a uniform) from each spectrum's own key, counter block 1."""
    out = np.empty((len(random_seeds), N_EFFECT_DRAWS))
    for row, key in enumerate(random_seeds):
        gen = np.random.Generator(np.random.Philox(key=int(key), counter=[0, 0, 0, 1]))
        out[row, 0] = gen.random()
        out[row, 1:] = gen.standard_normal(N_EFFECT_DRAWS - 1)
    return out


def _lorentz_optical_depth(centres: np.ndarray, strengths: np.ndarray, fine: np.ndarray, hwhm: float) -> np.ndarray:
    tau = np.zeros_like(fine)
    reach = 60.0 * hwhm
    for c, s in zip(centres, strengths, strict=True):
        lo, hi = np.searchsorted(fine, [c - reach, c + reach])
        d = fine[lo:hi] - c
        tau[lo:hi] += s * hwhm / math.pi / (d * d + hwhm * hwhm)
    return tau


def _o2_a_band() -> tuple[np.ndarray, np.ndarray]:
    """Air wavelengths and relative strengths of the O2 A band (b-X 0-0) lines, odd N'' only."""
    nu0, b_up, b_low, t_rot = 13120.909, 1.391249, 1.437682, 250.0
    nu, strength = [], []
    for n in range(1, 42, 2):
        pop = (2 * n + 1) * math.exp(-b_low * n * (n + 1) * 1.4388 / t_rot)
        r = nu0 + b_up * (n + 1) * (n + 2) - b_low * n * (n + 1)
        p = nu0 + b_up * (n - 1) * n - b_low * n * (n + 1)
        nu += [r, r - 2.0, p, p + 2.0]
        strength += [pop * (n + 1) / (2 * n + 1)] * 2 + [pop * n / (2 * n + 1)] * 2
    return air_from_vacuum(1e8 / np.array(nu)), np.array(strength)


def _water_lines(lo: float, hi: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(seed))
    centre, width = 0.5 * (lo + hi), 0.3 * (hi - lo)
    wave = rng.uniform(lo, hi, n)
    strength = np.exp(rng.normal(0.0, 1.2, n)) * np.exp(-0.5 * ((wave - centre) / width) ** 2)
    return wave, strength


def _seen(spread, inside: np.ndarray, transmission: np.ndarray) -> np.ndarray:
    """Fine-grid transmission (columns of ``transmission``) seen through the line spread: (P, k)."""
    out = spread @ transmission
    out[np.setdiff1d(np.arange(out.shape[0]), inside)] = 1.0
    return out


def _scaled(spread, inside: np.ndarray, tau: np.ndarray, target: float) -> np.ndarray:
    """tau scaled so that the deepest seen pixel at unit column transmits ``target`` (bisection in log)."""
    lo, hi = -8.0, 8.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if _seen(spread, inside, np.exp(-tau * 10.0 ** mid)[:, None]).min() > target:
            lo = mid
        else:
            hi = mid
    return tau * 10.0 ** (0.5 * (lo + hi))


@functools.lru_cache(maxsize=1)
def telluric_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(columns, -ln T of O2 at the pixels, -ln T of water at the pixels): (S,), (S, P), (S, P) float32.

    The seen transmission is tabulated against the column s (0 to MAX_COLUMN) and interpolated linearly in
    s per spectrum: exp(-s tau) does not commute with the line spread, so it cannot be scaled afterwards.
    """
    wave = observed_wave()
    columns = np.concatenate([np.arange(0.0, 4.0, 0.05), np.arange(4.0, MAX_COLUMN + 1e-9, 0.5)])
    tables = []
    pieces = [(_o2_a_band(), (7580.0, 7720.0), O2_TARGET)]
    pieces += [(_water_lines(lo, hi, n, seed), (lo - 10.0, hi + 10.0), target)
               for (lo, hi, n, seed), target in zip(WATER_BANDS, WATER_TARGETS, strict=True)]
    for k, ((centres, strengths), (lo, hi), target) in enumerate(pieces):
        fine = np.arange(lo, hi, FINE_STEP)
        spread, inside = line_spread(fine, wave, RESOLUTION)
        tau = _scaled(spread, inside, _lorentz_optical_depth(centres, strengths, fine, 0.04), target)
        table = -np.log(_seen(spread, inside, np.exp(-np.outer(tau, columns)))).T
        if k <= 1:
            tables.append(table)
        else:
            tables[1] = tables[1] + table
    return columns, tables[0].astype(np.float32), tables[1].astype(np.float32)


def _interp_rows(columns: np.ndarray, table: np.ndarray, s: np.ndarray) -> np.ndarray:
    i = np.clip(np.searchsorted(columns, s, side="right") - 1, 0, len(columns) - 2)
    t = ((s - columns[i]) / (columns[i + 1] - columns[i])).astype(np.float32)[:, None]
    return table[i] * (1 - t) + table[i + 1] * t


def telluric_transmission(airmass: np.ndarray, pwv: float) -> np.ndarray:
    """(n, P) transmission at the observed pixels for these airmasses and water column."""
    columns, o2, water = telluric_tables()
    s_water = np.minimum(airmass * pwv / PWV_REFERENCE, MAX_COLUMN)
    return np.exp(-(_interp_rows(columns, o2, airmass) + _interp_rows(columns, water, s_water)))


def calibration_factor(coefficients: np.ndarray) -> np.ndarray:
    """1 + sum_k c_k P_k(x) over the window (x in [-1, 1]), k = 1..3, floored at 0.1: (n, P)."""
    from numpy.polynomial import legendre

    wave = observed_wave()
    x = 2.0 * (wave - wave[0]) / (wave[-1] - wave[0]) - 1.0
    basis = np.stack([legendre.legval(x, np.eye(4)[k]) for k in (1, 2, 3)])  # (3, P)
    out = np.ones((len(coefficients), len(wave)))
    for k in range(3):  # row-wise, a fixed order of summation
        out += coefficients[:, k:k + 1] * basis[k][None, :]
    return np.maximum(out, 0.1).astype(np.float32)


def apply_effects(model, effects: ObservingEffects, flux: np.ndarray, cont: np.ndarray, draws: np.ndarray,
                  mag: float, oh_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The observation of one row chunk: (flux, continuum seen by the noise model, params columns)."""
    columns: dict[str, np.ndarray] = {}
    factor = np.ones_like(flux)
    if effects.airmass is not None:
        lo, hi = effects.airmass
        airmass = lo + (hi - lo) * draws[:, 0]
        transmission = telluric_transmission(airmass, effects.pwv).astype(np.float32)
        factor *= transmission
        cont = cont * transmission
        columns["airmass"] = airmass
    if effects.fluxcal_error > 0:
        coefficients = effects.fluxcal_error * draws[:, 1:4]
        factor *= calibration_factor(coefficients)
        columns.update({f"fluxcal_{k}": coefficients[:, k - 1] for k in (1, 2, 3)})
    flux = flux * factor
    flux *= (0.5 / np.median(flux, axis=1, keepdims=True)).astype(np.float32)
    if effects.sky_residual > 0:
        obj0 = NOISE.obj_counts * 10.0 ** (-0.4 * (mag - DEFAULT_MAG))
        weights = effects.sky_residual * draws[:, 4:4 + N_OH_BANDS] * oh_scale
        scale = np.float32(0.5 * NOISE.oh_counts / obj0)
        for k in range(N_OH_BANDS):  # row-wise, a fixed order of summation
            flux += (weights[:, k:k + 1] * scale).astype(np.float32) * model.oh_bands[k][None, :]
        columns.update({f"sky_residual_{k + 1}": weights[:, k] for k in range(N_OH_BANDS)})
    return flux, cont, columns
