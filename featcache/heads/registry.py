"""Named heads (timm-style registry): `create_head('mlp_1', in_dim=384, out_dim=1)`, `head_info('knn')`.

Each head is one module that defines its entry (heads.entry.HeadEntry: how it builds, fits, reports what was
chosen, saves and loads, what it costs, whether it batches, its options) and registers it; HEAD_MODULES
(heads.entry) lists those modules in the order --help and list_heads show. A new head is one file plus its
module's name there.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .entry import HEAD_MODULES, HeadEntry, HeadOption, lookup, registered
from .recipe import DEFAULT_DROPOUT, DEFAULT_HIDDEN

registered()  # every head module imported, so its entry is registered

HeadInfo = HeadEntry  # the name this module's entries had before 0.2
__all__ = ["HEAD_MODULES", "HeadInfo", "list_heads", "head_info", "is_trainable", "head_option_schema",
           "count_parameters", "create_head", "head_options"]


def list_heads() -> list[str]:
    """Registered head names, in registration order (ridge first)."""
    return list(registered())


def head_info(name: str) -> HeadEntry:
    """The entry of a head (its behaviour and flags); an unknown name lists the registered heads."""
    return lookup(name)


def is_trainable(name: str) -> bool:
    """True for torch heads (the heads' training loop), False for closed-form or search heads (ridge, knn)."""
    return head_info(name).trainable


def head_option_schema() -> list[HeadOption]:
    """Every registered head's own options, in registration order (the CLI's head options are tested against
    this list; FitSpec.options and compare take their names from it)."""
    return [option for entry in registered().values() for option in entry.options]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def create_head(name: str, in_dim: int, out_dim: int, hidden: int = DEFAULT_HIDDEN,
                dropout: float = DEFAULT_DROPOUT, seed: int | None = None, **kwargs: Any) -> Any:
    """Build a head by name. seed makes torch initialisation reproducible without touching the global RNG;
    extra kwargs go to the builder (ridge: alphas, alpha_grid, scale_alphas; knn: ks, weights; attn: channels,
    length, heads)."""
    return head_info(name).create(in_dim, out_dim, hidden, dropout, seed=seed, **kwargs)


def head_options(name: str, predictor: Any) -> dict[str, Any]:
    """The builder options a fitted head was made with (saved in head.pt, so load_head rebuilds it)."""
    return head_info(name).saved_build_options(predictor)
