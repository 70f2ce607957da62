"""The calibrated synthetic PFS red-arm benchmark (`featcache synth`): fixed physics and constants, line
profiles and curves of growth, the spectrum model, and the generator that writes pfsspec files.

May import: featcache.common.
"""

from ..common.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "write_synth": "generate", "generate_block": "generate", "spectrum_rng": "generate",
    "spectrum_seed": "generate", "N_UNIFORMS": "generate", "noise_free_flux": "generate",
    "C_KMS": "physics", "LABEL_RANGES": "physics", "N_PIXELS": "physics", "PHYSICS": "physics",
    "DEFAULT_MAG": "physics", "Physics": "physics", "load_lines": "physics", "observed_wave": "physics",
    "SynthModel": "model", "get_model": "model",
})
