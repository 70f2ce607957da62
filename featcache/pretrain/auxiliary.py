"""The auxiliary label loss of pretraining: a small head on one encoder tap predicts standardised labels
(log_g, T_eff, M_H) of a fixed, seeded subset of the train rows (docs/pretraining-aux.md).

The encoder minimises blind-spot loss + LAMBDA x MSE, the MSE over the labelled rows of each batch (a batch
without one adds nothing). The head reads the tap of the same forward pass (`forward_with_taps`), pooled as
extract pools it; its input carries a gradient scale of LAMBDA, so the encoder receives exactly LAMBDA x the
MSE's gradient while the head itself is trained on the MSE at full strength (its own Adam: Adam does not see
a constant scale of the gradient, so for LAMBDA > 0 this is the sum's minimum, and at LAMBDA 0 the head is a
probe that watches the encoder without steering it: the encoder's updates are bitwise those of plain
pretraining). Only the labelled rows' labels are read into the loss: labels of every other train row, and of
the validation and test files, never reach it. The head, its optimizer state and the labelled rows are
saved beside the checkpoint (<stem>.aux.pt), so the checkpoint keeps the original layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..common.device import to_cpu
from ..common.errors import FeatcacheError
from ..common.files import load_torch, save_torch
from ..common.subsets import nested_subset
from ..model.encoder import BlindspotModel1D
from ..model.pooling import Pooling, get_pooling
from ..model.taps import PSEUDO_LAYERS, tap_depth, tap_shape
from ..spectra.pfsspec import PfsDataset
from .recipe import PretrainRecipe

AUX_FORMAT = 1
AUX_SEED_OFFSET = 7919  # the head's initialisation seed: recipe.seed + this (the encoder's is recipe.seed)


def aux_path_for(out: str | os.PathLike[str]) -> Path:
    """<stem>.aux.pt beside the checkpoint."""
    out = Path(out)
    return out.with_name(out.stem + ".aux.pt")


def labelled_rows(n_train: int, recipe: PretrainRecipe) -> np.ndarray:
    """The train rows whose labels the loss sees: all n_train, or the first aux_labels of one permutation drawn
    with aux_seed (common.subsets.nested_subset: compare's --train-sizes N --subset-seed S on a cache of the
    same train file trains on exactly these spectra)."""
    if recipe.aux_labels is None:
        return np.arange(n_train)
    if recipe.aux_labels > n_train:
        raise FeatcacheError(f"--aux-labels {recipe.aux_labels}: the run trains on {n_train} spectra")
    return nested_subset(n_train, recipe.aux_labels, recipe.aux_seed)


@dataclass(frozen=True)
class LabelTable:
    """The labelled rows (sorted file rows), their labels and the standardisation (mean, std per target)."""

    targets: tuple[str, ...]
    rows: np.ndarray  # (N,) int64, sorted
    values: np.ndarray  # (N, T) float64, as in the file
    mean: np.ndarray  # (T,)
    std: np.ndarray  # (T,)

    @property
    def standardised(self) -> np.ndarray:
        return (self.values - self.mean) / self.std

    def lookup(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions in the batch of its labelled rows, their standardised labels as float32)."""
        batch_rows = rows.numpy()
        where = np.searchsorted(self.rows, batch_rows)
        where = np.minimum(where, len(self.rows) - 1)
        hit = self.rows[where] == batch_rows
        picked = self.standardised[where[hit]]
        return torch.from_numpy(np.flatnonzero(hit)), torch.from_numpy(picked.astype(np.float32))


def read_labels(train: PfsDataset, rows: np.ndarray, targets: tuple[str, ...],
                standardisation: tuple[np.ndarray, np.ndarray] | None = None) -> LabelTable:
    """The labelled rows' labels from the train file (no other row's label is kept), checked: every one finite,
    none constant. A resumed run passes the saved standardisation."""
    if not train.label_names():
        raise FeatcacheError(f"{train.path}: --aux-target needs a params table with labels; the file has none")
    labels = train.labels(list(targets))  # unknown names: one line listing the labels the file has
    values = np.stack([np.asarray(labels[t], dtype=np.float64)[rows] for t in targets], axis=1)
    for j, target in enumerate(targets):
        bad = np.flatnonzero(~np.isfinite(values[:, j]))
        if bad.size:
            raise FeatcacheError(f"{train.path}: label '{target}' is NaN or inf on {bad.size} of the {len(rows)} "
                                 f"labelled train rows (row {int(rows[bad[0]])} first); --aux-labels draws rows "
                                 "that must have labels: fill or drop those rows")
    if standardisation is None:
        mean, std = values.mean(axis=0), values.std(axis=0)
        for j in np.flatnonzero(~(std > 1e-12 * np.maximum(1.0, np.abs(mean)))):
            raise FeatcacheError(f"{train.path}: label '{targets[j]}' is constant on the {len(rows)} labelled "
                                 f"train rows (every value {values[0, j]:.6g}); nothing for the auxiliary head to fit")
    else:
        mean, std = (np.asarray(a, dtype=np.float64) for a in standardisation)
    return LabelTable(tuple(targets), np.asarray(rows, dtype=np.int64), values, mean, std)


class GradScale(torch.autograd.Function):
    """Identity forward; the gradient times `scale` backward (what the encoder receives of the auxiliary MSE)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class AuxHead(nn.Module):
    """pooling of a tap map -> Linear (or Linear -> GELU -> Linear), standardised labels out."""

    def __init__(self, pooling: Pooling, in_dim: int, out_dim: int, hidden: int):
        super().__init__()
        self.pooling = pooling
        self.net = (nn.Linear(in_dim, out_dim) if hidden == 0 else
                    nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim)))

    def forward(self, tap_map: torch.Tensor) -> torch.Tensor:
        return self.net(self.pooling(tap_map))


def check_aux_settings(recipe: PretrainRecipe, model: BlindspotModel1D, n_kept: int) -> int:
    """The auxiliary head's input width; a tap the encoder lacks or a pooling the map cannot take is one line."""
    layers = model.config.num_layers
    if recipe.aux_tap in PSEUDO_LAYERS or tap_depth(recipe.aux_tap, layers) is None:
        raise FeatcacheError(f"--aux-tap {recipe.aux_tap}: not an encoder tap of this l{layers} model; "
                             f"choose enc_0..enc_{layers}, enc_pre_latent or enc_last")
    channels, length = tap_shape(model, recipe.aux_tap, n_kept, "forward")
    try:
        return get_pooling(recipe.aux_pool).width(channels, length)
    except FeatcacheError as exc:
        raise FeatcacheError(f"--aux-pool {recipe.aux_pool} on --aux-tap {recipe.aux_tap}: {exc}") from None


class AuxObjective:
    """The auxiliary head, its optimizer and labels, and this epoch's running MSE (what a run saves)."""

    def __init__(self, recipe: PretrainRecipe, model: BlindspotModel1D, n_kept: int, table: LabelTable,
                 device: torch.device):
        width = check_aux_settings(recipe, model, n_kept)
        self.recipe, self.table = recipe, table
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed + AUX_SEED_OFFSET)
            self.head = AuxHead(get_pooling(recipe.aux_pool), width, len(recipe.aux_targets),
                                recipe.aux_hidden).to(device)
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=recipe.lr)
        self.reset()

    @property
    def tap(self) -> str:
        return self.recipe.aux_tap

    def reset(self) -> None:
        self.mse_sum, self.n_seen = 0.0, 0

    @property
    def epoch_mse(self) -> float:
        """The mean squared error (standardised labels) over this epoch's labelled rows, before each step."""
        return self.mse_sum / self.n_seen if self.n_seen else float("nan")

    def loss(self, tap_map: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor | None:
        """The MSE over the batch's labelled rows (None when it has none); its gradient reaches the encoder
        scaled by LAMBDA and the head in full."""
        if rows is None:
            raise FeatcacheError("the auxiliary loss needs each spectrum's row (Batch.rows)")
        where, target = self.table.lookup(rows)
        if len(where) == 0:
            return None
        where = where.to(tap_map.device)
        prediction = self.head(GradScale.apply(tap_map[where], float(self.recipe.aux_weight)))
        mse = ((prediction - target.to(tap_map.device)) ** 2).mean()
        self.mse_sum += float(mse.detach()) * len(where)
        self.n_seen += len(where)
        return mse

    def step(self, grad_clip: float) -> None:
        if grad_clip and grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.head.parameters(), grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # -- the file beside the checkpoint -----------------------------------------------------------------
    def state(self, epochs_done: int, with_optimizer: bool = True) -> dict[str, Any]:
        from ..common.serialise import plain

        table = self.table
        out = {"kind": "pretrain-aux", "format": AUX_FORMAT, "epochs_done": int(epochs_done),
               "targets": list(table.targets), "tap": self.recipe.aux_tap, "pool": self.recipe.aux_pool,
               "hidden": int(self.recipe.aux_hidden), "weight": float(self.recipe.aux_weight),
               "labels": self.recipe.aux_labels, "seed": int(self.recipe.aux_seed),
               "rows": torch.from_numpy(table.rows.copy()), "label_mean": plain(table.mean),
               "label_std": plain(table.std),
               "state_dict": {k: v.detach().cpu() for k, v in self.head.net.state_dict().items()}}
        if with_optimizer:
            out["optimizer"] = to_cpu(self.optimizer.state_dict())
        return out

    def save(self, path: Path, epochs_done: int, with_optimizer: bool = True) -> None:
        save_torch(path, self.state(epochs_done, with_optimizer))

    def restore(self, path: Path, epochs_done: int) -> None:
        """Continue from the head saved beside a checkpoint after `epochs_done` epochs."""
        saved = load_aux(path)
        if int(saved["epochs_done"]) != epochs_done:
            raise FeatcacheError(f"--resume: {path} holds the auxiliary head after epoch {saved['epochs_done']}, "
                                 f"the checkpoint is after epoch {epochs_done} (written apart: start again with "
                                 "--overwrite)")
        if not np.array_equal(saved["rows"].numpy(), self.table.rows):
            raise FeatcacheError(f"--resume: {path} was trained on other labelled rows")
        self.head.net.load_state_dict(saved["state_dict"])
        self.optimizer.load_state_dict(saved["optimizer"])


def load_aux(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An auxiliary head file (<stem>.aux.pt), read weights-only."""
    path = Path(path)
    if not path.exists():
        raise FeatcacheError(f"{path}: no auxiliary head beside the checkpoint (pretrain --aux-target writes it)")
    state = load_torch(path)
    if not isinstance(state, dict) or state.get("kind") != "pretrain-aux":
        raise FeatcacheError(f"{path}: not an auxiliary head written by featcache pretrain")
    return state


def saved_standardisation(path: Path) -> tuple[np.ndarray, np.ndarray]:
    state = load_aux(path)
    return np.asarray(state["label_mean"], dtype=np.float64), np.asarray(state["label_std"], dtype=np.float64)
