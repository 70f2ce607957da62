"""How much each label the spectra hold: per-star Cramer-Rao bounds (`fisher`), the two sources of the
spectrum's derivatives (`exact`: the synth generator by finite differences; `cannon`: the data-driven per-pixel
polynomial, fitted on a file in the rest frame by `training` with `shift`), the full-spectrum fit that is the
field's baseline (`fullfit`), what they read from a file (`files`), the bounds of a file (`api`) and of a
cache's splits, stored beside its labels (`store`).

May import: featcache.common, featcache.spectra, featcache.synth, featcache.cache.
"""

from ..common.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "bounds": "api", "Bounds": "api", "fit_cannon": "training", "STELLAR_LABELS": "files",
    "CannonModel": "cannon", "PiecewiseCannon": "cannon", "load_model": "cannon", "fit_with": "fullfit",
    "crb": "fisher", "fisher_matrix": "fisher", "inverse_fisher": "fisher",
    "prior_sigma": "fisher", "FitSettings": "fullfit", "FitResult": "fullfit", "fit_spectra": "fullfit",
    "synth_jacobian": "exact", "step_stability": "exact", "DEFAULT_STEPS": "exact",
})
