"""The heads' one training loop (heads.loop): a head alone is the group of one, so batched equals alone; each
head's plateau rule is torch's; the heads' option schemas are what the command line offers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featcache.heads.batched import HeadJob, train_heads
from featcache.heads.loop import Plateau
from featcache.heads.recipe import TrainRecipe
from featcache.heads.registry import create_head, head_info, head_option_schema, list_heads
from featcache.heads.training import train_head


def test_batched_and_single_fits_give_the_same_predictions_after_three_epochs():
    """Three mlp_1 heads of two feature widths, other seeds and rates, trained in one stacked pass and alone."""
    rng = np.random.default_rng(5)
    feats = {d: rng.normal(size=(600, d)).astype(np.float32) for d in (10, 24)}
    y = feats[10][:, 0] + np.sin(feats[24][:, 1]) + 0.1 * rng.normal(size=600)
    settings = [(10, 0, 1e-3), (10, 1, 3e-3), (24, 2, 1e-3)]
    jobs, alone = [], []
    for d, seed, lr in settings:
        recipe = TrainRecipe(max_epochs=3, batch_size=64, seed=seed, lr=lr, patience=10)
        args = (feats[d][:500], y[:500], feats[d][500:], y[500:], recipe)
        jobs.append(HeadJob(create_head("mlp_1", d, 1, hidden=32, seed=seed), *args, data_key=d))
        alone.append(train_head(create_head("mlp_1", d, 1, hidden=32, seed=seed), *args, progress=False))
    for batched, single, (d, _, _) in zip(train_heads(jobs), alone, settings, strict=True):
        a, b = batched.predict(feats[d][500:]), single.predict(feats[d][500:])
        assert len(batched.history) == len(single.history) == 3
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max())


@pytest.mark.parametrize("metrics", [[1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85],
                                     [3.0, float("nan"), 2.0, 2.0, 1.9999, 2.0, 2.0, 2.0, 2.0, 1.0]])
@pytest.mark.parametrize("patience", [0, 2])
def test_plateau_rule_is_torchs(metrics, patience):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=patience)
    ours = Plateau(0.1, 0.5, patience)
    for metric in metrics:
        theirs.step(metric)
        ours.step(metric)
        assert ours.lr == opt.param_groups[0]["lr"]


def test_every_head_carries_its_behaviour():
    for name in list_heads():
        entry = head_info(name)
        assert entry.name == name and entry.description
        assert not entry.batchable or entry.trainable  # only torch heads stack
        assert entry.finetune <= entry.trainable


def test_cli_head_options_are_the_heads_schemas():
    """fit's and compare's head options are each head's declared options: flag, default, choices."""
    from featcache_cli.compare import command as compare_command
    from featcache_cli.fit import command as fit_command

    for command in (fit_command, compare_command):
        params = {p.name: p for p in command.params}
        for option in head_option_schema():
            param = params[option.dest or option.name]
            assert option.flag in param.opts
            assert param.default == option.default
            if isinstance(option.click_type, tuple):
                assert tuple(param.type.choices) == option.click_type
