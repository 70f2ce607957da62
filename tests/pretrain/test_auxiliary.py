"""pretrain --aux-target: the auxiliary label loss against a hand computation, LAMBDA 0 bitwise the plain run,
labels outside the labelled train rows unable to reach the loss, resume, and the files (tiny models)."""

from __future__ import annotations

import copy
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from featcache.common.errors import FeatcacheError
from featcache.common.subsets import nested_subset
from featcache.model.checkpoint import load_encoder
from featcache.model.encoder import EncoderConfig, shifted_max_pool
from featcache.pretrain import PretrainRecipe, new_model, pretrain, pretrain_loss, read_block, read_log
from featcache.pretrain.auxiliary import AuxObjective, aux_path_for, labelled_rows, load_aux, read_labels
from featcache.pretrain.losses import model_input, training_step
from featcache.spectra.inputs import NoiseSpec
from featcache.spectra.pfsspec import PfsDataset

from ..helpers import CKPT, DATASET, MASK, assert_cli_error, run_cli

TINY = EncoderConfig(num_layers=3, embed_dim=4, kernel_size=3)
QUICK = PretrainRecipe(max_epochs=3, batch_size=3, lr=1e-2, max_train=8, max_val=4, block_rows=3, seed=7,
                       device="cpu")
AUX = replace(QUICK, aux_targets=("log_g", "T_eff"), aux_weight=1.0, aux_labels=4, aux_seed=5, aux_pool="seg_mean_K4")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """These tests train convolutions: run them on one torch thread (see conftest)."""


def state(path: Path) -> dict[str, torch.Tensor]:
    return load_encoder(path).model.state_dict()


def bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_auxiliary_loss_and_its_gradient_match_a_hand_computation():
    """One step on 6 spectra, 3 of them labelled: the returned loss is E2 + LAMBDA x MSE computed by hand (the tap
    hooked off the doubled-batch forward, seg_mean_K4 and the linear head written out, labels standardised over
    the labelled rows), and the encoder's gradient is that of this sum."""
    weight, rows = 0.3, np.array([1, 2, 4, 7, 9])
    recipe = replace(AUX, aux_weight=weight, aux_targets=("log_g", "M_H"))
    mask = np.load(MASK)
    with PfsDataset(DATASET) as ds:
        batch = read_block(ds, 0, 6, mask, NoiseSpec("generated", 1, 1.0), stream=0, need_flux=False)
        table = read_labels(ds, rows, recipe.aux_targets)
        params = ds.params()
    model = new_model(TINY, seed=0).train()
    reference = copy.deepcopy(model)
    aux = AuxObjective(recipe, model, int(mask.sum()), table, torch.device("cpu"))
    head = copy.deepcopy(aux.head.net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    value = training_step(model, optimizer, batch, "E2", grad_clip=0.0, aux=aux)

    # by hand: the tap enc_pre_latent = pool(encoders[1](...)) of the forward half, on a copy of the model
    captured = {}
    reference.encoders[TINY.num_layers - 1].register_forward_hook(lambda m, i, o: captured.setdefault("h", o))
    x = model_input(batch.noisy, batch.sigma, TINY.input_sigma)
    bs = pretrain_loss("E2", reference(x), batch.noisy, batch.sigma)
    tap = shifted_max_pool(captured["h"])[: len(batch)]
    step = tap.shape[-1] // 4
    segments = [tap[..., i * step:(i + 1) * step] for i in range(3)] + [tap[..., 3 * step:]]
    features = torch.stack([s.mean(-1) for s in segments], dim=1).reshape(len(batch), -1)  # segment-major
    labelled = [i for i in range(len(batch)) if i in set(rows.tolist())]  # rows 1, 2, 4 of the batch 0..5
    labels = params[["log_g", "M_H"]].to_numpy()
    mean, std = labels[rows].mean(axis=0), labels[rows].std(axis=0)
    target = torch.tensor((labels[labelled] - mean) / std, dtype=torch.float32)
    prediction = features[labelled] @ head.weight.T + head.bias
    mse = ((prediction - target) ** 2).mean()
    expected = bs + weight * mse
    assert value == pytest.approx(float(expected.detach()), rel=1e-5)
    assert aux.n_seen == 3 and aux.epoch_mse == pytest.approx(float(mse.detach()), rel=1e-5)
    expected.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if name.startswith("encoders.") and not name.endswith("conv.bias"):  # (BatchNorm cancels a conv's bias)
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), name


def test_a_batch_without_labelled_rows_adds_nothing():
    mask = np.load(MASK)
    with PfsDataset(DATASET) as ds:
        batch = read_block(ds, 0, 4, mask, NoiseSpec("generated", 1, 1.0), stream=0, need_flux=False)
        table = read_labels(ds, np.array([8, 10]), ("log_g",))
    model = new_model(TINY, seed=0).train()
    plain_model = copy.deepcopy(model)
    aux = AuxObjective(AUX, model, int(mask.sum()), table, torch.device("cpu"))
    value = training_step(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, "E2", 0.0, aux)
    expected = training_step(plain_model, torch.optim.SGD(plain_model.parameters(), lr=0.0), batch, "E2", 0.0)
    assert value == expected and aux.n_seen == 0 and math.isnan(aux.epoch_mse)


def test_lambda_zero_is_bitwise_the_plain_pretraining(tmp_path):
    """The head, its optimizer, the labels and the tap read from the same forward: none of it changes a weight,
    a loss or a kept epoch of the plain run when LAMBDA is 0 (and LAMBDA 1 does change them)."""
    plain = pretrain(DATASET, DATASET, tmp_path / "plain.ckpt", TINY, replace(QUICK, save_every=2))
    zero = pretrain(DATASET, DATASET, tmp_path / "zero.ckpt", TINY, replace(AUX, aux_weight=0.0, save_every=2))
    one = pretrain(DATASET, DATASET, tmp_path / "one.ckpt", TINY, AUX)
    assert bitwise_equal(state(plain.path), state(zero.path))
    assert bitwise_equal(state(tmp_path / "plain-ep2.ckpt"), state(tmp_path / "zero-ep2.ckpt"))
    keys = ("train_loss", "val_loss", "val_snr_denoised", "lr")
    assert [[r[k] for k in keys] for r in plain.history] == [[r[k] for k in keys] for r in zero.history]
    assert not bitwise_equal(state(plain.path), state(one.path))
    # at LAMBDA 0 the head still learns (a probe watching the encoder): its MSE falls
    mse = [row["train_aux_mse"] for row in read_log(zero.log_path)]
    assert all(math.isfinite(v) for v in mse) and mse[-1] < mse[0]


def poisoned_copy(path: Path, rows_kept: np.ndarray | None) -> Path:
    """DATASET with every label NaN except those of rows_kept (None: all NaN)."""
    shutil.copy(DATASET, path)
    frame = pd.read_hdf(DATASET, "dataset/params")
    keep = np.zeros(len(frame), dtype=bool) if rows_kept is None else np.isin(np.arange(len(frame)), rows_kept)
    for column in ("log_g", "T_eff", "M_H"):
        frame.loc[~keep, column] = np.nan
    with h5py.File(path, "a") as f:
        del f["dataset/params"]
    frame.to_hdf(path, key="dataset/params", format="table", mode="a")
    return path


def test_labels_outside_the_labelled_train_rows_cannot_reach_the_loss(tmp_path):
    """Train labels NaN on every unlabelled row and validation labels all NaN: the run stays finite and is
    bitwise the run with clean labels (the MSE reads the labelled rows' labels only); a labelled row without a
    label is a one-line error naming the file, the label and the row."""
    rows = labelled_rows(8, AUX)
    train = poisoned_copy(tmp_path / "train.h5", rows)
    val = poisoned_copy(tmp_path / "val.h5", None)
    clean = pretrain(DATASET, DATASET, tmp_path / "clean.ckpt", TINY, AUX)
    poisoned = pretrain(train, val, tmp_path / "poisoned.ckpt", TINY, AUX)
    assert all(math.isfinite(v) for row in poisoned.history for v in row.values())
    assert bitwise_equal(state(clean.path), state(poisoned.path))
    assert [r["train_loss"] for r in clean.history] == [r["train_loss"] for r in poisoned.history]
    one_missing = poisoned_copy(tmp_path / "missing.h5", rows[1:])
    with pytest.raises(FeatcacheError, match=rf"missing.h5: label 'log_g' is NaN or inf on 1 of the 4 labelled "
                                             rf"train rows \(row {rows[0]} first\)"):
        pretrain(one_missing, None, tmp_path / "x.ckpt", TINY, AUX)
    assert not (tmp_path / "x.ckpt").exists()


def test_resumed_equals_uninterrupted(tmp_path):
    straight = pretrain(DATASET, DATASET, tmp_path / "straight.ckpt", TINY, AUX)
    pretrain(DATASET, DATASET, tmp_path / "split.ckpt", TINY, replace(AUX, max_epochs=1))
    resumed = pretrain(DATASET, DATASET, tmp_path / "split.ckpt", TINY, AUX, resume=True)
    assert bitwise_equal(state(straight.path), state(resumed.path))
    a, b = load_aux(straight.aux_path), load_aux(resumed.aux_path)
    assert a["epochs_done"] == b["epochs_done"] == 3
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert [r["train_aux_mse"] for r in straight.history] == [r["train_aux_mse"] for r in resumed.history]
    with pytest.raises(FeatcacheError, match="recipe differs.*aux-weight 0.5"):
        pretrain(DATASET, DATASET, resumed.path, TINY, replace(AUX, aux_weight=0.5, max_epochs=4), resume=True)


def test_the_checkpoint_keeps_the_original_layout_and_the_head_lies_beside_it(tmp_path):
    result = pretrain(DATASET, None, tmp_path / "enc.ckpt", TINY, replace(AUX, max_epochs=1, save_every=1))

    def key_patterns(path):
        return {re.sub(r"\.\d+\.", ".N.", k) for k in torch.load(path, map_location="cpu", weights_only=True)
                ["state_dict"]}

    assert key_patterns(result.path) == key_patterns(CKPT)  # what the original research code loads
    assert result.aux_path == tmp_path / "enc.aux.pt" and (tmp_path / "enc-ep1.aux.pt").exists()
    saved = load_aux(result.aux_path)
    expected_rows = nested_subset(8, 4, 5)  # compare --train-sizes 4 --subset-seed 5 on this file: the same rows
    assert np.array_equal(saved["rows"].numpy(), expected_rows)
    assert saved["targets"] == ["log_g", "T_eff"] and set(saved["state_dict"]) == {"weight", "bias"}
    assert saved["state_dict"]["weight"].shape == (2, 4 * TINY.embed_dim)  # seg_mean_K4 of 4 channels
    meta = torch.load(result.path, map_location="cpu", weights_only=True)["featcache"]
    assert meta["aux"]["rows"] == expected_rows.tolist() and meta["recipe"]["aux_labels"] == 4
    assert "--train-sizes 4 --subset-seed 5" in meta["aux"]["rule"]
    with PfsDataset(DATASET) as ds:
        labels = ds.params()[["log_g", "T_eff"]].to_numpy()[expected_rows]
    assert np.allclose(saved["label_mean"], labels.mean(axis=0)) and np.allclose(saved["label_std"], labels.std(axis=0))
    assert "train_aux_mse" in read_log(result.log_path)[0]


def test_the_time_limit_stops_an_auxiliary_run_that_resumes(tmp_path):
    first = pretrain(DATASET, None, tmp_path / "t.ckpt", TINY, replace(AUX, time_limit=0.0))
    assert first.stopped == "time-limit" and load_aux(first.aux_path)["epochs_done"] == 1
    done = pretrain(DATASET, None, tmp_path / "t.ckpt", TINY, AUX, resume=True)
    assert done.epochs_done == 3 and load_aux(done.aux_path)["epochs_done"] == 3


@pytest.mark.parametrize(("change", "message"), [
    ({"aux_targets": (), "aux_weight": 0.1}, "--aux-weight applies to the auxiliary loss: give --aux-target"),
    ({"aux_targets": ("log_g", "log_g")}, "--aux-target: a label is given twice"),
    ({"aux_targets": ("logg",)}, "unknown label 'logg'; available: T_eff, log_g"),
    ({"aux_labels": 9}, "--aux-labels 9: the run trains on 8 spectra"),
    ({"aux_labels": 0}, "--aux-labels must be >= 1"),
    ({"aux_weight": -1.0}, "--aux-weight must be >= 0"),
    ({"aux_tap": "input_flux"}, "--aux-tap input_flux: not an encoder tap"),
    ({"aux_pool": "seg_mean_K999"}, "K=999 segments exceed the map length L'=870"),
])
def test_bad_auxiliary_settings_are_one_line_errors_before_anything_is_written(tmp_path, change, message):
    with pytest.raises(FeatcacheError, match=re.escape(message)):
        pretrain(DATASET, None, tmp_path / "x.ckpt", TINY, replace(AUX, **change))
    assert not list(tmp_path.iterdir())


def test_the_command_line_trains_and_resumes_an_auxiliary_run(tmp_path):
    out = tmp_path / "enc.ckpt"
    args = ["pretrain", "--data", f"train={DATASET}", "--out", out, "--num-layers", 3, "--embed-dim", 4,
            "--kernel-size", 3, "--batch-size", 3, "--max-train", 6, "--block-rows", 3, "--device", "cpu",
            "--aux-target", "log_g", "--aux-target", "M_H", "--aux-weight", 0.1, "--aux-labels", 3, "--quiet"]
    first = run_cli(*args, "--max-epochs", 1)
    assert "enc.aux.pt (the auxiliary head and its labelled rows)" in first.output
    run_cli("pretrain", "--data", f"train={DATASET}", "--out", out, "--resume", "--max-epochs", 2, "--quiet")
    saved = load_aux(aux_path_for(out))
    assert saved["epochs_done"] == 2 and saved["weight"] == 0.1 and saved["targets"] == ["log_g", "M_H"]
    bad = run_cli("pretrain", "--data", f"train={DATASET}", "--out", tmp_path / "b.ckpt", "--aux-labels", 3,
                  check=False)
    assert_cli_error(bad, "--aux-labels applies to the auxiliary loss")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_an_auxiliary_run_trains_on_the_gpu_and_resumes_on_the_cpu(tmp_path):
    gpu = pretrain(DATASET, DATASET, tmp_path / "g.ckpt", TINY, replace(AUX, max_epochs=1, device="cuda"))
    saved = load_aux(gpu.aux_path)
    assert all(t.device.type == "cpu" for s in saved["optimizer"]["state"].values() for t in s.values()
               if isinstance(t, torch.Tensor))
    cpu = pretrain(DATASET, DATASET, gpu.path, TINY, replace(AUX, max_epochs=2), resume=True)
    assert cpu.epochs_done == 2 and all(math.isfinite(r["train_aux_mse"]) for r in cpu.history)
