"""The command line: help, version, python -m, --config, and one-line errors for user mistakes."""

from __future__ import annotations

import json

from ..helpers import CKPT, DATASET, assert_user_error, run_cli, run_process


def test_help_lists_commands_with_purpose():
    out = run_cli("--help").output
    assert "inspect" in out and "Describe a dataset" in out
    assert "Example" in run_cli("inspect", "--help").output


def test_help_gives_each_command_one_line():
    """At 80 columns every command's purpose fits its line: a wrapped summary reads as a command of its own."""
    from click.testing import CliRunner
    from featcache_cli.main import cli

    lines = CliRunner().invoke(cli, ["--help"], terminal_width=80).output.split("Commands:\n", 1)[1].splitlines()
    names = [line.split()[0] for line in lines if line.strip()]
    assert names == sorted(cli.commands) and all(len(line) <= 80 for line in lines)


def test_python_m_and_version():
    proc = run_process("--version")
    assert proc.returncode == 0 and "featcache, version" in proc.stdout


def test_inspect_dataset_and_checkpoint():
    out = run_cli("inspect", DATASET).output
    assert "spectra N        12" in out and "7100.00 - 8850.00" in out and "log_g" in out
    info = json.loads(run_cli("inspect", CKPT, "--json").output)
    assert info["num_layers"] == 5 and info["embed_dim"] == 8 and info["parameters"] == 6822


def test_config_file_supplies_options_and_command_line_wins(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("json: true\n")
    assert run_cli("inspect", DATASET, "--config", config).output.lstrip().startswith("{")
    config.write_text("colour: red\n")
    proc = run_process("inspect", DATASET, "--config", config)
    assert_user_error(proc, "unknown key 'colour'", "choose from: json")


def test_user_errors_are_one_line(tmp_path):
    assert_user_error(run_process("inspect", tmp_path / "missing.h5"), "no such file")
    bad = tmp_path / "bad.ckpt"
    bad.write_text("nope")
    assert_user_error(run_process("inspect", bad), "not a PyTorch checkpoint")
