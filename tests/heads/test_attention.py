"""The attn head: attention weights are a softmax over positions, the head without its position embedding
ignores the order of positions, it fits and predicts on --pool none maps, and refuses pooled features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featcache.cache import open_cache
from featcache.common.errors import FeatcacheError
from featcache.heads import create_head
from featcache.heads.attention import AttentionHead
from featcache.heads.fit import FitSpec, fit_head
from featcache.heads.predict import predict_split
from featcache.heads.recipe import TrainRecipe
from featcache.heads.runs import load_head
from featcache.reports.comparison import compare

from ..conftest import LABELLED_SPLITS
from ..helpers import CKPT, assert_cli_error, learnable_pfs, run_cli


@pytest.fixture(scope="module")
def map_cache(tmp_path_factory):
    """enc_last of the reference checkpoint with its flattened map (--pool none), a pooled copy and the maps
    (--keep-maps)."""
    root = tmp_path_factory.mktemp("maps")
    data = learnable_pfs(root / "d.h5", n=300)
    splits = [a for name, (lo, hi) in LABELLED_SPLITS.items() for a in ("--data", f"{name}={data}:{lo}:{hi}")]
    run_cli("extract", "--ckpt", CKPT, *splits, "--layer", "enc_last", "--pool", "none,global_mean", "--mask",
            "none", "--noise-level", "0.1", "--keep-maps", "-q", "--out", root / "maps.zarr")
    return root / "maps.zarr"


def test_attention_weights_sum_to_one_and_order_matters_only_through_the_position_embedding():
    torch.manual_seed(0)
    channels, length = 5, 11
    x = torch.randn(7, channels * length)
    head = AttentionHead(channels, length, out_dim=2, hidden=16, dropout=0.0, heads=3).eval()
    with torch.no_grad():
        head.pool.position.normal_()  # a trained-looking embedding (it starts at zero)
        weights = head.pool.weights(head.maps(x))
    assert weights.shape == (7, 3, length) and (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(7, 3))

    perm = torch.randperm(length)
    shuffled = x.reshape(7, channels, length)[:, :, perm].reshape(7, -1)
    blind = AttentionHead(channels, length, out_dim=2, hidden=16, dropout=0.0, heads=3, position=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(blind(shuffled), blind(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(head(shuffled), head(x), atol=1e-4)  # with the embedding, order matters


def test_attn_fit_predict_and_refusals(map_cache, tmp_path, one_torch_thread):
    cache = open_cache(map_cache)
    info = cache.feature_info("train", "enc_last", "none")
    out = tmp_path / "run"
    run_cli("fit", "--cache", map_cache, "--layer", "enc_last", "--pool", "none", "--target", "log_g", "--head",
            "attn", "--attn-heads", "2", "--max-epochs", "4", "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["in_dim"] == info["C"] * info["L"]
    assert np.isfinite(metrics["splits"]["test"]["targets"]["log_g"]["r2"])
    head = torch.load(out / "head.pt", weights_only=True)
    assert head["head_options"] == {"channels": info["C"], "length": info["L"], "heads": 2}
    saved = np.load(out / "predictions.npz")
    again = predict_split(out, cache, "test")
    np.testing.assert_allclose(again["pred_log_g"], saved["test_pred"][:, 0], rtol=1e-6, atol=1e-9)

    # the maps kept with --keep-maps are the same numbers: the same fit, the same predictions
    kept = fit_head(cache, FitSpec(features=[("enc_last", "maps")], targets=["log_g"], head="attn",
                                   options={"attn_heads": 2},
                                   recipe=TrainRecipe(max_epochs=4)), progress=False)
    np.testing.assert_array_equal(kept.predictions["test"]["pred"], saved["test_pred"])
    run_cli("fit", "--cache", map_cache, "--layer", "enc_last", "--pool", "maps", "--target", "log_g", "--head",
            "attn", "--attn-heads", "2", "--max-epochs", "4", "--out", tmp_path / "maps-run")
    np.testing.assert_array_equal(predict_split(tmp_path / "maps-run", cache, "test")["pred_log_g"],
                                  again["pred_log_g"])

    bad = run_cli("fit", "--cache", map_cache, "--layer", "enc_last", "--pool", "global_mean", "--target", "log_g",
                  "--head", "attn", "--out", tmp_path / "bad", check=False)
    assert_cli_error(bad, "head attn pools over positions", "enc_last/global_mean is already pooled", "--pool none")
    with pytest.raises(FeatcacheError, match="one feature map"):
        fit_head(cache, FitSpec(features=[("enc_last", "none"), ("enc_last", "global_mean")], targets=["log_g"],
                                head="attn"), progress=False)
    with pytest.raises(FeatcacheError, match="needs the map shape"):
        create_head("attn", 12, 1)


def test_compare_fits_attn_on_map_cells_only(map_cache, tmp_path, one_torch_thread):
    result = compare({"maps": map_cache}, ["log_g"], heads=["ridge", "attn"], baselines=False, out=tmp_path / "c",
                     show_progress=False, plots=False, recipe=TrainRecipe(max_epochs=3))
    table = result.table
    assert set(zip(table["pool"], table["head"], strict=True)) == {("none", "ridge"), ("global_mean", "ridge"),
                                                                   ("none", "attn")}
    (line,) = [x for x in result.markdown.splitlines() if x.startswith("| maps | enc_last | global_mean")]
    assert line.rstrip().endswith("| — | — |")  # no attn cell on pooled features


def test_finetune_pools_the_live_map(tmp_path, one_torch_thread):
    refused = run_cli("finetune", "--ckpt", CKPT, "--data", "train=x.h5", "--layer", "enc_last", "--pool",
                      "global_mean", "--target", "log_g", "--head", "attn", "--out", tmp_path / "ft", check=False)
    assert_cli_error(refused, "--head attn pools the live map", "--pool none")
    path = learnable_pfs(tmp_path / "d.h5", n=96, p=512)
    out = tmp_path / "run"
    run_cli("finetune", "--ckpt", CKPT, "--data", f"train={path}:0:64", "--data", f"val={path}:64:80", "--data",
            f"test={path}:80:96", "--layer", "enc_last", "--pool", "none", "--head", "attn", "--target", "log_g",
            "--max-epochs", "2", "--batch-size", "16", "-q", "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "finetune" and metrics["head"] == "attn"
    assert np.isfinite(metrics["splits"]["test"]["targets"]["log_g"]["r2"])
    head = torch.load(out / "head.pt", weights_only=True)
    assert head["head_options"]["channels"] * head["head_options"]["length"] == metrics["in_dim"]
    assert head["hidden"] == 256  # the mlp's width, not the attention scores'
    loaded = load_head(out)
    assert isinstance(loaded.predictor.model, AttentionHead)


def test_attn_init_head_refuses_a_scale_floor_it_cannot_fold():
    from featcache.finetune.model import head_shape, rescale_first_layer

    head = AttentionHead(3, 4, out_dim=1, hidden=32, dropout=0.2)
    assert head_shape(head, 256, 0.1) == (32, 0.2)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    rescale_first_layer(head, np.ones(12), np.ones(12))  # nothing to fold: unchanged
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in before.items())
    with pytest.raises(FeatcacheError, match="--scale-floor 0"):
        rescale_first_layer(head, np.ones(12), np.full(12, 2.0))
