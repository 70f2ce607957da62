"""What a head is to the rest of featcache: a registry entry that carries its behaviour (timm's registry is the
model). An entry builds the head, fits it on a fit's rows (closed form, a search, or the torch loop), says what
was chosen on validation, saves and loads its state, estimates its cost, says whether it trains in a batched
pass, and declares its own options (the CLI, FitSpec and compare take them from here).

Adding a head is one file that subclasses `HeadEntry` (or `heads.mlp.TorchHead`) and calls `register`, plus
its module's name in `heads.registry.HEAD_MODULES` (docs/extending.md walks through it).
Torch-free: the CLI reads the option schemas without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..common.constraints import Interval, check
from ..common.errors import FeatcacheError, choices_message


@dataclass(frozen=True)
class HeadOption:
    """One option of one head: its Python name (FitSpec.options, compare's keyword), its command-line flag,
    its default, what it accepts (common.constraints) and how the command line's text becomes its value."""

    name: str
    flag: str
    default: Any
    help: str
    constraint: Any = None
    parse: Callable[[Any], Any] | None = None  # the CLI's text -> value (None: click's type does it)
    click_type: Any = None                     # a click type, or a tuple of choices
    metavar: str | None = None
    show_default: bool = True
    dest: str | None = None                    # the CLI parameter's name when it is not `name` (--knn-k: knn_k)


@dataclass
class FitRows:
    """What a head fits on: features and targets per role ('train', 'val'; the matrices may be lazy), the
    target names, and the fit's settings (the FitSpec and the head's resolved options)."""

    x: dict[str, Any]
    y: dict[str, Any]
    spec: Any
    options: dict[str, Any]
    progress: bool = True
    build_options: dict[str, Any] = field(default_factory=dict)  # extra builder keywords (attn: the map shape)

    @property
    def in_dim(self) -> int:
        return int(self.x["train"].shape[1])

    @property
    def targets(self) -> list[str]:
        return list(self.spec.targets)


class HeadEntry:
    """The behaviour every head provides; subclasses override what differs. Class attributes describe it."""

    name: str = ""
    description: str = ""
    trainable: bool = False     # True: a torch module trained by the heads' one loop (heads.loop)
    uncertainty: bool = False   # predicts a sigma per row (predictions gain <split>_sigma, metrics calibration)
    finetune: bool = False      # finetune can train it end to end
    needs_map: bool = False     # pools a feature map itself: needs a --pool none feature (C, L' in its attrs)
    batchable: bool = False     # trains with others in one pass of stacked weights (heads.loop.StackedMLPs)
    options: tuple[HeadOption, ...] = ()      # its own options (fit, compare, FitSpec.options)
    build_keywords: tuple[str, ...] = ()      # builder keywords saved in head.pt (load rebuilds the head with them)

    # -- building and options --------------------------------------------------------------------------------
    def build(self, in_dim: int, out_dim: int, hidden: int, dropout: float, **kwargs: Any) -> Any:
        raise NotImplementedError

    def create(self, in_dim: int, out_dim: int, hidden: int, dropout: float, seed: int | None = None,
               **kwargs: Any) -> Any:
        """Build the head after checking its sizes; seed makes torch initialisation reproducible without
        touching the caller's global RNG."""
        if int(in_dim) < 1 or int(out_dim) < 1:
            raise FeatcacheError(f"head dimensions must be positive, got in_dim={in_dim}, out_dim={out_dim}")
        check("--hidden", int(hidden), Interval(int, 1, None, closed="left"))
        check("--dropout", float(dropout), Interval(float, 0.0, 1.0, closed="left"))
        if self.trainable and set(kwargs) - set(self.build_keywords):
            unknown = sorted(set(kwargs) - set(self.build_keywords))
            raise FeatcacheError(f"head '{self.name}' takes no options {unknown}")
        if seed is None:
            return self.build(int(in_dim), int(out_dim), int(hidden), float(dropout), **kwargs)
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return self.build(int(in_dim), int(out_dim), int(hidden), float(dropout), **kwargs)

    def build_options_for(self, cache: Any, spec: Any, in_dim: int) -> dict[str, Any]:
        """Builder keywords that come from the cache (attn: the map's shape); none by default."""
        return {}

    def resolve_options(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """Every option of this head: the given value (checked against its constraint) or its default.
        Options of other heads are ignored (compare passes one set to every head of its grid)."""
        given = dict(given or {})
        out = {}
        for option in self.options:
            value = given.get(option.name, option.default)
            if option.constraint is not None and value is not None:
                check(option.flag, value, option.constraint)
            out[option.name] = value
        return out

    def describe_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """What of its options enters a fit's identity (FitSpec.describe, compare's cell keys): nothing by
        default, so the keys of heads without options stay what they were."""
        return {}

    def saved_build_options(self, predictor: Any) -> dict[str, Any]:
        """The builder keywords a fitted head was made with (head.pt's head_options)."""
        return {}

    # -- fitting and reporting ---------------------------------------------------------------------------
    def fit(self, rows: FitRows) -> tuple[Any, list[dict[str, Any]]]:
        """(the fitted predictor, its history rows) from the fit's train and validation rows."""
        raise NotImplementedError

    def chosen(self, predictor: Any) -> dict[str, Any]:
        """What validation chose (metrics.json's `chosen`, compare's cells)."""
        raise NotImplementedError

    def to_state(self, predictor: Any) -> dict[str, Any]:
        """Plain tensors and numbers for head.pt (weights-only loadable)."""
        return predictor.to_state()

    def from_state(self, saved: dict[str, Any]) -> Any:
        """The predictor back from head.pt's contents."""
        raise NotImplementedError

    def estimated_flop(self, n_train: int, n_eval: int, width: int, spec: Any, batched: bool = False) -> float:
        """A fit's rough cost in FLOP (compare orders and balances its work by it; never reported)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<head {self.name}: {self.description}>"


# the modules that define heads, in the order --help and list_heads show them (a new head adds its module here)
HEAD_MODULES = ("ridge", "knn", "mlp", "gaussian", "attention")
_REGISTRY: dict[str, HeadEntry] = {}


def register(entry: HeadEntry) -> HeadEntry:
    """Add an entry under its name (once)."""
    if not entry.name:
        raise ValueError("a head entry needs a name")
    if entry.name in _REGISTRY:
        raise ValueError(f"head '{entry.name}' is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def registered() -> dict[str, HeadEntry]:
    """Every head's entry by name, in HEAD_MODULES order (each module's in its registration order), whichever
    module was imported first."""
    import importlib

    for module in HEAD_MODULES:
        importlib.import_module(f"{__package__}.{module}")

    def place(item: tuple[int, tuple[str, HeadEntry]]) -> tuple[int, int]:
        module = type(item[1][1]).__module__.rsplit(".", 1)[-1]
        return (HEAD_MODULES.index(module) if module in HEAD_MODULES else len(HEAD_MODULES), item[0])

    return {name: entry for _, (name, entry) in sorted(enumerate(_REGISTRY.items()), key=place)}


def lookup(name: str) -> HeadEntry:
    entries = registered()
    if name not in entries:
        raise FeatcacheError(choices_message("head", name, list(entries)))
    return entries[name]
