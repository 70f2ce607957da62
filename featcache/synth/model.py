"""The synthetic spectrum model: everything that does not change from spectrum to spectrum (the reference
grid's emulator, the line spread, the sky), and the per-spectrum steps (rest-frame flux, Doppler shift,
noise)."""

from __future__ import annotations

import functools
import math

import numpy as np

from .emulator import GridEmulator, ReferenceGrid, load_grid
from .physics import (
    C_KMS,
    DEFAULT_MAG,
    DEFAULT_RV_MAX,
    HC_K,
    N_OH_BANDS,
    N_PIXELS,
    NOISE,
    PHYSICS,
    WAVE_MAX,
    WAVE_MIN,
    Physics,
    load_lines,
    observed_wave,
    oh_lines,
)
from .profiles import gauss_rows, line_spread


class SynthModel:
    """Everything that does not change from spectrum to spectrum, for one rv_max (the rest-frame pad)."""

    def __init__(self, rv_max: float = DEFAULT_RV_MAX, physics: Physics = PHYSICS, grid: ReferenceGrid | None = None):
        """``grid`` replaces the embedded reference grid (the physics report fits on a subset of its nodes)."""
        self.physics = physics
        self.wave = observed_wave()
        self.step = float(self.wave[1] - self.wave[0])
        beta = abs(rv_max) / C_KMS
        self.pad = int(math.ceil(WAVE_MAX * beta / (1.0 - beta) / self.step)) + 4
        self.rest_wave = self.wave[0] + self.step * np.arange(-self.pad, N_PIXELS + self.pad)
        self.emulator = GridEmulator(grid if grid is not None else load_grid(), load_lines())
        self._setup_line_spread()
        self._setup_sky()

    def _setup_line_spread(self) -> None:
        """The instrument's line spread from the grid's 1 A monochromatic samples to the rest-frame pixels."""
        samples = self.emulator.grid.wave
        spread, covered = line_spread(samples, self.rest_wave, self.physics.resolution, self.physics.lsf_sigmas)
        if len(covered) < len(self.rest_wave):
            raise ValueError(f"the reference grid ({samples[0]:.0f}-{samples[-1]:.0f} A) does not cover the "
                             f"rest frame {self.rest_wave[0]:.0f}-{self.rest_wave[-1]:.0f} A")
        self.line_spread = spread.astype(np.float32)

    def _setup_sky(self) -> None:
        """The sky (observed frame): a smooth continuum, the throughput, and the OH lines per band."""
        x = (self.wave - 7975.0) / 875.0
        self.throughput = (1.0 + 0.13 * x).astype(np.float32)     # relative; error rises to the blue
        self.sky_continuum = (1.0 + 0.08 * x).astype(np.float32)  # relative sky continuum
        oh = oh_lines()
        sig_obs = oh["wavelength"] / (self.physics.resolution * 2.0 * math.sqrt(2.0 * math.log(2.0)))
        inside = (oh["wavelength"] > WAVE_MIN - 10) & (oh["wavelength"] < WAVE_MAX + 10)
        mat = gauss_rows(oh["wavelength"][inside], sig_obs[inside], WAVE_MIN, self.step, N_PIXELS, half=8,
                         weights=oh["intensity"][inside])
        band_of = oh["band"][inside]
        self.oh_bands = np.stack([np.asarray(mat[band_of == k].sum(axis=0)).ravel()
                                  for k in range(N_OH_BANDS)]).astype(np.float32)  # (5, P), 1/A

    # -- per-spectrum physics ----------------------------------------------------------------------
    def rest_frame_flux(self, labels: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(flux, continuum) on the padded rest-frame grid at the instrument's resolution, float32 (n, P + 2
        pad); the continuum's scale is arbitrary (the flux is median-normalised later)."""
        p = self.physics
        mh = np.clip(labels["M_H"], p.mh_min, p.mh_max)
        a_m = np.clip(mh + labels["a_M"], p.mh_min, p.mh_max) - mh
        c_m = np.clip(mh + labels["C_M"], p.mh_min, p.mh_max) - mh
        normalised, log_cont = self.emulator.evaluate(labels["T_eff"], labels["log_g"], mh, a_m, c_m)
        np.exp(log_cont, out=log_cont)
        normalised *= log_cont  # absolute flux at the monochromatic samples
        flux = np.ascontiguousarray((self.line_spread @ normalised.T).T)
        cont = np.ascontiguousarray((self.line_spread @ log_cont.T).T)
        return flux, cont

    @staticmethod
    def planck(teff: np.ndarray, wave: np.ndarray) -> np.ndarray:
        """B_lambda(T_eff) / B_8000(T_eff) on ``wave`` (float32, one row per spectrum): the object-photon shape of
        the noise model. A continuum that depends on T_eff alone keeps log g and [M/H] out of ``error`` (the
        model atmospheres' own continua differ slightly with gravity, and the error would carry that)."""
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


@functools.lru_cache(maxsize=4)
def get_model(rv_max: float = DEFAULT_RV_MAX) -> SynthModel:
    return SynthModel(rv_max)
