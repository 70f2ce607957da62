"""Out-of-core MLP training (heads.streaming): the block-shuffle sampler, its memory bound, and results that
match the in-memory loop (exactly with one window; within noise with many)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from featcache.cache.reader import open_cache
from featcache.common.errors import FeatcacheError
from featcache.heads.fit import FitSpec, fit_head
from featcache.heads.recipe import TrainRecipe
from featcache.heads.registry import create_head
from featcache.heads.streaming import (
    WINDOWS_HELD,
    epoch_windows,
    parse_memory,
    window_rows,
)
from featcache.heads.training import train_head
from featcache.reports.comparison import compare

from ..conftest import LABELLED_SPLITS
from ..helpers import CKPT, assert_cli_error, learnable_pfs, run_cli

N_TRAIN, N_VAL, WIDTH = 900, 300, 40


class LazyRows:
    """A row-sliceable matrix like the cache's FeatureMatrix: reads count rows, chunks of `chunk` rows."""

    def __init__(self, values: np.ndarray, chunk: int):
        self.values, self.arrays, self.rows_read = values, [SimpleNamespace(chunks=(chunk, values.shape[1]))], 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, rows: slice) -> np.ndarray:
        out = np.array(self.values[rows], dtype=np.float32)
        self.rows_read += len(out)
        return out

    def load(self) -> np.ndarray:
        return self[0:len(self)]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    X = (rng.normal(size=(N_TRAIN + N_VAL, WIDTH)) * rng.uniform(0.5, 3, WIDTH) + 2.0).astype(np.float32)
    y = np.tanh(X[:, :4].sum(axis=1) - 8) + 0.3 * X[:, 5] + 0.05 * rng.normal(size=len(X))
    return X, y


def _train(X, y, chunk=None, **kwargs):
    recipe = TrainRecipe(max_epochs=40, batch_size=64, patience=10, seed=3)
    Xtr, Xv = X[:N_TRAIN], X[N_TRAIN:]
    if chunk is not None:
        Xtr, Xv = LazyRows(Xtr, chunk), LazyRows(Xv, chunk)
    model = create_head("mlp_1", WIDTH, 1, hidden=32, dropout=0.1, seed=3)
    return train_head(model, Xtr, y[:N_TRAIN], Xv, y[N_TRAIN:], recipe, progress=False, **kwargs), Xtr


def test_every_row_once_per_epoch_in_a_seeded_order():
    n, window, chunk = 1000, 256, 64
    plans = []
    for epoch_seed in (0, 0, 1):
        gen = torch.Generator().manual_seed(epoch_seed)
        plan = epoch_windows(n, window, chunk, gen)
        rows = np.concatenate([np.concatenate([np.arange(a, b) for a, b in r])[p] for r, p in plan])
        assert np.array_equal(np.sort(rows), np.arange(n))  # a permutation: each row exactly once
        assert all(sum(b - a for a, b in r) <= window for r, _ in plan)
        assert all(a % chunk == 0 for r, _ in plan for a, _ in r)  # reads are chunk-aligned
        plans.append(rows)
    assert np.array_equal(plans[0], plans[1]) and not np.array_equal(plans[0], plans[2])
    # the windows mix chunks from all over the file, not neighbours
    first = plan[0][0][:, 0]
    assert np.ptp(first) > window


def test_one_window_is_the_in_memory_order():
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    (ranges, perm), = epoch_windows(300, 1024, 64, gen_a)
    assert np.array_equal(perm, torch.randperm(300, generator=gen_b).numpy())
    assert ranges[0, 0] == 0 and ranges[-1, 1] == 300


def test_window_fits_the_budget():
    for budget, width, chunk in ((2**30, 3481, 1024), (2**20, 3481, 1024), (50 * 2**20, 128, 4096)):
        rows = window_rows(budget, width, chunk)
        assert WINDOWS_HELD * 4 * width * rows <= budget
        assert rows % chunk == 0 or rows < chunk
    with pytest.raises(FeatcacheError, match="cannot hold even one row"):
        window_rows(2**20, 10**6, 1024)


def test_streamed_with_one_window_equals_in_memory(data):
    X, y = data
    memory, _ = _train(X, y)
    streamed, lazy = _train(X, y, chunk=128, stream=True, max_memory="1GB")
    assert streamed.rows["sampler"] == "block-shuffle" and memory.rows["sampler"] == "in-memory"
    assert streamed.rows["window_rows"] >= N_TRAIN  # one window: the in-memory permutation
    np.testing.assert_allclose(streamed.x_mean, memory.x_mean, rtol=1e-12)
    a, b = streamed.predict(X[N_TRAIN:]), memory.predict(X[N_TRAIN:])
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    assert [h["val_r2"] for h in streamed.history] == pytest.approx([h["val_r2"] for h in memory.history], abs=1e-6)


def test_streamed_in_many_windows_matches_within_noise(data):
    X, y = data
    memory, _ = _train(X, y)
    streamed, lazy = _train(X, y, chunk=32, stream=True, max_memory=WINDOWS_HELD * 4 * WIDTH * 96)
    assert streamed.rows["window_rows"] == 96 and streamed.rows["chunk_rows"] == 32
    epochs = len(streamed.history)
    # the moments' shift (half a window), one moments pass, then each epoch reads every train row once (the
    # validation rows fit a fifth of the budget: loaded once, from their own matrix)
    assert lazy.rows_read == 48 + N_TRAIN * (1 + epochs)
    assert streamed.best_val_r2 == pytest.approx(memory.best_val_r2, abs=0.03)
    assert streamed.best_val_r2 > 0.5


def test_uncertainty_head_streams(data):
    X, y = data
    recipe = TrainRecipe(max_epochs=5, batch_size=64, seed=0)
    model = create_head("mlp_1_gauss", WIDTH, 1, hidden=16, dropout=0.0, seed=0)
    result = train_head(model, LazyRows(X[:N_TRAIN], 32), y[:N_TRAIN], LazyRows(X[N_TRAIN:], 32), y[N_TRAIN:],
                        recipe, progress=False, stream=True, max_memory=WINDOWS_HELD * 4 * WIDTH * 64)
    sigma = result.predict_sigma(X[N_TRAIN:])
    assert np.all(np.isfinite(sigma)) and np.all(sigma > 0)


def test_streamed_nan_is_refused_naming_the_split(data):
    X, y = data
    bad = X.copy()
    bad[N_TRAIN + 7, 3] = np.nan
    model = create_head("mlp_1", WIDTH, 1, hidden=8, seed=0)
    with pytest.raises(FeatcacheError, match=r"NaN or inf values \(1 of 300 validation rows\)"):
        train_head(model, LazyRows(bad[:N_TRAIN], 32), y[:N_TRAIN], LazyRows(bad[N_TRAIN:], 32), y[N_TRAIN:],
                   TrainRecipe(max_epochs=1), progress=False, stream=True, max_memory="1GB")
    with pytest.raises(FeatcacheError, match="lazy row-sliceable"):
        train_head(model, X[:N_TRAIN], y[:N_TRAIN], stream=True)


def test_parse_memory():
    assert parse_memory("1GB") == 2**30 and parse_memory("512MB") == 512 * 2**20
    assert parse_memory("1.5g") == int(1.5 * 2**30) and parse_memory(2**21) == 2**21
    assert parse_memory("3000000") == 3000000
    assert 0 < parse_memory("10%") < parse_memory("20%")
    for bad in ("lots", "1XB", "-1GB", "10KB"):
        with pytest.raises(FeatcacheError, match="--max-memory"):
            parse_memory(bad)


@pytest.fixture(scope="module")
def flux_cache(tmp_path_factory):
    """input_flux --pool none (512 wide) of 300 learnable spectra in 64-row chunks: train 200 x 2 draws, val 50,
    test 50. Loaded and standardised, train + val take 1.8 MB: over a 1MB budget."""
    root = tmp_path_factory.mktemp("flux")
    data = learnable_pfs(root / "d.h5", n=300)
    splits = [a for name, (lo, hi) in LABELLED_SPLITS.items() for a in ("--data", f"{name}={data}:{lo}:{hi}")]
    run_cli("extract", "--ckpt", CKPT, *splits, "--layer", "input_flux", "--pool", "none", "--mask", "none",
            "--noise-level", "0.1", "--noise-draws", "train=2", "--block-rows", "64", "-q", "--out",
            root / "flux.zarr")
    return root / "flux.zarr"


def test_fit_streams_a_cache_over_the_budget(flux_cache, tmp_path):
    spec = FitSpec(features=[("input_flux", "none")], targets=["log_g"], head="mlp_1",
                   recipe=TrainRecipe(max_epochs=6, seed=0))
    in_memory = fit_head(open_cache(flux_cache), spec, progress=False)
    assert in_memory.predictor.rows == {"sampler": "in-memory"}
    out = tmp_path / "run"
    result = run_cli("fit", "--cache", flux_cache, "--layer", "input_flux", "--pool", "none", "--target", "log_g",
                     "--head", "mlp_1", "--max-epochs", "6", "--max-memory", "1MB", "--out", out)
    assert "streamed from the cache in 64-row windows" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_rows"] == {"sampler": "block-shuffle", "window_rows": 64, "chunk_rows": 64,
                                     "max_memory_bytes": 2**20}
    val = metrics["splits"]["val"]["targets"]["log_g"]["r2"]
    assert val == pytest.approx(in_memory.metrics["splits"]["val"]["targets"]["log_g"]["r2"], abs=0.1)
    assert metrics["splits"]["train"]["targets"]["log_g"]["n"] == 400
    # the streamed head predicts like any other: predict on its test split gives the fit's own predictions
    run_cli("predict", "--head", out, "--cache", flux_cache, "--split", "test", "--out", tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as predicted, np.load(out / "predictions.npz") as fitted:
        key = next(k for k in predicted.files if "log_g" in k and "sigma" not in k)
        np.testing.assert_allclose(predicted[key].ravel(), fitted["test_pred"].ravel(), rtol=1e-6)


def test_compare_streams_instead_of_batching(flux_cache, tmp_path):
    result = compare([f"flux={flux_cache}"], ["log_g"], heads=["mlp_1"], seeds=2, baselines=True, plots=False,
                     recipe=TrainRecipe(max_epochs=2), out=tmp_path / "cmp", show_progress=False,
                     max_memory="1MB", batched=True)
    assert result.fitted == 2
    records = [json.loads(p.read_text()) for p in (tmp_path / "cmp" / "cells").glob("*.json")]
    assert len(records) == 2 and all(r["train_rows"]["sampler"] == "block-shuffle" for r in records)


def test_bad_max_memory_is_a_one_line_error(flux_cache, tmp_path):
    out = tmp_path / "run"
    result = run_cli("fit", "--cache", flux_cache, "--layer", "input_flux", "--pool", "none", "--target", "log_g",
                     "--head", "mlp_1", "--max-memory", "lots", "--out", out, check=False)
    assert_cli_error(result, "--max-memory lots", "1GB")
    assert not out.exists()
