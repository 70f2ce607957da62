"""Heads trained in one pass of stacked weights (heads.batched) give what each gives alone (train_head)."""

from __future__ import annotations

import numpy as np
import pytest

from featcache.common.errors import FeatcacheError
from featcache.heads.batched import HeadJob, train_heads
from featcache.heads.recipe import TrainRecipe
from featcache.heads.registry import create_head
from featcache.heads.training import train_head
from featcache.reports.comparison import compare

N_TRAIN, N_VAL = 700, 200


@pytest.fixture(scope="module")
def features() -> tuple[dict[int, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    feats = {d: rng.normal(size=(N_TRAIN + N_VAL, d)).astype(np.float32) for d in (12, 20)}
    y = feats[12][:, :3].sum(axis=1) + 0.5 * np.sin(feats[20][:, 0]) + 0.1 * rng.normal(size=N_TRAIN + N_VAL)
    return feats, y


def _pairs(features, settings, with_val=True, threads=None):
    """(batched result, solo result, width) per setting (head, D, seed, lr, weight decay, hidden, dropout)."""
    feats, y = features
    jobs, solo = [], []
    for head, d, seed, lr, wd, hidden, dropout in settings:
        X = feats[d]
        recipe = TrainRecipe(max_epochs=6, seed=seed, lr=lr, weight_decay=wd, batch_size=64, patience=2,
                             plateau_patience=0)
        val = (X[N_TRAIN:], y[N_TRAIN:]) if with_val else (None, None)
        jobs.append(HeadJob(create_head(head, d, 1, hidden=hidden, dropout=dropout, seed=seed), X[:N_TRAIN],
                            y[:N_TRAIN], *val, recipe, data_key=d))
        solo.append(train_head(create_head(head, d, 1, hidden=hidden, dropout=dropout, seed=seed), X[:N_TRAIN],
                               y[:N_TRAIN], *val, recipe, progress=False))
    return list(zip(train_heads(jobs, num_threads=threads), solo, [s[1] for s in settings], strict=True))


def _assert_same(pairs, features):
    feats, _ = features
    for batched, alone, d in pairs:
        a, b = batched.predict(feats[d][N_TRAIN:]), alone.predict(feats[d][N_TRAIN:])
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
        assert batched.best_epoch == alone.best_epoch and len(batched.history) == len(alone.history)
        assert [h["lr"] for h in batched.history] == [h["lr"] for h in alone.history]
        np.testing.assert_allclose([h["val_r2"] for h in batched.history], [h["val_r2"] for h in alone.history],
                                   rtol=1e-5, atol=1e-6)
        assert batched.best_val_r2 == pytest.approx(alone.best_val_r2, rel=1e-5, abs=1e-6) \
            if alone.best_val_r2 is not None else batched.best_val_r2 is None


@pytest.mark.parametrize("threads", [1, 2], ids=["masks-in-turn", "masks-in-threads"])
def test_mixed_features_widths_seeds_and_rates_train_as_alone(features, threads):
    """Other feature widths and hidden widths (zero-padded), seeds (shuffle, init, dropout), learning rates
    and weight decays, dropout on and off; the early stops and plateau halvings fall where they do alone.
    With two torch threads the heads' masks are drawn side by side, each from its own stream."""
    settings = [("mlp_1", 12, 0, 1e-3, 1e-4, 16, 0.1), ("mlp_1", 12, 1, 1e-3, 1e-4, 16, 0.1),
                ("mlp_1", 20, 0, 3e-3, 0.0, 32, 0.0), ("mlp_1", 20, 2, 1e-2, 1e-2, 8, 0.2)]
    pairs = _pairs(features, settings, threads=threads)
    _assert_same(pairs, features)
    epochs = {len(alone.history) for _, alone, _ in pairs}
    assert len(epochs) > 1  # some heads stopped early, others ran on: the stack shrank mid-training
    assert any(len({h["lr"] for h in alone.history}) > 1 for _, alone, _ in pairs)  # a plateau halved an lr


def test_linear_and_two_block_heads_and_no_validation(features):
    _assert_same(_pairs(features, [("mlp_2", 12, 0, 1e-3, 1e-4, 16, 0.1), ("mlp_2", 20, 1, 3e-3, 1e-4, 24, 0.3)]),
                 features)
    _assert_same(_pairs(features, [("linear", 12, 0, 1e-2, 1e-4, 1, 0.0), ("linear", 20, 1, 1e-2, 0.0, 1, 0.0)]),
                 features)
    no_val = _pairs(features, [("mlp_1", 12, 0, 1e-3, 1e-4, 16, 0.1), ("mlp_1", 20, 1, 1e-3, 1e-4, 8, 0.1)],
                    with_val=False)
    _assert_same(no_val, features)
    assert all(b.best_epoch == 6 and b.best_val_r2 is None for b, _, _ in no_val)  # the last epoch is kept


def test_heads_that_cannot_share_a_pass_are_refused(features):
    feats, y = features
    jobs = [HeadJob(create_head("mlp_1", 12, 1, seed=0), feats[12][:N_TRAIN], y[:N_TRAIN],
                    recipe=TrainRecipe(batch_size=bs, max_epochs=1)) for bs in (32, 64)]
    with pytest.raises(FeatcacheError, match="cannot train in one pass"):
        train_heads(jobs)
    with pytest.raises(FeatcacheError, match="batched training takes"):
        train_heads([HeadJob(create_head("mlp_1", 12, 1, seed=0)[:2], feats[12][:N_TRAIN], y[:N_TRAIN])])


def test_compare_batched_and_one_by_one_fill_the_same_cells(labelled_caches, tmp_path):
    """compare --batched (the default) against --no-batched: the same keys, epochs and R2 up to float32 order."""
    kwargs = dict(heads=["mlp_1"], layers=["enc_last"], seeds=2, baselines=False,
                  recipe=TrainRecipe(max_epochs=4, patience=2), plots=False, show_progress=False)
    batched = compare(labelled_caches, ["log_g"], out=tmp_path / "batched", **kwargs)
    alone = compare(labelled_caches, ["log_g"], out=tmp_path / "alone", batched=False, **kwargs)
    assert batched.fitted == alone.fitted == 2 * 2 * 2  # caches x pools x seeds
    a, b = batched.table, alone.table
    assert a["keys"].tolist() == b["keys"].tolist() and a["chosen_epochs"].tolist() == b["chosen_epochs"].tolist()
    np.testing.assert_allclose(a["test_r2"], b["test_r2"], rtol=1e-5)
    np.testing.assert_allclose(a["val_r2"], b["val_r2"], rtol=1e-5)


def test_a_pass_reports_its_heads_as_they_finish():
    """compare's progress counts the fits of a batched pass as each finishes training (on_finished), every head
    once, whether it stopped early or ran to max_epochs."""
    rng = np.random.default_rng(0)
    X, Xv = rng.standard_normal((120, 8)).astype(np.float32), rng.standard_normal((40, 8)).astype(np.float32)
    y, yv = X[:, 0] + 0.1 * rng.standard_normal(120), Xv[:, 0]
    jobs = [HeadJob(create_head("mlp_1", 8, 1, hidden=16, seed=s), X, y, Xv, yv,
                    TrainRecipe(max_epochs=6, patience=2, seed=s, batch_size=32), ["y"], data_key="f")
            for s in range(4)]
    told: list[int] = []
    results = train_heads(jobs, on_finished=told.append)
    assert sum(told) == len(jobs) and len(results) == len(jobs) and all(k >= 1 for k in told)
