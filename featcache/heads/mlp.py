"""The torch heads' common entry (`TorchHead`: fitted by the heads' one training loop, heads.loop) and the plain
MLPs `linear`, `mlp_1`, `mlp_2` (Linear [-> GELU -> Dropout]* -> Linear), which also train many at a time as
stacked weights. The modules are plain nn.Sequential so their state dicts have stable, short keys
('0.weight', '3.bias', ...)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..common.device import resolve_device
from .dropout import Dropout
from .entry import FitRows, HeadEntry, register
from .training import TrainResult, train_head

# a torch head's per-step cost beyond its arithmetic and per hidden unit and row (heads.entry.estimated_flop):
# see reports.cells for how they were measured
STEP_OVERHEAD_FLOP = 3.5e7
UNIT_FLOP = 500.0


class TorchHead(HeadEntry):
    """A head trained by gradient descent on standardised features and targets (heads.training.train_head).
    The loss and the early-stopping score are the module's (heads.loop.objective_of): MSE and validation R2
    unless the module brings its own (heads.gaussian)."""

    trainable = True
    finetune = True
    blocks = 1  # hidden blocks, for the cost estimate

    def fit(self, rows: FitRows) -> tuple[TrainResult, list[dict[str, Any]]]:
        spec = rows.spec
        model = self.create(rows.in_dim, len(rows.targets), spec.hidden, spec.dropout, seed=spec.recipe.seed,
                            **rows.build_options)
        trained = train_head(model, rows.x["train"], rows.y["train"], rows.x.get("val"), rows.y.get("val"),
                             recipe=spec.recipe, device=resolve_device(spec.device), progress=rows.progress,
                             target_names=rows.targets, desc=f"fit {self.name}", max_memory=spec.max_memory)
        return trained, [dict(h) for h in trained.history]

    def chosen(self, predictor: TrainResult) -> dict[str, Any]:
        return {"best_epoch": predictor.best_epoch, "epochs_run": len(predictor.history)}

    def from_state(self, saved: dict[str, Any]) -> TrainResult:
        model = self.create(saved["in_dim"], len(saved["targets"]), saved["hidden"], saved["dropout"],
                            **dict(saved.get("head_options") or {}))
        return TrainResult.from_state(model, saved["state"])

    def estimated_flop(self, n_train: int, n_eval: int, width: int, spec: Any, batched: bool = False) -> float:
        """The first layer's forward and weight gradient, the hidden layers, the elementwise work per unit, and
        the per-step overhead (paid once per step by a whole batched pass) at the epoch budget."""
        recipe, hidden, d = spec.recipe, int(spec.hidden or 256), max(1, int(width))
        blocks = self.blocks
        per_row = 4.0 * d * hidden + 6.0 * hidden * (hidden * (blocks - 1) + 1) + UNIT_FLOP * hidden * blocks
        steps = -(-n_train // int(recipe.batch_size))
        overhead = 0.0 if batched else STEP_OVERHEAD_FLOP
        return recipe.max_epochs * (n_train * per_row + steps * overhead + 2.0 * n_eval * d * hidden)


def mlp(in_dim: int, out_dim: int, hidden: int, dropout: float, blocks: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(blocks):
        layers += [nn.Linear(width, hidden), nn.GELU(), Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class MLPHead(TorchHead):
    """A plain MLP with `depth` hidden blocks; these train many at a time (heads.loop.StackedMLPs)."""

    batchable = True
    depth = 1

    def build(self, in_dim: int, out_dim: int, hidden: int, dropout: float, **kwargs: Any) -> nn.Sequential:
        return mlp(in_dim, out_dim, hidden, dropout, blocks=self.depth)


class Linear(MLPHead):
    name, description, depth = "linear", "Linear(D, T) trained with the MLP recipe", 0


class MLP1(MLPHead):
    name, description, depth = "mlp_1", "Linear(D, h) -> GELU -> Dropout -> Linear(h, T)", 1


class MLP2(MLPHead):
    name, depth, blocks = "mlp_2", 2, 2
    description = "two hidden blocks of width h (Linear -> GELU -> Dropout), then Linear(h, T)"


for _entry in (Linear(), MLP1(), MLP2()):
    register(_entry)
