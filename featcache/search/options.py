"""What `featcache search` takes, as one options object: the pretraining and probe data, the search space, the
objective, and where the trials are stored. Torch- and Optuna-free, so the command line reads the defaults
without importing either."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..common.constraints import SEED, StrOptions, at_least, validate
from ..common.errors import FeatcacheError

# the hyper-parameters a search may vary: PretrainRecipe / EncoderConfig fields, with their types
SPACE_PARAMETERS: dict[str, type] = {"num_layers": int, "embed_dim": int, "kernel_size": int, "loss": str,
                                     "aux_weight": float, "max_epochs": int, "lr": float, "batch_size": int}
ARCH_PARAMETERS = ("num_layers", "embed_dim", "kernel_size")
DEFAULT_SPACE: dict[str, list[Any]] = {"num_layers": [9], "embed_dim": [16, 32], "kernel_size": [9, 15],
                                       "loss": ["E2"], "max_epochs": [1, 2]}
SAMPLERS = ("tpe", "random", "grid")
OBJECTIVES = ("ratio", "score")  # ratio: val R2 per CPU-minute of pretraining; score: val R2 alone
PRUNERS = ("median", "none")
SPLITS = ("train", "val")


def default_space() -> dict[str, list[Any]]:
    return {k: list(v) for k, v in DEFAULT_SPACE.items()}


@dataclass
class SearchOptions:
    """Everything `featcache search` takes (the CLI's options by name).

    data: the pretraining splits (train=, val= for the reconstruction S/N); probe_data: the probe's splits
    (train=, val=), whose validation R2 scores each encoder; their test split is never read by a search.
    space: hyper-parameter -> its choices (one choice fixes it). pretrain: every other PretrainRecipe setting,
    the same for every trial (batch_size, lr, max_train, the auxiliary loss's targets and labelled rows, ...).
    """

    data: list[str]
    probe_data: list[str]
    out: Path
    targets: list[str] = field(default_factory=lambda: ["log_g"])
    space: dict[str, list[Any]] = field(default_factory=default_space)
    pretrain: dict[str, Any] = field(default_factory=dict)
    n_trials: int = 12
    storage: str | None = None  # an RDB URL; None: sqlite:///OUT/search.db
    study_name: str = "featcache-search"
    sampler: str = "tpe"
    seed: int = 0
    worker: int | None = None  # this worker's index (its sampler seed is seed + worker); None: SLURM_ARRAY_TASK_ID or 0
    objective: str = "ratio"
    pruner: str = "median"
    prune_after: int = 3  # trials finished before the pruner judges (MedianPruner's n_startup_trials)
    probe_every: int = 1  # epochs between intermediate probes (and the last epoch always)
    probe_layer: str = "enc_pre_latent"
    probe_pool: str = "seg_mean_K8"
    probe_head: str = "ridge"
    threads: int = 1  # torch threads per trial (its CPU time is what the objective divides by)
    timeout: float | None = None  # minutes of wall time for this worker: no new trial starts after it

    constraints = {"n_trials": at_least(1), "seed": SEED, "worker": (at_least(0), None),
                   "sampler": StrOptions(SAMPLERS), "objective": StrOptions(OBJECTIVES),
                   "pruner": StrOptions(PRUNERS), "prune_after": at_least(0), "probe_every": at_least(1),
                   "threads": at_least(1)}

    def __post_init__(self) -> None:
        self.out, self.data, self.probe_data = Path(self.out), list(self.data), list(self.probe_data)
        self.targets = list(self.targets)
        self.space = {k: list(v) for k, v in self.space.items()}

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'search.db').resolve()}"

    def validate(self) -> SearchOptions:
        validate(self)
        from .space import check_space

        check_space(self.space, self.pretrain)
        if not self.targets:
            raise FeatcacheError("give at least one --target")
        if self.timeout is not None and not self.timeout > 0:
            raise FeatcacheError(f"--timeout {self.timeout}: expected a positive number of minutes")
        return self

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["out"] = str(self.out)
        return out
