"""--threads: one option on every command that computes, defaults by workload (common.device)."""

from __future__ import annotations

import importlib

import pytest

from featcache.common.device import WORKLOAD_THREADS, default_threads, use_threads
from featcache.common.errors import FeatcacheError

COMPUTING = {"fit": "heads", "compare": "heads", "predict": "heads", "demo": "heads", "extract": "encoder",
             "finetune": "encoder", "pretrain": "encoder"}


@pytest.mark.parametrize("name", sorted(COMPUTING))
def test_every_computing_command_takes_threads(name):
    command = importlib.import_module(f"featcache_cli.{name}").command
    (param,) = [p for p in command.params if p.name == "threads"]
    assert param.default is None  # None: the workload's default, resolved when the command runs


def test_defaults_follow_the_workload(monkeypatch):
    import torch

    monkeypatch.setattr("featcache.common.device.process_cpus", lambda: 2)
    assert WORKLOAD_THREADS["heads"] == 1 and default_threads("heads") == 1
    assert default_threads("encoder") == 2
    before = torch.get_num_threads()
    try:
        assert use_threads(None, "heads") == 1 and torch.get_num_threads() == 1
        assert use_threads(2, "heads") == 2 and torch.get_num_threads() == 2
        with pytest.raises(FeatcacheError, match="--threads must be >= 1"):
            use_threads(0)
        with pytest.raises(FeatcacheError, match="unknown workload"):
            default_threads("gpu")
    finally:
        torch.set_num_threads(before)


def test_a_bad_threads_value_is_refused_before_anything_runs(tmp_path):
    from ..helpers import run_cli

    result = run_cli("fit", "--cache", tmp_path / "x.zarr", "--target", "log_g", "--layer", "a", "--pool", "b",
                     "--threads", "0", check=False)
    assert result.exit_code == 2 and "--threads" in result.output and not (tmp_path / "reports").exists()
