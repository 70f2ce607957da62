"""featcache search: the objective, a resumed search repeats no finished trial, an interrupted trial continues its
encoder, two processes sharing the storage split the trials, and clear errors (trials of seconds: tiny encoders
on small learnable files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from featcache.common.errors import FeatcacheError
from featcache.pretrain import read_log
from featcache.search import SearchOptions, objective_value, search
from featcache.search import trial as trial_module

from ..helpers import REPO, assert_cli_error, learnable_pfs, run_cli, write_pfs

pytest.importorskip("optuna")

SPACE = {"num_layers": [3], "embed_dim": [4], "kernel_size": [3, 5], "max_epochs": [1, 2]}
FIXED = {"batch_size": 8, "loss": "E2"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Trials train convolutions: one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("search")
    return {"pre": learnable_pfs(root / "pre.h5", 24, seed=1), "train": learnable_pfs(root / "train.h5", 48, seed=2),
            "val": learnable_pfs(root / "val.h5", 24, seed=3)}


def options(files: dict[str, Path], out: Path, **change) -> SearchOptions:
    values = dict(data=[f"train={files['pre']}"], probe_data=[f"train={files['train']}", f"val={files['val']}"],
                  out=out, space=SPACE, pretrain=FIXED, n_trials=2, sampler="grid", seed=0, pruner="none")
    return SearchOptions(**{**values, **change})


def trial_files(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted((out / "trials").rglob("trial.json"))}


def test_the_objective_is_the_score_per_cpu_minute():
    assert objective_value(0.3, 2.0, "ratio") == pytest.approx(0.15)
    assert objective_value(-0.2, 0.5, "ratio") == 0.0  # a negative R2 counts as 0, however fast
    assert objective_value(-0.2, 0.5, "score") == -0.2


def test_a_resumed_search_repeats_no_finished_trial(files, tmp_path):
    out = tmp_path / "run"
    first = search(options(files, out))
    assert (first.finished, first.ran) == (2, 2)
    before = trial_files(out)
    assert len(before) == 2
    again = search(options(files, out))  # all finished: nothing runs, the report is rewritten
    assert (again.finished, again.ran) == (2, 0) and trial_files(out) == before
    more = search(options(files, out, n_trials=3))
    assert (more.finished, more.ran) == (3, 1)
    after = trial_files(out)
    assert {k: after[k] for k in before} == before and len(after) == 3
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("number,state,worker,epochs_done,cpu_minutes,val_r2,objective")
    best = json.loads((out / "best.json").read_text())
    params = [json.loads((out / "trials" / f"{n:04d}" / "trial.json").read_text())["params"] for n in range(3)]
    assert len({json.dumps(p, sort_keys=True) for p in params}) == 3  # the grid: every trial another point
    assert best["cpu_minutes"] > 0 and -1 <= best["val_r2"] <= 1 and "featcache pretrain" in best["command"]
    assert (out / "score_vs_cost.png").stat().st_size > 1000
    with pytest.raises(FeatcacheError, match="searched other space"):
        search(options(files, out, space={**SPACE, "embed_dim": [4, 8]}))


def test_an_interrupted_trial_continues_its_encoder(files, tmp_path, monkeypatch):
    """Ctrl-C during trial 0's second probe: the rerun queues it again, and the retry continues its encoder from
    the saved epoch (the log keeps epoch 1's row) instead of starting over."""
    out = tmp_path / "run"
    real = trial_module.probe_encoder
    calls = []

    def interrupted(ckpt, opts, folder):
        calls.append(ckpt)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(ckpt, opts, folder)

    monkeypatch.setattr(trial_module, "probe_encoder", interrupted)
    space = {**SPACE, "kernel_size": [3], "max_epochs": [2]}
    with pytest.raises(KeyboardInterrupt):
        search(options(files, out, space=space, sampler="tpe", n_trials=1))
    folder = out / "trials" / "0000"
    assert [row["epoch"] for row in read_log(folder / "encoder.log.csv")] == [1, 2]
    log = (folder / "encoder.log.csv").read_text()
    monkeypatch.setattr(trial_module, "probe_encoder", real)
    result = search(options(files, out, space=space, sampler="tpe", n_trials=1))
    assert (result.finished, result.ran) == (1, 1)
    record = json.loads((folder / "trial.json").read_text())
    assert record["epochs_done"] == 2 and [p["epoch"] for p in record["probes"]] == [1, 2]
    assert (folder / "encoder.log.csv").read_text() == log  # not trained again
    rows = (out / "trials.csv").read_text()
    assert "retry of 0" in rows and not (out / "trials" / "0001").exists()


def test_a_repeated_setting_reuses_its_result(files, tmp_path):
    """A sampler may propose settings already tried: pretraining is deterministic, so the trial takes the earlier
    result instead of training the same encoder again."""
    out = tmp_path / "run"
    result = search(options(files, out, space={**SPACE, "kernel_size": [3], "max_epochs": [1]}, sampler="tpe"))
    assert (result.finished, result.ran) == (2, 2)
    assert [p.name for p in (out / "trials").iterdir()] == ["0000"]
    rows = (out / "trials.csv").read_text().splitlines()
    assert "the settings of trial 0: its result" in rows[2] and result.best["trial"] == 0


def test_two_processes_sharing_the_storage_split_the_trials(files, tmp_path):
    out = tmp_path / "shared"
    args = [sys.executable, "-m", "featcache", "search", "--data", f"train={files['pre']}", "--probe-data",
            f"train={files['train']}", "--probe-data", f"val={files['val']}", "--out", str(out), "--num-layers", "3",
            "--embed-dim", "4,6,8", "--kernel-size", "3,5", "--max-epochs", "1", "--loss", "E2", "--set",
            "batch_size=8", "--sampler", "random", "--n-trials", "4", "--pruner", "none", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([*args, "--worker", str(i)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (_, stderr) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, stderr
    import optuna

    study = optuna.load_study(study_name="featcache-search", storage=f"sqlite:///{out / 'search.db'}")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    # each worker stops once 4 have finished; both may be mid-trial then, so at most one extra, never 2 x 4
    assert 4 <= len(finished) <= 5
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both took trials
    trained = [t for t in finished if "duplicate_of" not in t.user_attrs]  # (a repeated setting reuses a result)
    assert len({t.user_attrs["folder"] for t in trained}) == len(trained)  # no trial trained twice
    assert all(study.trials[t.user_attrs["duplicate_of"]].params == t.params for t in finished if t not in trained)


def test_bad_searches_are_one_line_errors(files, tmp_path, monkeypatch):
    noisy_only = write_pfs(tmp_path / "obs.h5", n=24, p=512, noisy=True)
    with h5py.File(noisy_only, "a") as f:  # an observation: no clean flux, so every T1 trial fails
        f["dataset/arrays/flux/value"][...] = 0
    with pytest.raises(FeatcacheError, match="--aux-weight choices need --aux-target"):
        search(options(files, tmp_path / "a", space={**SPACE, "aux_weight": [0.0, 1.0]}))
    with pytest.raises(FeatcacheError, match="--kernel-size 4: must be odd"):
        search(options(files, tmp_path / "b", space={**SPACE, "kernel_size": [3, 4]}))
    with pytest.raises(FeatcacheError, match="search: 'device' is set by the search"):
        search(options(files, tmp_path / "c", pretrain={**FIXED, "device": "cpu"}))
    bad = run_cli("search", "--data", f"train={files['pre']}", "--probe-data", f"train={files['train']}",
                  "--out", tmp_path / "d", "--embed-dim", "4,x", check=False)
    assert_cli_error(bad, "--embed-dim 4,x: 'x' is not an integer")
    missing = run_cli("search", "--data", f"train={files['pre']}", "--probe-data", f"train={files['train']}",
                      "--out", tmp_path / "e", check=False)
    assert_cli_error(missing, "val")
    with pytest.raises(FeatcacheError, match="3 trials in a row failed, the last with: .*needs clean flux"):
        search(options(files, tmp_path / "g", pretrain={**FIXED, "loss": "T1"}, data=[f"train={noisy_only}"],
                       sampler="random", space={**SPACE, "max_epochs": [1]}))
    monkeypatch.setitem(sys.modules, "optuna", None)  # as without the extra
    no_optuna = run_cli("search", "--data", f"train={files['pre']}", "--probe-data", f"train={files['train']}",
                        "--probe-data", f"val={files['val']}", "--out", tmp_path / "f", check=False)
    assert_cli_error(no_optuna, "featcache search needs Optuna: pip install 'featcache[search]'")
