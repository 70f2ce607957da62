"""One vocabulary: options renamed in 0.2 still work for one release under their old spelling (command line
and --config), with a one-line notice, and mean exactly what the new spelling means."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from featcache_cli.main import cli

from ..helpers import DATASET


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def pretrain_args(tmp_path_factory):
    root = tmp_path_factory.mktemp("renames")
    return root, ["pretrain", "--data", f"train={DATASET}", "--num-layers", 3, "--embed-dim", 4, "--kernel-size", 3,
                  "--batch-size", 4, "--max-train", 4, "--block-rows", 4, "--device", "cpu", "--threads", 1, "-q"]


def test_old_pretrain_spellings_train_the_same_model(pretrain_args):
    root, args = pretrain_args
    new = invoke(*args, "--max-epochs", 1, "--grad-clip", 0.5, "--noise", "generated", "--out", root / "new.ckpt")
    old = invoke(*args, "--epochs", 1, "--clip-grad=0.5", "--noise", "fresh", "--out", root / "old.ckpt")
    assert new.exit_code == old.exit_code == 0, old.output
    assert "deprecated" not in new.stderr
    notices = [line for line in old.stderr.splitlines() if "deprecated" in line]
    assert notices == ["featcache: --epochs is deprecated and will be removed in 0.3; use --max-epochs",
                       "featcache: --clip-grad is deprecated and will be removed in 0.3; use --grad-clip",
                       "featcache: --noise fresh is deprecated and will be removed in 0.3; use --noise generated"]
    a, b = (torch.load(root / f"{name}.ckpt", weights_only=True) for name in ("new", "old"))
    assert a["featcache"]["recipe"] == b["featcache"]["recipe"]
    assert a["featcache"]["recipe"]["grad_clip"] == 0.5 and a["featcache"]["recipe"]["noise"] == "generated"
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_old_config_keys_are_read_with_a_notice(pretrain_args, tmp_path):
    root, args = pretrain_args
    config = tmp_path / "old.yaml"
    config.write_text("epochs: 1\nclip_grad: 0.5\nnoise: fresh\n")
    result = invoke(*args, "--config", config, "--out", tmp_path / "c.ckpt")
    assert result.exit_code == 0, result.output
    assert "--config key 'epochs' is deprecated" in result.stderr and "use 'max-epochs'" in result.stderr
    assert "--config key 'noise': fresh is deprecated" in result.stderr


def test_finetune_noise_fresh_means_train_noise():
    from featcache_cli.finetune import command

    assert command.rename("--noise", "fixed") == ("--train-noise", "fixed")
    assert command.rename("--noise", "generated") is None  # the new meaning of --noise is untouched
