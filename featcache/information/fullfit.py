"""The field's full-spectrum baseline: every star's labels and radial velocity fitted to its whole noisy
spectrum with the data-driven model (cannon.py), by weighted non-linear least squares.

chi2(labels, z, a) = sum_p w_p (f_p - a model_p(labels, z))^2 with w_p = 1 / (sigma_p^2 + s_p^2) (noise plus
the model's own scatter) over the pixels the encoder sees. a is the star's flux scale, a free nuisance parameter
(FitSettings.scale): a spectrum's normalisation is not a function of its labels (featcache synth divides each
observed spectrum by its own median, which moves by ~0.1% with the radial velocity; an observed star's flux
calibration more), and without it that jitter, not the noise, set the fit's floor at high S/N.

The true labels and redshift of the fitted stars are never used: the starts come from a grid of model
templates (labels on a coarse grid across the train range x redshifts every `rv_step` km/s across the train
redshifts), scored for all stars at once as matrix products; the `starts` best distinct label points (each at
its best redshift) then start a Levenberg-Marquardt search, bounded to the train labels' range (a polynomial
extrapolates badly) and the train redshifts; the lowest chi2 wins. Everything is vectorised over stars (blocks
of `block` stars), never a loop per star.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ..common.errors import FeatcacheError
from .cannon import CannonModel, PiecewiseCannon
from .shift import observed_positions

C_KMS = 299792.458


@dataclass(frozen=True)
class FitSettings:
    """How the full-spectrum fit searches (defaults measured on the synthetic benchmark; docs/information-bound.md)."""

    grid: int = 3            # template grid points per label for the first three labels (the rest at the centre)
    rv_step: float = 15.0    # km/s between template redshifts (the instrument's FWHM is about 60 km/s)
    starts: int = 3          # distinct template label points that start the local search
    max_iter: int = 40       # Levenberg-Marquardt iterations per redshift update
    outer: int = 2           # rounds of (labels in the rest frame, then the redshift in the observed frame)
    tol: float = 1e-6        # a start stops when its accepted step moves no scaled parameter by more
    block: int = 256         # stars per vectorised block (x starts: rows of about 8 MB each)
    local_rounds: int = 2    # piecewise models: refits with the local model of the cell of the current labels
    scale: bool = True       # fit a flux scale per star (a nuisance parameter) rather than take the model's

    def validate(self) -> FitSettings:
        for name, low in (("grid", 1), ("starts", 1), ("max_iter", 1), ("outer", 1), ("block", 1),
                          ("local_rounds", 0)):
            if int(getattr(self, name)) < low:
                raise FeatcacheError(f"full-spectrum fit: {name} must be at least {low}, got {getattr(self, name)}")
        if not self.rv_step > 0:
            raise FeatcacheError(f"full-spectrum fit: rv_step must be positive, got {self.rv_step}")
        return self

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class FitResult:
    """Per star: fitted labels (n, L) in the model's label order, redshift (n,), chi2, pixels used,
    iterations and the fitted flux scale (n,) (1 where FitSettings.scale is off)."""

    labels: np.ndarray
    redshift: np.ndarray
    chi2: np.ndarray
    n_pixels: np.ndarray
    iterations: np.ndarray
    label_names: list[str]
    scale: np.ndarray

    def label(self, name: str) -> np.ndarray:
        return self.labels[:, self.label_names.index(name)]


def usable_pixels(model: CannonModel, pixels: np.ndarray) -> np.ndarray:
    """The observed pixels every redshift of the search can model: inside the rest grid at both ends of the
    redshift range and with finite coefficients. Returns positions into `pixels`."""
    zlo, zhi = model.redshift_range
    ok = np.isfinite(model.theta).all(axis=0) & np.isfinite(model.scatter)
    pos, _ = observed_positions(model.wave, pixels, np.array([zlo, zhi]))
    n = len(model.wave)
    inside = ((pos >= 1.0) & (pos < n - 2.0)).all(axis=0)
    # the spline reads i-1 .. i+2: their coefficients must be finite too
    idx = np.floor(np.where(np.isfinite(pos), pos, 1.0)).astype(np.int64)
    neighbours = np.stack([ok[np.clip(idx + k, 0, n - 1)] for k in (-1, 0, 1, 2)]).all(axis=(0, 1))
    return np.flatnonzero(inside & neighbours)


def _template_grid(model: CannonModel, settings: FitSettings) -> np.ndarray:
    """(G, L) label points: `grid` values across the train range for the first three labels, the centre
    (mid-range) for the others."""
    n_labels = len(model.labels)
    axes = []
    for i in range(n_labels):
        if i < 3 and settings.grid > 1:
            frac = (np.arange(settings.grid) + 0.5) / settings.grid
            axes.append(model.low[i] + frac * (model.high[i] - model.low[i]))
        else:
            axes.append(np.array([0.5 * (model.low[i] + model.high[i])]))
    return np.array(list(itertools.product(*axes)), dtype=np.float64)


def _redshift_grid(model: CannonModel, settings: FitSettings) -> np.ndarray:
    zlo, zhi = model.redshift_range
    if zhi <= zlo:
        return np.array([zlo])
    step = settings.rv_step / C_KMS
    count = int(np.ceil((zhi - zlo) / step)) + 1
    return np.linspace(zlo, zhi, count)


def fit_spectra(model: CannonModel, flux: np.ndarray, sigma: np.ndarray, pixels: np.ndarray,
                settings: FitSettings | None = None, progress: Callable[[int], None] | None = None,
                start: tuple[np.ndarray, np.ndarray] | None = None) -> FitResult:
    """Fit labels and redshift of every star: flux and sigma (n, M) on the observed pixels `pixels` (indices
    into model.wave, the encoder's mask). sigma is the noise (error x noise level); the model's scatter is
    added to it in the weights. start=(labels (n, L), redshift (n,)) replaces the template search with one
    start per star (a refinement of an earlier fit)."""
    settings = (settings or FitSettings()).validate()
    flux = np.asarray(flux, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    pixels = np.asarray(pixels, dtype=np.int64)
    if flux.shape != sigma.shape or flux.ndim != 2 or flux.shape[1] != len(pixels):
        raise FeatcacheError(f"full-spectrum fit: flux {flux.shape} and sigma {sigma.shape} must be (n, "
                             f"{len(pixels)}) on the model's pixels")
    use = usable_pixels(model, pixels)
    if len(use) < len(model.labels) + 2:
        raise FeatcacheError(f"full-spectrum fit: only {len(use)} pixels can be modelled; the model's wavelength "
                             "grid and the spectra's pixels do not overlap")
    pix = pixels[use]
    scatter2 = model.scatter[pix] ** 2
    if start is None:
        templates_labels, zs = _template_grid(model, settings), _redshift_grid(model, settings)
        templates = _templates(model, templates_labels, zs, pix)
    theta = np.nan_to_num(model.theta)  # pixels without coefficients carry no weight (see _rest_system)
    iu = np.triu_indices(theta.shape[0])
    pairs = theta.T[:, iu[0]] * theta.T[:, iu[1]]                                # (P, Q(Q+1)/2)
    n = len(flux)
    n_labels = len(model.labels)
    out_labels = np.empty((n, n_labels))
    out_z, out_chi2, out_iter, out_scale = np.empty(n), np.empty(n), np.empty(n, dtype=np.int64), np.empty(n)
    for a in range(0, n, settings.block):
        b = min(a + settings.block, n)
        f, s = flux[a:b, use], sigma[a:b, use]
        w = 1.0 / (s * s + scatter2[None, :])
        w = np.where(np.isfinite(f) & np.isfinite(w), w, 0.0)
        f = np.where(w > 0, f, 0.0)
        if start is None:
            starts_l, starts_z = _starts(f, w, templates, templates_labels, zs, settings.starts, settings.scale)
        else:
            starts_l, starts_z = np.asarray(start[0])[a:b, None, :], np.asarray(start[1])[a:b, None]
        labels, z, chi2, iters, amp = _fit_block(model, pairs, theta, pix, f, s, w, starts_l, starts_z, settings)
        out_labels[a:b], out_z[a:b], out_chi2[a:b], out_iter[a:b], out_scale[a:b] = labels, z, chi2, iters, amp
        if progress is not None:
            progress(b - a)
    return FitResult(out_labels, out_z, out_chi2, np.full(n, len(use)), out_iter, list(model.labels), out_scale)


def fit_with(model: CannonModel | PiecewiseCannon, flux: np.ndarray, sigma: np.ndarray, pixels: np.ndarray,
             settings: FitSettings | None = None, progress: Callable[[int], None] | None = None) -> FitResult:
    """fit_spectra with a CannonModel, or with a PiecewiseCannon: the global model's fit, then `local_rounds`
    refits of every star with the local model of the cell its current labels fall in, started there."""
    settings = (settings or FitSettings()).validate()
    if not isinstance(model, PiecewiseCannon):
        return fit_spectra(model, flux, sigma, pixels, settings, progress)
    result = fit_spectra(model.base, flux, sigma, pixels, settings)
    for _ in range(settings.local_rounds):
        labels, z = result.labels.copy(), result.redshift.copy()
        chi2, iters, npix = result.chi2.copy(), result.iterations.copy(), result.n_pixels.copy()
        amp = result.scale.copy()
        for part, rows in model.groups(result.labels):
            start = (np.clip(result.labels[rows], part.low, part.high), result.redshift[rows])
            local = fit_spectra(part, flux[rows], sigma[rows], pixels, settings, start=start)
            labels[rows], z[rows], chi2[rows] = local.labels, local.redshift, local.chi2
            iters[rows] += local.iterations
            npix[rows] = local.n_pixels
            amp[rows] = local.scale
        result = FitResult(labels, z, chi2, npix, iters, result.label_names, amp)
    if progress is not None:
        progress(len(flux))
    return result


def _templates(model: CannonModel, labels: np.ndarray, zs: np.ndarray, pix: np.ndarray) -> np.ndarray:
    """(G x Z, U) float32: each label point's rest-frame model shifted to each redshift, on the pixels."""
    from .shift import catmull_rom

    rest = model.rest_flux(labels)
    pos, _ = observed_positions(model.wave, pix, zs)
    shifted = np.stack([catmull_rom(rest, np.broadcast_to(pos[k], (len(rest), len(pix))))[0]
                        for k in range(len(zs))], axis=1)                      # (G, Z, U)
    return shifted.reshape(-1, len(pix)).astype(np.float32)


def _starts(f: np.ndarray, w: np.ndarray, templates: np.ndarray, grid_labels: np.ndarray, zs: np.ndarray,
            count: int, scale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The `count` best distinct template label points per star, each at its best redshift: (b, S, L), (b, S).
    With `scale`, each template at its best flux scale (chi2 profiled over it: fWf - (fWt)^2 / tWt)."""
    wf = (w * f).astype(np.float32)
    cross = wf @ templates.T                                                        # (b, G x Z)
    power = w.astype(np.float32) @ (templates * templates).T
    fwf = (w * f * f).sum(axis=1, keepdims=True)
    if scale:
        chi2 = fwf - np.where(power > 0, np.maximum(cross, 0.0) ** 2 / np.where(power > 0, power, 1.0), 0.0)
    else:
        chi2 = fwf - 2.0 * cross + power
    n_grid, n_z = len(grid_labels), len(zs)
    chi2 = chi2.reshape(len(f), n_grid, n_z)
    best_z = np.argmin(chi2, axis=2)                                                # (b, G)
    best = np.take_along_axis(chi2, best_z[..., None], axis=2)[..., 0]              # (b, G)
    count = min(count, n_grid)
    order = np.argsort(best, axis=1)[:, :count]                                     # (b, S)
    return grid_labels[order], zs[np.take_along_axis(best_z, order, axis=1)]


def _rest_system(model: CannonModel, pairs: np.ndarray, theta: np.ndarray, pix: np.ndarray, f: np.ndarray,
                 s: np.ndarray, z: np.ndarray, scatter2: np.ndarray) -> dict[str, np.ndarray]:
    """The stars' spectra moved to the rest frame at z, and the label problem there: A = Theta W Theta^T
    (one product with the precomputed coefficient pairs), b = Theta W f, f^T W f. A rest pixel counts only
    when every observed pixel its spline reads is one the encoder sees."""
    from .shift import catmull_rom, positions

    n_pix = len(model.wave)
    full_f = np.zeros((len(f), n_pix))
    full_s = np.ones((len(f), n_pix))
    seen = np.zeros((len(f), n_pix))
    full_f[:, pix], full_s[:, pix], seen[:, pix] = f, s, (s > 0) & np.isfinite(f)
    targets = model.wave[None, :] * (1.0 + z)[:, None]
    pos = positions(model.wave, targets)
    rest_f, _, inside = catmull_rom(full_f, pos)
    rest_s, _, _ = catmull_rom(full_s, pos)
    i0 = np.floor(np.where(inside, pos, 1.0)).astype(np.int64)
    rows = np.arange(len(f))[:, None]
    covered = inside & np.all([seen[rows, i0 + k] > 0 for k in (-1, 0, 1, 2)], axis=0)
    w = np.where(covered, 1.0 / (np.maximum(rest_s, 1e-12) ** 2 + scatter2[None, :]), 0.0)
    upper = (w @ pairs)                                                             # (b, Q(Q+1)/2)
    q = theta.shape[0]
    iu = np.triu_indices(q)
    a = np.zeros((len(f), q, q))
    a[:, iu[0], iu[1]] = upper
    a[:, iu[1], iu[0]] = upper
    wf = w * rest_f
    return {"A": a, "b": wf @ theta.T, "fwf": (wf * rest_f).sum(axis=1)}


def _label_lm(x: np.ndarray, amp: np.ndarray | None, system: dict[str, np.ndarray], terms: list[tuple[int, ...]],
              lo: np.ndarray, hi: np.ndarray, settings: FitSettings
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bounded Levenberg-Marquardt on rows of scaled labels x and flux scales a: chi2 = f W f - 2 u.b + u A u
    with u = a v and v the polynomial's terms, so the Gauss-Newton system is O((L + 1) Q^2) per row. amp None:
    the scale starts at its best value for the start labels (v.b / v A v); settings.scale off: it stays 1."""
    from .cannon import design, design_gradient

    free = settings.scale

    def evaluate(xs: np.ndarray, amps: np.ndarray, rows: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        v = design(xs, terms)
        u = amps[:, None] * v
        au = (system["A"][rows] @ u[..., None])[..., 0]
        chi2 = system["fwf"][rows] - 2.0 * (u * system["b"][rows]).sum(axis=1) + (u * au).sum(axis=1)
        jac = amps[:, None, None] * design_gradient(xs, terms)                    # (r, L, Q): du / dx
        if free:
            jac = np.concatenate([jac, v[:, None, :]], axis=1)                      # du / da
        hess = jac @ system["A"][rows] @ np.swapaxes(jac, 1, 2)
        grad = (jac @ (system["b"][rows] - au)[..., None])[..., 0]
        return chi2, hess, grad

    n_rows, n_labels = x.shape
    all_rows = np.arange(n_rows)
    if not free:
        amp = np.ones(n_rows)
    elif amp is None:
        v = design(x, terms)
        vav = (v * (system["A"] @ v[..., None])[..., 0]).sum(axis=1)
        vb = (v * system["b"]).sum(axis=1)
        amp = np.where((vav > 0) & (vb > 0), vb / np.where(vav > 0, vav, 1.0), 1.0)
    amp = np.asarray(amp, dtype=np.float64).copy()
    chi2, hess, grad = evaluate(x, amp, all_rows)
    lam = np.full(n_rows, 1e-3)
    used = np.zeros(n_rows, dtype=np.int64)
    active = np.ones(n_rows, dtype=bool)
    k = n_labels + int(free)
    eye = np.eye(k)
    for _ in range(settings.max_iter):
        act = np.flatnonzero(active)
        if not len(act):
            break
        diag = np.einsum("rkk->rk", hess[act])
        damped = hess[act] + lam[act, None, None] * (diag[:, :, None] * eye[None] + 1e-12 * eye[None])
        step = np.linalg.solve(damped, grad[act][..., None])[..., 0]
        trial = np.clip(x[act] + step[:, :n_labels], lo, hi)
        moved = np.abs(trial - x[act]).max(axis=1)
        t_amp = amp[act]
        if free:  # a scale stays positive; its step counts relative to itself
            t_amp = np.maximum(amp[act] + step[:, -1], 0.1 * amp[act])
            moved = np.maximum(moved, np.abs(t_amp - amp[act]) / amp[act])
        t_chi2, t_hess, t_grad = evaluate(trial, t_amp, act)
        better = t_chi2 < chi2[act]
        good = act[better]
        x[good], amp[good], chi2[good] = trial[better], t_amp[better], t_chi2[better]
        hess[good], grad[good] = t_hess[better], t_grad[better]
        lam[good] = np.maximum(lam[good] / 3.0, 1e-9)
        lam[act[~better]] *= 4.0
        used[act] += 1
        done = (better & (moved < settings.tol)) | (lam[act] > 1e8)
        active[act[done]] = False
    return x, amp, chi2, used


def _redshift_newton(model: CannonModel, labels: np.ndarray, z: np.ndarray, pix: np.ndarray, f: np.ndarray,
                     w: np.ndarray, amp: np.ndarray, steps: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The redshift at fixed labels and flux scales, by damped Newton steps on the observed-frame chi2
    (bounded to the model's redshift range); returns (z, chi2)."""
    zlo, zhi = model.redshift_range
    rest = amp[:, None] * model.rest_flux(labels)

    def chi2_at(zs: np.ndarray, derivative: bool) -> tuple[np.ndarray, np.ndarray | None]:
        from .shift import catmull_rom

        pos, dpos = observed_positions(model.wave, pix, zs)
        m, dm, valid = catmull_rom(rest, pos, derivative=derivative)
        ww = np.where(valid, w, 0.0)
        r = f - m
        chi2 = (ww * r * r).sum(axis=1)
        if not derivative:
            return chi2, None
        assert dm is not None
        jz = dm * dpos
        return chi2, np.stack([(ww * jz * r).sum(axis=1), (ww * jz * jz).sum(axis=1)], axis=1)

    chi2, gh = chi2_at(z, True)
    if zhi <= zlo:
        return z, chi2
    for _ in range(steps):
        assert gh is not None
        step = np.where(gh[:, 1] > 0, gh[:, 0] / np.maximum(gh[:, 1], 1e-300), 0.0)
        trial = np.clip(z + step, zlo, zhi)
        t_chi2, t_gh = chi2_at(trial, True)
        better = t_chi2 < chi2
        z, chi2 = np.where(better, trial, z), np.where(better, t_chi2, chi2)
        assert t_gh is not None
        gh = np.where(better[:, None], t_gh, gh)
        if not better.any():
            break
    return z, chi2


def _fit_block(model: CannonModel, pairs: np.ndarray, theta: np.ndarray, pix: np.ndarray, f: np.ndarray,
               s: np.ndarray, w: np.ndarray, starts_l: np.ndarray, starts_z: np.ndarray, settings: FitSettings
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels, redshift and flux scale of one block of stars: per outer round, the labels and the scale in the
    rest frame at the current redshift (every start in the first round, the best one after), then the
    redshift at those in the observed frame. Returns labels, z, chi2, iterations, scale."""
    b_count, n_starts, n_labels = starts_l.shape
    terms = model.terms
    lo = (model.low - model.centre) / model.scale
    hi = (model.high - model.centre) / model.scale
    x = np.clip((starts_l - model.centre) / model.scale, lo, hi)
    z = starts_z[:, 0].copy()
    amp: np.ndarray | None = None
    iters = np.zeros(b_count, dtype=np.int64)
    chi2 = np.full(b_count, np.inf)
    for outer in range(settings.outer):
        system = _rest_system(model, pairs, theta, pix, f, s, z, np.nan_to_num(model.scatter ** 2))
        rows = x if outer == 0 else x[:, None, :]
        s_count = rows.shape[1]
        rep = {k: np.repeat(v, s_count, axis=0) for k, v in system.items()}
        start_amp = None if amp is None else np.repeat(amp, s_count)
        fitted, fitted_amp, rest_chi2, used = _label_lm(rows.reshape(-1, n_labels).copy(), start_amp, rep, terms,
                                                        lo, hi, settings)
        pick = np.argmin(rest_chi2.reshape(b_count, s_count), axis=1)
        x = fitted.reshape(b_count, s_count, n_labels)[np.arange(b_count), pick]
        amp = fitted_amp.reshape(b_count, s_count)[np.arange(b_count), pick]
        iters += used.reshape(b_count, s_count).sum(axis=1)
        z, chi2 = _redshift_newton(model, model.centre + model.scale * x, z, pix, f, w, amp)
    assert amp is not None
    return model.centre + model.scale * x, z, chi2, iters, amp
