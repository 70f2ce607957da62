"""featcache finetune: the end-to-end path equals extract + fit when frozen, DDP keeps ranks identical,
`--unfreeze last:K` touches only those blocks, --resume continues exactly, bad input is one line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from featcache.cache import open_cache
from featcache.common.errors import FeatcacheError
from featcache.finetune.data import steps_per_epoch
from featcache.finetune.distributed import init_distributed
from featcache.finetune.model import floored_scale
from featcache.finetune.options import parse_unfreeze
from featcache.model.checkpoint import load_encoder
from featcache.spectra.order import epoch_order, shard_range

from ..helpers import CKPT, REPO, assert_cli_error, data_args, run_cli, write_pfs

COMMON = ["--target", "log_g", "--batch-size", "16", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    path = write_pfs(root / "d.h5", n=112, p=512, seed=11)
    return root, [f"train={path}:0:64", f"val={path}:64:88", f"test={path}:88:112"]


def test_frozen_fixed_equals_fit_on_the_cache(data):
    """Same mask, noise, standardisation, head init, batches and dropout: the cache path and the
    end-to-end path give the same predictions (so certainly the same test R2 within its CI)."""
    root, splits = data
    cache, fit_run, ft_run = root / "c.zarr", root / "fit", root / "ft"
    run_cli("extract", "--ckpt", CKPT, *data_args(splits), "--layer", "enc_pre_latent", "--pool", "seg_mean_K8",
            "--out", cache, "-q")
    run_cli("fit", "--cache", cache, "--layer", "enc_pre_latent", "--pool", "seg_mean_K8", "--head", "mlp_1",
            "--max-epochs", "3", "--seed", "3", "--out", fit_run, *COMMON)
    out = run_cli("finetune", "--ckpt", CKPT, *data_args(splits), "--freeze-encoder", "--train-noise", "fixed",
                  "--max-epochs", "3", "--seed", "3", "--out", ft_run, *COMMON).output
    assert "finetune (encoder frozen) mlp_1 on enc_pre_latent/seg_mean_K8 (D=64)" in out
    fit_m = json.loads((fit_run / "metrics.json").read_text())
    ft_m = json.loads((ft_run / "metrics.json").read_text())
    assert ft_m["kind"] == "finetune" and ft_m["chosen"] == fit_m["chosen"]
    assert set(ft_m["splits"]) == set(fit_m["splits"]) == {"train", "val", "test"}
    a, b = fit_m["splits"]["test"]["targets"]["log_g"], ft_m["splits"]["test"]["targets"]["log_g"]
    assert a["r2_ci95"][0] <= b["r2"] <= a["r2_ci95"][1]
    assert b["r2"] == pytest.approx(a["r2"], abs=1e-4)
    pa, pb = np.load(fit_run / "predictions.npz"), np.load(ft_run / "predictions.npz")
    np.testing.assert_array_equal(pa["test_index"], pb["test_index"])
    np.testing.assert_allclose(pb["test_pred"], pa["test_pred"], atol=1e-4)
    assert (ft_run / "history.csv").read_text().startswith("epoch,train_loss,val_loss,val_r2,lr,encoder_lr")
    # a frozen encoder is written back unchanged, so the cache's head tools accept this run
    assert load_encoder(ft_run / "encoder.ckpt").weights_digest() == load_encoder(CKPT).weights_digest()
    np.testing.assert_array_equal(np.load(ft_run / "mask.npy"), open_cache(cache).mask)
    run_cli("predict", "--head", ft_run, "--cache", cache, "--split", "test", "--out", root / "p.npz")
    np.testing.assert_allclose(np.load(root / "p.npz")["pred_log_g"], pb["test_pred"][:, 0], atol=1e-5)
    # --init-head starts from the fit run's head and standardisation (a negligible lr keeps it there)
    run_cli("finetune", "--ckpt", CKPT, *data_args(splits), "--freeze-encoder", "--train-noise", "fixed",
            "--init-head", fit_run, "--max-epochs", "1", "--lr", "1e-12", "--out", root / "init", *COMMON)
    np.testing.assert_allclose(np.load(root / "init" / "predictions.npz")["test_pred"], pa["test_pred"], atol=1e-5)


@pytest.mark.parametrize("batchnorm", ["eval", "train"])
def test_unfreeze_last_2_changes_only_those_blocks(data, batchnorm):
    root, splits = data
    out = root / f"last2-{batchnorm}"
    run_cli("finetune", "--ckpt", CKPT, *data_args(splits), "--unfreeze", "last:2", "--encoder-lr", "1e-2",
            "--batchnorm", batchnorm, "--max-epochs", "1", "--test-split", "", "--out", out, *COMMON)
    before = load_encoder(CKPT).model.state_dict()
    after = load_encoder(out / "encoder.ckpt").model.state_dict()  # what `featcache extract --ckpt` loads
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("encoders.3.", "encoders.4.")) for k in changed), sorted(changed)
    for i in (3, 4):
        assert f"encoders.{i}.conv.weight" in changed and f"encoders.{i}.bn.weight" in changed
        # --batchnorm eval keeps the pretrained running statistics; train updates them
        assert (f"encoders.{i}.bn.running_mean" in changed) == (batchnorm == "train")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["unfrozen_blocks"] == ["encoders.3", "encoders.4"] and "test" not in metrics["splits"]


def test_scale_floor_and_init_head_rescaling(data):
    """Floored scales follow the hand rule; with --init-head the first layer is rescaled so the starting
    function is the fit run's exactly (a negligible lr keeps the run there)."""
    np.testing.assert_allclose(floored_scale(np.array([1e-6, 0.5, 1.0, 2.0, 0.0]), 0.1), [0.075, 0.5, 1, 2, 0.075])
    np.testing.assert_array_equal(floored_scale(np.array([1e-6, 1.0]), 0.0), [1e-6, 1.0])
    # features that barely vary (std 2e-7 around 0.01): the floor follows their size, 0.1 x 0.1 x 0.01
    np.testing.assert_allclose(floored_scale(np.array([1e-7, 2e-7, 3e-7]), 0.1, np.full(3, 0.01)), [1e-4] * 3)
    # the demo encoder's regime (spread larger than a tenth of the size): the median std rules, as without mean
    spread = np.array([1e-6, 0.05, 0.07, 0.2])
    np.testing.assert_array_equal(floored_scale(spread, 0.1, np.full(4, 0.3)), floored_scale(spread, 0.1))
    root, splits = data
    cache, fit_run = root / "floor.zarr", root / "floor-fit"
    run_cli("extract", "--ckpt", CKPT, *data_args(splits), "--layer", "enc_pre_latent", "--pool", "seg_mean_K8",
            "--out", cache, "-q")
    run_cli("fit", "--cache", cache, "--layer", "enc_pre_latent", "--pool", "seg_mean_K8", "--head", "mlp_1",
            "--max-epochs", "2", "--out", fit_run, *COMMON)
    run_cli("finetune", "--ckpt", CKPT, *data_args(splits), "--unfreeze", "all", "--train-noise", "fixed",
            "--init-head", fit_run, "--scale-floor", "0.9", "--max-epochs", "1", "--lr", "1e-12",
            "--encoder-lr", "1e-12", "--out", root / "floor-ft", *COMMON)
    fit_state = torch.load(fit_run / "head.pt", weights_only=True)["state"]
    fit_scale, fit_mean = fit_state["x_scale"].double().numpy(), fit_state["x_mean"].double().numpy()
    ft_scale = torch.load(root / "floor-ft" / "last.pt", weights_only=True)["model"]["x_scale"].double().numpy()
    assert np.count_nonzero(ft_scale > fit_scale * 1.001) > 10  # many columns raised to the floor
    np.testing.assert_allclose(ft_scale, floored_scale(fit_scale, 0.9, fit_mean), rtol=1e-6)
    np.testing.assert_allclose(np.load(root / "floor-ft" / "predictions.npz")["test_pred"],
                               np.load(fit_run / "predictions.npz")["test_pred"], atol=1e-4)


def test_resume_continues_to_the_same_result(data):
    root, splits = data
    args = ["finetune", "--ckpt", CKPT, *data_args(splits), "--unfreeze", "last:1", "--train-noise", "fresh",
            "--block-rows", "24", *COMMON]
    run_cli(*args, "--max-epochs", "2", "--out", root / "straight")
    run_cli(*args, "--max-epochs", "1", "--out", root / "resumed")
    assert_cli_error(run_cli(*args, "--max-epochs", "2", "--out", root / "resumed", check=False), "--resume")
    run_cli(*args, "--max-epochs", "2", "--out", root / "resumed", "--resume")
    a, b = np.load(root / "straight" / "predictions.npz"), np.load(root / "resumed" / "predictions.npz")
    np.testing.assert_array_equal(a["test_pred"], b["test_pred"])
    state = torch.load(root / "resumed" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    changed = run_cli(*args, "--max-epochs", "3", "--out", root / "resumed", "--resume", "--train-noise", "fixed",
                      check=False)
    assert_cli_error(changed, "the options differ", "noise")


def test_two_process_torchrun_keeps_ranks_identical(data, tmp_path):
    _, splits = data
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "featcache",
           "finetune", "--ckpt", str(CKPT), *data_args(splits), "--mask", "none", "--max-epochs", "2",
           "--check-sync", "--out", str(out), *COMMON]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # every optimiser step was checked, and the final weights agree bit for bit
    steps = 2 * steps_per_epoch(64, 2, 16)
    assert f"weights identical on all 2 ranks after each of {steps} steps" in proc.stderr, proc.stderr[-3000:]
    digests = re.findall(r"rank [01]/2 final weights sha256 ([0-9a-f]{64})", proc.stderr)
    assert len(digests) == 2 and digests[0] == digests[1], proc.stderr[-3000:]
    # one summary, one metrics file, written by rank 0, over the whole of every split
    assert proc.stdout.count("finetune (training encoders.0-4, 2 processes)") == 1, proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["written_by_rank"] == 0
    assert [metrics["splits"][s]["n"] for s in ("train", "val", "test")] == [64, 24, 24]
    np.testing.assert_array_equal(np.load(out / "predictions.npz")["val_index"], np.arange(64, 88))
    assert sorted(p.name for p in out.iterdir()) == ["binned.csv", "config.yaml", "encoder.ckpt", "encoder.yaml",
                                                     "head.pt", "history.csv", "last.pt", "mask.npy",
                                                     "metrics.json", "predictions.npz"]


@pytest.mark.parametrize("args,fragments", [
    (["--layer", "enc_9"], ["--layer: unknown layer 'enc_9'", "enc_pre_latent"]),
    (["--layer", "input_flux"], ["no encoder to fine-tune"]),
    (["--pool", "seg_mean_K99"], ["K=99 segments exceed the map length"]),
    (["--pool", "median"], ["unknown pooling 'median'", "seg_mean_K{K}"]),
    (["--target", "logg"], ["unknown label 'logg'", "log_g"]),
    (["--unfreeze", "last:9"], ["--unfreeze last:9", "uses 5 encoder blocks", "K must be 1..5"]),
    (["--unfreeze", "some"], ["--unfreeze some: expected all or last:K"]),
    (["--unfreeze", "all", "--freeze-encoder"], ["--freeze-encoder or --unfreeze, not both"]),
    (["--head", "ridge"], ["finetune trains by gradient descent", "mlp_1"]),
    (["--scale-floor", "1.5"], ["--scale-floor must be in [0, 1), got 1.5"]),
    (["--val-split", "holdout"], ["--val-split holdout: no such --data split"]),
])
def test_bad_requests_are_one_line(data, tmp_path, args, fragments):
    _, splits = data
    if "--target" not in args:
        args = [*args, "--target", "log_g"]
    result = run_cli("finetune", "--ckpt", CKPT, *data_args(splits), "--mask", "none", *args, "--out",
                     tmp_path / "r", check=False)
    assert_cli_error(result, *fragments)
    assert not (tmp_path / "r").exists()


def test_helpers(monkeypatch):
    assert parse_unfreeze("last:2", 4) == [3, 4] and parse_unfreeze("all", 4) == [0, 1, 2, 3, 4]
    assert parse_unfreeze("none", 4) == []
    assert [shard_range(11, r, 3) for r in range(3)] == [(0, 3), (3, 7), (7, 11)]
    # one block: fit's shuffle (the e-th randperm of a generator seeded with the seed)
    gen = torch.Generator().manual_seed(5)
    perms = [torch.randperm(40, generator=gen).numpy() for _ in range(3)]
    np.testing.assert_array_equal(epoch_order(40, 64, 5, 3)[0][2], perms[2])
    blocks = epoch_order(50, 16, 5, 2)
    assert sorted((s, e) for s, e, _ in blocks) == [(0, 16), (16, 32), (32, 48), (48, 50)]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    with pytest.raises(FeatcacheError, match="export MASTER_ADDR and MASTER_PORT"):
        init_distributed("cpu")


def test_resume_refuses_another_file_at_the_same_path(tmp_path):
    """--resume compares each split's content identity, not the --data strings: a file replaced in place is
    named (it would otherwise be trained on silently)."""
    path = write_pfs(tmp_path / "d.h5", n=60, p=512, seed=12)
    splits = [f"train={path}:0:40", f"val={path}:40:60"]
    args = ["finetune", "--ckpt", CKPT, *data_args(splits), "--freeze-encoder", "--test-split", "", *COMMON,
            "--out", tmp_path / "run"]
    run_cli(*args, "--max-epochs", "1")
    write_pfs(path, n=60, p=512, seed=13)  # same path, same shape, other spectra
    result = run_cli(*args, "--max-epochs", "2", "--resume", check=False)
    assert_cli_error(result, "--resume: the options differ", "split 'train': file content changed")


def test_supervised_baseline_trains_a_fresh_encoder_on_the_labelled_rows_only(data, tmp_path):
    """--random-init --train-size N --subset-seed S: the train split's spectra are the N that pretrain --aux-labels N
    --aux-seed S labels (and compare --train-sizes N --subset-seed S trains on); the other train rows' labels are
    never read (NaN there changes nothing); the encoder starts from a fresh initialisation of --ckpt's shape."""
    import h5py
    import pandas as pd

    from featcache.common.subsets import nested_subset
    from featcache.pretrain import PretrainRecipe, labelled_rows

    root, splits = data
    source = splits[0].split("=", 1)[1].split(":")[0]
    rows = nested_subset(64, 20, 4)
    assert np.array_equal(labelled_rows(64, PretrainRecipe(aux_targets=("log_g",), aux_labels=20, aux_seed=4)), rows)
    poisoned = tmp_path / "poisoned.h5"
    with h5py.File(source) as src, h5py.File(poisoned, "w") as dst:
        for key in ("spectrumdataset/wave", "dataset/arrays/flux/value", "dataset/arrays/error/value"):
            dst[key] = src[key][()]
    frame = pd.read_hdf(source, "dataset/params")
    frame.loc[np.setdiff1d(np.arange(64), rows), "log_g"] = np.nan  # unlabelled train rows only
    frame.to_hdf(poisoned, key="dataset/params", format="table", mode="a")
    args = ["finetune", "--ckpt", CKPT, "--random-init", "--init-seed", "1", "--train-size", "20", "--subset-seed",
            "4", "--unfreeze", "all", "--batchnorm", "train", "--max-epochs", "2", *COMMON]
    clean = run_cli(*args, *data_args(splits), "--out", tmp_path / "clean")
    assert "training encoders.0-4" in clean.output
    run_cli(*args, *data_args([f"train={poisoned}:0:64", f"val={poisoned}:64:88", f"test={poisoned}:88:112"]),
            "--out", tmp_path / "poisoned")
    a, b = np.load(tmp_path / "clean" / "predictions.npz"), np.load(tmp_path / "poisoned" / "predictions.npz")
    np.testing.assert_array_equal(a["test_pred"], b["test_pred"])
    metrics = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    assert metrics["splits"]["train"]["n"] == 20 and metrics["random_init_seed"] == 1
    assert metrics["train_subset"]["train_size"] == 20 and metrics["train_subset"]["subset_seed"] == 4
    fresh = load_encoder(CKPT)
    start = torch.load(tmp_path / "clean" / "last.pt", weights_only=True)["settings"]
    assert start["random_init"] == 1 and start["train_size"] == 20 and start["encoder_sha256"] != \
        fresh.weights_digest()
    refused = run_cli("finetune", "--ckpt", CKPT, "--random-init", "--freeze-encoder", *data_args(splits), *COMMON,
                      "--out", tmp_path / "x", check=False)
    assert_cli_error(refused, "--random-init trains the encoder")
    too_many = run_cli("finetune", "--ckpt", CKPT, "--train-size", "65", *data_args(splits), *COMMON,
                       "--out", tmp_path / "y", check=False)
    assert_cli_error(too_many, "--train-size 65: the train split has 64 spectra")


def _batchnorms(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_untrained_batchnorm_statistics_are_set_from_the_train_split_first():
    """A random init's running statistics (mean 0, variance 1) match no data: before the standardisation
    they become the cumulative average of the train batches' statistics (a hand computation on the first
    BatchNorm layer, whose input they do not change); trained statistics are left alone."""
    from types import SimpleNamespace

    from featcache.finetune.model import FinetuneModel
    from featcache.finetune.passes import calibrate_batchnorm

    encoder = load_encoder(CKPT).model
    for m in _batchnorms(encoder):
        m.reset_running_stats()
    n_blocks = len(encoder.encoders)
    model = FinetuneModel(encoder, "enc_pre_latent", torch.nn.Identity(), "forward", torch.nn.Identity(),
                          np.zeros(1), np.ones(1), list(range(n_blocks)), batchnorm="train")
    x = torch.randn(48, 2, 512) * torch.tensor([0.3, 0.05])[None, :, None] + torch.tensor([0.5, 0.1])[None, :, None]
    ctx = SimpleNamespace(opts=SimpleNamespace(recipe=SimpleNamespace(batch_size=16)), device=torch.device("cpu"),
                          eval_stream=lambda split: iter([(np.arange(48), x)]))
    first = _batchnorms(encoder.encoders)[0]
    seen = []
    model.eval()
    hook = first.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    assert calibrate_batchnorm(model, None, ctx) == len(_batchnorms(encoder.encoders))  # not the decoder's
    hook.remove()
    assert len(seen) == 3  # three batches of 16
    means = torch.stack([b.mean(dim=(0, 2)) for b in seen]).mean(0)
    variances = torch.stack([b.var(dim=(0, 2), unbiased=True) for b in seen]).mean(0)
    torch.testing.assert_close(first.running_mean, means, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.running_var, variances, rtol=1e-5, atol=1e-6)
    assert first.momentum == 0.1 and not model.training  # both restored
    trained = load_encoder(CKPT).model
    before = [m.running_mean.clone() for m in _batchnorms(trained)]
    model = FinetuneModel(trained, "enc_pre_latent", torch.nn.Identity(), "forward", torch.nn.Identity(),
                          np.zeros(1), np.ones(1), list(range(n_blocks)), batchnorm="train")
    assert calibrate_batchnorm(model, None, ctx) == 0
    for m, b in zip(_batchnorms(trained), before, strict=True):
        torch.testing.assert_close(m.running_mean, b)
