"""The synthetic spectrum model: everything that does not change from spectrum to spectrum (lines, bands,
sky), and the per-spectrum physics (atmosphere, line strengths, rest-frame flux, Doppler shift, noise)."""

from __future__ import annotations

import functools
import math

import numpy as np

from .physics import (
    C_KMS,
    DEFAULT_MAG,
    DEFAULT_RV_MAX,
    ELEMENTS,
    HC_K,
    K_BOLTZ,
    N_OH_BANDS,
    N_PIXELS,
    NOISE,
    PHYSICS,
    RESOLUTION,
    WAVE_MAX,
    WAVE_MIN,
    Physics,
    forest_lines,
    load_lines,
    observed_wave,
    oh_lines,
)
from .profiles import gauss_rows, interp_cog, interp_wing


class SynthModel:
    """Everything that does not change from spectrum to spectrum, for one rv_max (the rest-frame pad)."""

    def __init__(self, rv_max: float = DEFAULT_RV_MAX, physics: Physics = PHYSICS):
        self.physics = physics
        self.wave = observed_wave()
        self.step = float(self.wave[1] - self.wave[0])
        beta = abs(rv_max) / C_KMS
        self.pad = int(math.ceil(WAVE_MAX * beta / (1.0 - beta) / self.step)) + 4
        self.rest_wave = self.wave[0] + self.step * np.arange(-self.pad, N_PIXELS + self.pad)
        table = load_lines()
        damping = self._setup_lines(table[table["damping"] != "band"], forest_lines(physics))
        self._setup_rendering(damping)
        self._setup_bands(table[table["damping"] == "band"])
        self._setup_sky()

    def _setup_lines(self, atomic, forest: dict[str, np.ndarray]) -> np.ndarray:
        """Per-line constants of every atomic line (table + forest): they share the equivalent-width
        machinery. Returns each line's damping class."""
        physics = self.physics
        n_forest = len(forest["wavelength"])
        self.line_wave = np.concatenate([atomic["wavelength"].to_numpy(float), forest["wavelength"]])
        elements = np.concatenate([atomic["element"].to_numpy(str), forest["element"]])
        self.line_ion = np.concatenate([atomic["ion"].to_numpy(int), forest["ion"]])
        self.line_chi = np.concatenate([atomic["excitation_ev"].to_numpy(float), forest["excitation_ev"]])
        self.line_loggf = np.concatenate([atomic["log_gf"].to_numpy(float), forest["log_gf"]])
        damping = np.concatenate([atomic["damping"].to_numpy(str), np.full(n_forest, "weak")])
        g6 = atomic["log_gamma6"].to_numpy(float) if "log_gamma6" in atomic else np.full(len(atomic), np.nan)
        g6 = np.concatenate([g6, np.full(n_forest, np.nan)])
        offset = (atomic["strength_offset"].fillna(0.0).to_numpy(float) if "strength_offset" in atomic
                  else np.zeros(len(atomic)))
        self.line_offset = np.concatenate([offset, np.zeros(n_forest)])
        self.line_log_gamma6 = np.where(np.isfinite(g6), g6, physics.log_gamma6_default) + physics.gamma6_enhance
        self.line_log_eps = np.array([ELEMENTS[e][2] for e in elements])
        self.line_group = np.array([ELEMENTS[e][3] for e in elements])
        self.line_is_h = elements == "H"
        self._setup_elements(elements)
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
        return damping

    def _setup_elements(self, elements: np.ndarray) -> None:
        """Per-element constants and each line's indices into them (ionisation stage, abundance group)."""
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

    def _setup_rendering(self, damping: np.ndarray) -> None:
        """Weak lines: W x (instrument Gaussian), one fixed sparse (n_weak, n_rest) matrix; rendered
        (strong / hydrogen) lines: a pixel window each, for their damping wings."""
        n_rest = len(self.rest_wave)
        self.rendered = (damping == "strong") | (damping == "hydrogen")
        self.line_stark = damping == "hydrogen"
        weak = np.flatnonzero(~self.rendered)
        self.weak_index = weak
        sig = self.line_wave[weak] / (RESOLUTION * 2.0 * math.sqrt(2.0 * math.log(2.0)))
        self.weak_matrix = gauss_rows(self.line_wave[weak], sig, float(self.rest_wave[0]), self.step,
                                      n_rest, half=8).astype(np.float32)
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
        self.wing_b = self.physics.wing_b_pixels * self.step

    def _setup_bands(self, bands) -> None:
        """Molecular bands: fixed, instrument-convolved shapes (n_bands, n_rest), unit peak strength."""
        from scipy import sparse

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

    def _setup_sky(self) -> None:
        """The sky (observed frame): a smooth continuum, the throughput, and the OH lines per band."""
        x = (self.wave - 7975.0) / 875.0
        self.throughput = (1.0 + 0.13 * x).astype(np.float32)     # relative; error rises to the blue
        self.sky_continuum = (1.0 + 0.08 * x).astype(np.float32)  # relative sky continuum
        oh = oh_lines()
        sig_obs = oh["wavelength"] / (RESOLUTION * 2.0 * math.sqrt(2.0 * math.log(2.0)))
        inside = (oh["wavelength"] > WAVE_MIN - 10) & (oh["wavelength"] < WAVE_MAX + 10)
        mat = gauss_rows(oh["wavelength"][inside], sig_obs[inside], WAVE_MIN, self.step, N_PIXELS, half=8,
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
        log_w = interp_cog(log_tau0, log_a).astype(f32)
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
            w_wing = self.wing_b * 10.0 ** interp_wing(log_c - 2.0 * log_b)
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


@functools.lru_cache(maxsize=4)
def get_model(rv_max: float = DEFAULT_RV_MAX) -> SynthModel:
    return SynthModel(rv_max)
