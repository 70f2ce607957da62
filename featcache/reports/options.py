"""What `featcache compare` takes, by name, with its defaults (the CLI shows these; they are defined here only),
and every check of them that needs no file, by declared constraints (common.constraints)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from ..common.constraints import SEED, SEED_MAX, Interval, validate
from ..common.errors import FeatcacheError
from ..heads.binning import Binning
from ..heads.recipe import DEFAULT_DROPOUT, DEFAULT_HIDDEN, TrainRecipe

DEFAULT_HEAD_NAMES = ("ridge", "mlp_1")  # the heads of a compare that names none
N_BOOT = 1000
CacheArgs = Mapping[str, str | Path] | Sequence[str | Path | tuple[str | None, str | Path]]


@dataclass
class CompareOptions:
    """Everything `featcache compare` takes (the CLI's options by name; `compare(caches, targets, **options)`
    builds one). `validate` checks and normalises it once: targets and heads without repeats, the heads'
    own options resolved against their schemas, --max-memory in bytes."""

    caches: CacheArgs
    targets: Sequence[str]
    heads: Sequence[str] | None = DEFAULT_HEAD_NAMES
    layers: Sequence[str] | None = None
    pools: Sequence[str] | None = None
    seeds: int = 1
    recipe: TrainRecipe | None = None
    hidden: int = DEFAULT_HIDDEN
    dropout: float = DEFAULT_DROPOUT
    alphas: list[float] | None = None
    runs: Sequence[str | Path] = ()
    out: str | Path = "reports/compare"
    baselines: bool = True
    device: str = "auto"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    n_boot: int = N_BOOT
    plots: bool = True
    show_progress: bool = True
    jobs: int = 1
    threads: int | None = None  # CPU threads of each process fitting heads (None: common.device's default, 1)
    fit: bool = True
    binning: Binning | None = None
    train_sizes: Sequence[int] = ()
    folds: int = 0
    subset_seed: int = 0
    shard: tuple[int, int] | None = None
    sweep_values: Mapping[str, Sequence[float]] | None = None
    batched: bool = True
    head_options: Mapping[str, Any] | None = None  # the heads' own options (heads.registry.head_option_schema)
    max_memory: int | str | None = None  # bytes, '1GB', '25%'; None: half the available RAM (bytes after validate)
    full_spectrum: bool = False  # the full-spectrum fit as a baseline row (reports.fullspec)
    cannon_order: int = 2  # its Cannon model: the polynomial's order (The Cannon is quadratic) ...
    cannon_cells: str = "auto"  # ... and its local models (information.api.cell_grid: auto, none, AxBxC)
    command: str | None = None  # the command as typed, for report.html's header (None: compare() from Python)
    resolved_heads: dict[str, Any] = field(default_factory=dict, repr=False)  # every head option, after validate
    # the keywords before 0.2 (accepted until 0.3, with a warning): they go into `head_options`
    knn_ks: InitVar[Sequence[int] | None] = None
    knn_weights: InitVar[str | None] = None
    attn_heads: InitVar[int | None] = None

    constraints = {"seeds": Interval(int, 1, None, closed="left", text="at least 1"),
                   "jobs": Interval(int, 1, None, closed="left", text="at least 1"),
                   "threads": (Interval(int, 1, None, closed="left", text="at least 1"), None),
                   "folds": Interval(int, 0, None, closed="left"), "n_boot": Interval(int, 0, None, closed="left"),
                   "cannon_order": Interval(int, 1, 3, closed="both", text="1, 2 or 3")}
    flags = {"n_boot": "n_boot"}

    def __post_init__(self, knn_ks: Sequence[int] | None, knn_weights: str | None, attn_heads: int | None) -> None:
        given = {k: v for k, v in (("knn_ks", knn_ks), ("knn_weights", knn_weights), ("attn_heads", attn_heads))
                 if v is not None}
        if given:
            warnings.warn(f"compare({', '.join(given)}=...) is deprecated: give head_options={{...}} with the same "
                          "names", DeprecationWarning, stacklevel=4)
            self.head_options = {**(self.head_options or {}), **given}

    def validate(self) -> CompareOptions:
        """Check every option that needs no file; returns self, normalised."""
        from ..heads.registry import head_info
        from ..heads.streaming import parse_memory

        self.out = Path(self.out)
        if self.shard is not None:
            check_shard(*self.shard)
        self.targets = list(dict.fromkeys(self.targets))
        self.heads = list(dict.fromkeys(self.heads or DEFAULT_HEAD_NAMES))
        for head in self.heads:
            head_info(head)  # lists the registered heads if unknown
        validate(self)
        self.recipe = self.recipe or TrainRecipe()
        self.recipe.validate()
        if self.recipe.seed + self.seeds - 1 > SEED_MAX:
            raise FeatcacheError(f"--seed {self.recipe.seed} with --seeds {self.seeds}: the seeds must stay within "
                                 "0..2**63-1")
        if not SEED.accepts(self.subset_seed):
            raise FeatcacheError(f"--subset-seed {self.subset_seed}: expected an integer in 0..2**63-1")
        self.binning = self.binning or Binning()
        self.resolved_heads = resolve_head_options(self.head_options)
        self.max_memory = parse_memory(self.max_memory)  # bytes, once: every fit and --jobs worker has this budget
        from ..information.training import cell_grid

        cell_grid(self.cannon_cells, 5, 1)  # the form only (a count per label must wait for the file)
        self.cannon_cells = str(self.cannon_cells)
        return self

    @property
    def splits(self) -> list[str]:
        return [self.train_split, self.val_split, self.test_split]


def check_shard(i: int, n: int) -> tuple[int, int]:
    """--shard I/N: 0 <= I < N, as extract's."""
    if not 0 <= i < n:
        raise FeatcacheError(f"--shard {i}/{n}: expected I/N with 0 <= I < N, e.g. --shard 0/4 (a job array: "
                             "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return i, n


def resolve_head_options(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every registered head's options: the given value (checked by its head) or the default; a name no head
    declares is refused."""
    from ..heads.registry import head_info, head_option_schema, list_heads

    given = dict(given or {})
    schema = head_option_schema()
    unknown = sorted(set(given) - {o.name for o in schema})
    if unknown:
        raise FeatcacheError(f"no head takes the option(s) {', '.join(unknown)}; the heads' options: "
                             + ", ".join(o.name for o in schema))
    out: dict[str, Any] = {}
    for name in list_heads():
        out.update(head_info(name).resolve_options(given))
    return out
