"""A small world where The Cannon is exactly right: the rest-frame flux is a known quadratic in the labels
with smooth (25 A wide) features, observed at each star's redshift; pfsspec files of it for the tests."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd

from featcache.information.cannon import design, monomials

C_KMS = 299792.458
LABELS = ["T_eff", "log_g", "M_H"]
RANGES = {"T_eff": (4000.0, 6000.0), "log_g": (1.0, 5.0), "M_H": (-1.0, 0.5)}
CENTRE = np.array([5000.0, 3.0, -0.25])
SCALE = np.array([577.0, 1.15, 0.43])


class World:
    def __init__(self, p: int = 512, seed: int = 7):
        rng = np.random.default_rng(seed)
        self.wave = np.linspace(7100.0, 8850.0, p)
        self.terms = monomials(len(LABELS), 2)
        centres = rng.uniform(7000.0, 8950.0, 60)
        amps = rng.normal(0.0, 1.0, (len(self.terms), 60)) * np.array([0.0] + [0.015] * 3 + [0.003] * 6)[:, None]
        amps[0] = -np.abs(rng.normal(0.0, 0.04, 60))  # absorption features at the mean labels
        self.centres, self.amps, self.width = centres, amps, 25.0

    def rest_flux(self, labels: np.ndarray, wave: np.ndarray) -> np.ndarray:
        """(n, W) at rest wavelengths `wave` (n, W) or (W,)."""
        v = design((labels - CENTRE) / SCALE, self.terms)                      # (n, Q)
        wave = np.broadcast_to(wave, (len(labels), np.shape(wave)[-1]))
        profiles = np.exp(-0.5 * ((wave[..., None] - self.centres) / self.width) ** 2)   # (n, W, 60)
        return 0.5 + np.einsum("nq,qk,nwk->nw", v, self.amps, profiles)

    def observed(self, labels: np.ndarray, redshift: np.ndarray) -> np.ndarray:
        return self.rest_flux(labels, self.wave[None, :] / (1.0 + redshift[:, None]))

    def draw(self, n: int, seed: int, rv_max: float = 300.0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        labels = np.stack([rng.uniform(*RANGES[k], n) for k in LABELS], axis=1)
        return labels, rng.uniform(-rv_max, rv_max, n) / C_KMS

    def write(self, path, n: int, seed: int, error: float = 0.02, noisy: bool = False, scale_jitter: float = 0.0):
        """scale_jitter: each spectrum times 1 + N(0, jitter), a flux scale that no label predicts."""
        labels, z = self.draw(n, seed)
        flux = self.observed(labels, z).astype(np.float32)
        rng = np.random.default_rng(seed + 100)
        if scale_jitter:
            flux *= (1.0 + scale_jitter * np.random.default_rng(seed + 200).standard_normal((n, 1))).astype(np.float32)
        per_pixel = 1.0 + 0.3 * np.sin(np.linspace(0.0, 40.0, len(self.wave))) ** 8  # "sky lines"
        err = (error * per_pixel[None, :] * rng.uniform(0.8, 1.2, (n, 1))).astype(np.float32)
        with h5py.File(path, "w") as h5:
            h5["spectrumdataset/wave"] = self.wave
            h5["dataset/arrays/flux/value"] = flux
            h5["dataset/arrays/error/value"] = err
            if noisy:
                h5["dataset/arrays/noisy/value"] = flux + err * rng.standard_normal(flux.shape).astype(np.float32)
        frame = pd.DataFrame({k: labels[:, i] for i, k in enumerate(LABELS)})
        frame["redshift"] = z
        frame["snr"] = 0.5 / err[:, 0]
        frame.to_hdf(path, key="dataset/params", format="table", mode="a")
        return path
