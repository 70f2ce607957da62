"""featcache pretrain: the original losses, the checkpoint layout, resume, and clear errors (tiny models)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from featcache.common.errors import FeatcacheError
from featcache.model.checkpoint import load_encoder
from featcache.model.encoder import EncoderConfig, denoise
from featcache.pretrain import (
    PretrainRecipe,
    data_levels,
    evaluate,
    head_parameter_groups,
    init_head,
    new_model,
    pretrain,
    pretrain_loss,
    read_block,
    read_log,
    reconstruction_snr,
    training_step,
)
from featcache.spectra.inputs import NoiseSpec
from featcache.spectra.mask import quantile_mask
from featcache.spectra.noise import add_noise
from featcache.spectra.pfsspec import ARRAY_KEYS, WAVE_KEY, PfsDataset

from ..helpers import DATASET, MASK, assert_user_error, run_cli, run_process

TINY = EncoderConfig(num_layers=3, embed_dim=4, kernel_size=3)
# 8 train rows in blocks of 3 (a batch straddles blocks), 4 val rows: seconds per epoch on a busy CPU
QUICK = PretrainRecipe(max_epochs=3, batch_size=3, lr=1e-2, max_train=8, max_val=4, block_rows=3, seed=7,
                       device="cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """These tests train or evaluate convolutions: run them on one torch thread (see conftest)."""


def write_h5(path: Path, flux: np.ndarray, error: np.ndarray, noisy: np.ndarray | None = None,
             wave: np.ndarray | None = None) -> Path:
    """A minimal pfsspec-layout file (no params table)."""
    with h5py.File(path, "w") as f:
        f[WAVE_KEY] = np.linspace(7100, 8850, flux.shape[1]) if wave is None else wave
        f[ARRAY_KEYS["flux"]] = flux
        f[ARRAY_KEYS["error"]] = error
        if noisy is not None:
            f[ARRAY_KEYS["noisy"]] = noisy
    return path


@pytest.fixture(scope="module")
def fixture_arrays() -> dict[str, np.ndarray]:
    with PfsDataset(DATASET) as ds:
        return {"flux": ds.read_flux(0, ds.n_rows), "error": ds.read_error(0, ds.n_rows),
                "noisy": ds.read_noisy(0, ds.n_rows), "wave": ds.wave}


@pytest.fixture(scope="module")
def no_flux_file(tmp_path_factory, fixture_arrays) -> Path:
    """Only an observation: flux all zero, a stored noisy array."""
    a = fixture_arrays
    return write_h5(tmp_path_factory.mktemp("noflux") / "obs.h5", np.zeros_like(a["flux"]), a["error"],
                    a["noisy"], a["wave"])


def test_losses_follow_the_original_formulas():
    g = torch.Generator().manual_seed(0)
    out = torch.rand(2, 2, 5, generator=g) + 0.1
    noisy, sigma_n, flux = (torch.rand(2, 5, generator=g) + 0.1 for _ in range(3))
    var = out[:, 1] ** 2 + sigma_n**2
    b = torch.sqrt(var / 2)
    est = (out[:, 1] ** 2 * noisy + sigma_n**2 * out[:, 0]) / var
    assert torch.allclose(est, denoise(out, noisy, sigma_n))
    expected = {"T1": (abs(est - flux) / b + torch.log(2 * b)).mean(),
                "E1": (abs(noisy - out[:, 0]) / b + torch.log(2 * b)).mean(),
                "E2": (0.5 * (noisy - out[:, 0]) ** 2 / var + 0.5 * torch.log(var)).mean()}
    for name, value in expected.items():
        assert torch.allclose(pretrain_loss(name, out, noisy, sigma_n, flux), value), name
    with pytest.raises(FeatcacheError, match="unknown loss 'T3'"):
        pretrain_loss("T3", out, noisy, sigma_n, flux)


@pytest.mark.parametrize("loss", ["T1", "E2"])
def test_loss_decreases_on_a_fixed_batch(loss):
    mask = np.load(MASK)
    with PfsDataset(DATASET) as ds:
        batch = read_block(ds, 0, 6, mask, NoiseSpec("generated", 1, 1.0), stream=0, need_flux=True)
    model = new_model(TINY, seed=0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = [training_step(model, optimizer, batch, loss) for _ in range(12)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < losses[0] - 0.05, losses


def test_head_init_starts_mu_and_sigma_at_the_data_levels():
    mask = np.load(MASK)
    with PfsDataset(DATASET) as ds:
        batch = read_block(ds, 0, 8, mask, NoiseSpec("generated", 1, 1.0), stream=0, need_flux=True)
    levels = data_levels(batch)
    assert levels[0] == pytest.approx(float(batch.flux.median()), abs=1e-3) and 0 < levels[2] < levels[0]
    model = new_model(TINY, seed=0).train()
    init_head(model, *levels)
    with torch.no_grad():
        out = model(torch.stack([batch.noisy, batch.sigma], dim=1))
    assert float(out[:, 0].median()) == pytest.approx(levels[0], rel=0.1)
    assert float(out[:, 1].median()) == pytest.approx(levels[2], rel=0.2)
    groups = head_parameter_groups(model, 1e-3, 10.0)
    assert [g["lr"] for g in groups] == [1e-3, 1e-2] and len(groups[1]["params"]) == 2
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same recipe run straight through and as 1 epoch + resume to 3."""
    root = tmp_path_factory.mktemp("pretrain")
    straight = pretrain(DATASET, DATASET, root / "straight.ckpt", TINY, QUICK)
    first = pretrain(DATASET, DATASET, root / "split.ckpt", TINY, replace(QUICK, max_epochs=1))
    resumed = pretrain(DATASET, DATASET, root / "split.ckpt", TINY, QUICK, resume=True)
    return straight, first, resumed


def test_checkpoint_layout_loads_everywhere(runs):
    straight = runs[0]
    raw = torch.load(straight.path, map_location="cpu", weights_only=True)
    assert {"state_dict", "epoch", "global_step", "optimizer_states", "lr_schedulers", "featcache"} <= set(raw)
    assert all(k.startswith("model.") for k in raw["state_dict"])
    assert raw["epoch"] == 3 and raw["global_step"] == straight.global_step == 3 * 3
    loaded = load_encoder(straight.path)
    assert loaded.config == TINY and loaded.file_format == "lightning"
    assert "straight.yaml" in loaded.dilation_source
    cfg = yaml.safe_load(straight.yaml_path.read_text())
    assert cfg["model"]["num_layers"] == 3 and cfg["model"]["embed_dim"] == 4
    assert cfg["mask"] == {"mask_ratio": 0.85} and cfg["noise"] == {"noise_level": 1.0}
    with PfsDataset(DATASET) as ds:  # quantile:0.85 of the 8 training spectra's errors
        assert np.array_equal(np.load(straight.mask_path), quantile_mask(ds.read_error, 8, ds.n_pixels, 0.85))
    log = read_log(straight.log_path)
    assert [row["epoch"] for row in log] == [1, 2, 3]
    assert set(log[0]) == {"epoch", "train_loss", "val_loss", "val_snr_noisy", "val_snr_denoised", "lr",
                           "seconds"}
    assert all(row["val_snr_noisy"] > 1 and row["val_snr_denoised"] > 0 for row in log)
    assert straight.recipe.loss == "T1" and straight.recipe.noise == "generated"


def test_resume_continues_to_the_same_result(runs):
    straight, first, resumed = runs
    assert first.epochs_done == 1 and resumed.epochs_done == 3
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert resumed.global_step == straight.global_step
    a = load_encoder(straight.path).model.state_dict()
    b = load_encoder(resumed.path).model.state_dict()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-6), name
    for x, y in zip(straight.history, resumed.history, strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
        assert x["val_snr_denoised"] == pytest.approx(y["val_snr_denoised"], rel=1e-5)


def test_resume_refuses_another_recipe_or_architecture(runs):
    path = runs[2].path
    with pytest.raises(FeatcacheError, match="recipe differs.*lr 0.1"):
        pretrain(DATASET, DATASET, path, TINY, replace(QUICK, lr=0.1, max_epochs=4), resume=True)
    with pytest.raises(FeatcacheError, match="l3e4k3s1bn1d1 model, the options ask for l3e8k3"):
        pretrain(DATASET, DATASET, path, replace(TINY, embed_dim=8), replace(QUICK, max_epochs=4), resume=True)
    with pytest.raises(FeatcacheError, match="exists: pass --resume"):
        pretrain(DATASET, DATASET, path, TINY, QUICK)
    done = pretrain(DATASET, DATASET, path, TINY, QUICK, resume=True)
    assert done.stopped == "already-done" and done.epochs_done == 3


def test_time_limit_stops_after_the_epoch(tmp_path):
    result = pretrain(DATASET, None, tmp_path / "t.ckpt", TINY, replace(QUICK, time_limit=0.0, max_train=3))
    assert result.stopped == "time-limit" and result.epochs_done == 1
    assert math.isnan(result.history[0]["val_snr_denoised"])  # no val file: no S/N


def test_reconstruction_snr_is_per_spectrum_median(fixture_arrays):
    a = fixture_arrays
    mask = np.load(MASK)
    model = new_model(TINY, seed=0).eval()
    rows = np.arange(2, 7)
    noisy, _ = add_noise(a["flux"][rows], a["error"][rows], rows, seed=3, noise_level=1.0, stream=0)
    flux, noisy = a["flux"][rows][:, mask], noisy[:, mask]
    expected = np.median(np.linalg.norm(flux, axis=1) / np.linalg.norm(noisy - flux, axis=1))
    snr_noisy, snr_den = reconstruction_snr(model, DATASET, rows, mask, seed=3, noise_level=1.0, batch_size=2)
    assert snr_noisy == pytest.approx(expected, rel=1e-5)
    again = evaluate(model, DATASET, rows, mask, seed=3, batch_size=5)
    assert again.median_denoised == pytest.approx(snr_den, rel=1e-4)


def test_no_clean_flux_is_a_clear_error_and_auto_falls_back_to_e2(tmp_path, no_flux_file):
    with pytest.raises(FeatcacheError, match="T1 .*needs clean flux, but flux row 0 is all zero"):
        pretrain(no_flux_file, None, tmp_path / "a.ckpt", TINY, replace(QUICK, loss="T1"))
    with pytest.raises(FeatcacheError, match="validation S/N needs clean flux"):
        pretrain(DATASET, no_flux_file, tmp_path / "b.ckpt", TINY, QUICK)
    result = pretrain(no_flux_file, None, tmp_path / "c.ckpt", TINY, replace(QUICK, max_epochs=1, max_train=3))
    assert (result.recipe.loss, result.recipe.noise) == ("E2", "stored")


def test_bad_shapes_are_clear_errors(tmp_path, fixture_arrays):
    a = fixture_arrays
    short = write_h5(tmp_path / "short.h5", a["flux"][:, :4000], a["error"][:, :4000])
    with pytest.raises(FeatcacheError, match="shape mismatch: train .* 4096 pixels .* val .* 4000"):
        pretrain(DATASET, short, tmp_path / "a.ckpt", TINY, QUICK)
    bad_mask = tmp_path / "m.npy"
    np.save(bad_mask, np.ones(100, dtype=bool))
    with pytest.raises(FeatcacheError, match=r"has shape \(100,\), expected \(4096,\)"):
        pretrain(DATASET, None, tmp_path / "b.ckpt", TINY, replace(QUICK, mask=str(bad_mask)))
    with pytest.raises(FeatcacheError, match="too few for num_layers 14"):
        pretrain(DATASET, None, tmp_path / "c.ckpt", replace(TINY, num_layers=14), replace(QUICK, mask="none"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_the_gpu_and_resumes_on_the_cpu(tmp_path):
    gpu = pretrain(DATASET, DATASET, tmp_path / "g.ckpt", TINY, replace(QUICK, max_epochs=1, device="cuda"))
    assert math.isfinite(gpu.history[0]["val_snr_denoised"])
    raw = torch.load(gpu.path, map_location="cpu", weights_only=True)
    state = raw["optimizer_states"][0]["state"]
    assert all(t.device.type == "cpu" for s in state.values() for t in s.values() if isinstance(t, torch.Tensor))
    cpu = pretrain(DATASET, DATASET, gpu.path, TINY, replace(QUICK, max_epochs=2), resume=True)
    assert cpu.epochs_done == 2


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(FeatcacheError, match="CUDA is not available"):
        pretrain(DATASET, None, tmp_path / "c.ckpt", TINY, replace(QUICK, device="cuda"))


def test_cli_trains_and_resumes_with_the_saved_settings(tmp_path):
    out = tmp_path / "enc-l3e4k3s1bn1d1.ckpt"
    args = ["pretrain", "--data", f"train={DATASET}", "--data", f"val={DATASET}", "--out", out, "--num-layers", 3,
            "--embed-dim", 4, "--kernel-size", 3, "--batch-size", 3, "--max-train", 3, "--max-val", 2,
            "--block-rows", 3, "--device", "cpu", "--quiet"]
    first = run_cli(*args, "--max-epochs", 1)
    assert "wrote" in first.output and "1 epochs" in first.output and "val S/N" in first.output
    resumed = run_cli("pretrain", "--data", f"train={DATASET}", "--data", f"val={DATASET}", "--out", out,
                      "--resume", "--max-epochs", 2, "--quiet")
    assert "2 epochs" in resumed.output
    assert load_encoder(out).config == TINY
    assert out.with_name(out.stem + ".mask.npy").exists()


def test_cli_user_errors_exit_2_in_one_line(tmp_path, no_flux_file):
    proc = run_process("pretrain", "--data", f"train={no_flux_file}", "--out", tmp_path / "x.ckpt",
                       "--loss", "T1", "--num-layers", 3, "--embed-dim", 4, "--kernel-size", 3)
    assert proc.returncode == 2
    assert_user_error(proc, "needs clean flux")
    bad = run_cli("pretrain", "--data", f"test={DATASET}", "--out", tmp_path / "y.ckpt", check=False)
    assert bad.exit_code == 2 and "unknown split 'test'" in bad.output


def test_save_every_keeps_each_epochs_encoder_as_it_was(tmp_path):
    """--save-every 1 on 3 epochs: ep1..ep3 beside the checkpoint; ep3 is the final weights, ep1 the first
    epoch's (the same as a 1-epoch run with the same seed), each loadable as an encoder."""
    out = tmp_path / "enc.ckpt"
    pretrain(DATASET, None, out, TINY, replace(QUICK, save_every=1))
    final = load_encoder(out).model.state_dict()
    kept = {e: load_encoder(tmp_path / f"enc-ep{e}.ckpt").model.state_dict() for e in (1, 2, 3)}
    assert all(torch.equal(final[k], kept[3][k]) for k in final)
    short = tmp_path / "short.ckpt"
    pretrain(DATASET, None, short, TINY, replace(QUICK, max_epochs=1))
    first = load_encoder(short).model.state_dict()
    assert all(torch.equal(first[k], kept[1][k]) for k in first)
    assert not all(torch.equal(first[k], kept[2][k]) for k in first)
    assert not (tmp_path / "short-ep1.ckpt").exists()
    with pytest.raises(FeatcacheError, match="--save-every must be >= 1"):
        pretrain(DATASET, None, tmp_path / "x.ckpt", TINY, replace(QUICK, save_every=0))
