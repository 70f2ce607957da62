"""Named heads (timm-style registry): `create_head('mlp_1', in_dim=384, out_dim=1)`.

`ridge` is closed-form (featcache.heads.ridge.RidgeHead, fitted from streamed statistics); the others are torch
modules trained by featcache.heads.training.train_head on standardised features and targets. The modules are
plain nn.Sequential so their state dicts have stable, short keys ('0.weight', ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..common.errors import FeatcacheError, choices_message
from .attention import DEFAULT_HEADS as DEFAULT_ATTN_HEADS
from .attention import AttentionHead
from .dropout import Dropout
from .gaussian import GaussianMLP
from .knn import KNNHead
from .recipe import DEFAULT_DROPOUT, DEFAULT_HIDDEN
from .ridge import RidgeHead


@dataclass(frozen=True)
class HeadInfo:
    """A registry entry: how to build the head and whether it is trained by gradient descent."""

    name: str
    description: str
    trainable: bool  # True: torch module for train_head; False: closed form (ridge, knn)
    builder: Callable[..., Any]
    uncertainty: bool = False  # predicts a sigma per row (predictions gain <split>_sigma, metrics calibration)
    finetune: bool = True      # finetune can train it end to end (trainable heads only)
    needs_map: bool = False    # pools a feature map itself: needs a --pool none feature (C, L' in its attrs)
    options: tuple[str, ...] = ()  # builder keyword options (saved in head.pt to rebuild the head)


_REGISTRY: dict[str, HeadInfo] = {}


def register_head(name: str, description: str, trainable: bool = True, *, uncertainty: bool = False,
                  finetune: bool = True, needs_map: bool = False, options: tuple[str, ...] = ()
                  ) -> Callable[[Callable], Callable]:
    """Decorator adding a builder `(in_dim, out_dim, hidden, dropout, **kwargs) -> head` under `name`."""

    def wrap(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"head '{name}' is already registered")
        _REGISTRY[name] = HeadInfo(name, description, trainable, builder, uncertainty, finetune and trainable,
                                   needs_map, options)
        return builder

    return wrap


def list_heads() -> list[str]:
    """Registered head names, in registration order (ridge first)."""
    return list(_REGISTRY)


def head_info(name: str) -> HeadInfo:
    if name not in _REGISTRY:
        raise FeatcacheError(choices_message("head", name, list_heads()))
    return _REGISTRY[name]


def is_trainable(name: str) -> bool:
    """True for torch heads (train_head), False for closed-form ones (ridge)."""
    return head_info(name).trainable


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _mlp(in_dim: int, out_dim: int, hidden: int, dropout: float, blocks: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(blocks):
        layers += [nn.Linear(width, hidden), nn.GELU(), Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


@register_head("ridge", "closed-form ridge on standardised features, alpha chosen by validation R2",
               trainable=False)
def _ridge(in_dim: int, out_dim: int, hidden: int, dropout: float, **kwargs: Any) -> RidgeHead:
    return RidgeHead(**kwargs)


@register_head("knn", "k nearest neighbours on standardised features (Euclidean), k chosen by validation R2",
               trainable=False)
def _knn(in_dim: int, out_dim: int, hidden: int, dropout: float, **kwargs: Any) -> KNNHead:
    return KNNHead(**kwargs)


@register_head("linear", "Linear(D, T) trained with the MLP recipe")
def _linear(in_dim: int, out_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return _mlp(in_dim, out_dim, hidden, dropout, blocks=0)


@register_head("mlp_1", "Linear(D, h) -> GELU -> Dropout -> Linear(h, T)")
def _mlp_1(in_dim: int, out_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return _mlp(in_dim, out_dim, hidden, dropout, blocks=1)


@register_head("mlp_2", "two hidden blocks of width h (Linear -> GELU -> Dropout), then Linear(h, T)")
def _mlp_2(in_dim: int, out_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return _mlp(in_dim, out_dim, hidden, dropout, blocks=2)


@register_head("mlp_1_gauss", "mlp_1 giving a mean and a sigma per target, Gaussian NLL after an MSE warm-up",
               uncertainty=True, finetune=False)
def _mlp_1_gauss(in_dim: int, out_dim: int, hidden: int, dropout: float) -> GaussianMLP:
    return GaussianMLP(nn.Linear(in_dim, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, 2 * out_dim),
                       n_targets=out_dim)


@register_head("attn", "attention pooling over a --pool none feature map (learned scores + position "
               "embedding, softmax over positions, several heads), then mlp_1", needs_map=True,
               options=("channels", "length", "heads"))
def _attn(in_dim: int, out_dim: int, hidden: int, dropout: float, channels: int | None = None,
          length: int | None = None, heads: int = DEFAULT_ATTN_HEADS) -> AttentionHead:
    if channels is None or length is None or channels * length != in_dim:
        raise FeatcacheError(f"head attn needs the map shape (channels x length = {in_dim}), got {channels} x {length}")
    if int(heads) < 1:
        raise FeatcacheError(f"--attn-heads must be a positive integer, got {heads}")
    return AttentionHead(channels, length, out_dim, hidden, dropout, heads=int(heads))


def create_head(name: str, in_dim: int, out_dim: int, hidden: int = DEFAULT_HIDDEN,
                dropout: float = DEFAULT_DROPOUT, seed: int | None = None, **kwargs: Any) -> Any:
    """Build a head by name. seed makes torch initialisation reproducible without touching the global RNG;
    extra kwargs go to the builder (ridge: alphas, alpha_grid, scale_alphas; knn: ks, weights)."""
    info = head_info(name)
    if int(in_dim) < 1 or int(out_dim) < 1:
        raise FeatcacheError(f"head dimensions must be positive, got in_dim={in_dim}, out_dim={out_dim}")
    if int(hidden) < 1:
        raise FeatcacheError(f"--hidden must be a positive integer, got {hidden}")
    if not 0.0 <= float(dropout) < 1.0:
        raise FeatcacheError(f"--dropout must be in [0, 1), got {dropout}")
    if info.trainable and set(kwargs) - set(info.options):
        raise FeatcacheError(f"head '{name}' takes no options {sorted(set(kwargs) - set(info.options))}")
    if seed is None:
        return info.builder(int(in_dim), int(out_dim), int(hidden), float(dropout), **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return info.builder(int(in_dim), int(out_dim), int(hidden), float(dropout), **kwargs)


def head_options(name: str, model: Any) -> dict[str, Any]:
    """The builder options a trained head was made with (saved in head.pt, so load_head rebuilds it)."""
    if isinstance(model, AttentionHead):
        return {"channels": model.pool.channels, "length": model.pool.length, "heads": model.pool.heads}
    return {}
