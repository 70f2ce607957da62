"""Pretraining the blind-spot denoiser with the original losses (T1, E1, E2): the recipe, the losses, the
auxiliary label loss (--aux-target), the head initialisation, the data and their order, reconstruction S/N,
the files beside a checkpoint, the loop.

May import: featcache.common, featcache.spectra, featcache.model.
"""

from ..common.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "PretrainRecipe": "recipe", "pretrain": "run", "PretrainResult": "run", "new_model": "run",
    "pretrain_loss": "losses", "training_step": "losses", "Batch": "losses", "model_input": "losses",
    "init_head": "head_init", "data_levels": "head_init", "head_parameter_groups": "head_init",
    "evaluate": "snr", "reconstruction_snr": "snr", "EvalResult": "snr",
    "read_block": "data", "checkpoint_mask": "files", "read_log": "files", "load_resume_state": "files",
    "saved_settings": "files", "AuxObjective": "auxiliary", "labelled_rows": "auxiliary", "load_aux": "auxiliary",
    "aux_path_for": "auxiliary", "PretrainOptions": "options", "run_pretrain": "run",
})
