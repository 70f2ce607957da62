"""Denial of service and hangs: a YAML alias bomb, duplicate and non-UTF-8 configs, error lines that would
grow without bound, and a shard waiting forever for a cache nobody prepares."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from ..helpers import CKPT, REPO, assert_cli_error, assert_user_error, run_cli, run_process, write_pfs
from .test_bad_input import refused

# nine levels of aliases of nine items each: 9**9 = 387 million strings once expanded (a few hundred bytes here)
BOMB = "a: &a [" + ", ".join(['"lol"'] * 9) + "]\n" + "".join(
    f"{b}: &{b} [" + ", ".join([f"*{a}"] * 9) + "]\n" for a, b in zip("abcdefg", "bcdefgh", strict=True)
) + "layer: [" + ", ".join(["*h"] * 9) + "]\n"


def test_an_alias_bomb_is_refused_at_once_in_little_memory(tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text(BOMB)
    assert len(BOMB) < 1000

    def limit_memory() -> None:  # the bomb took 1.25 GB before; 600 MB of address space is plenty for a refusal
        resource.setrlimit(resource.RLIMIT_AS, (600 << 20, 600 << 20))

    proc = subprocess.run([sys.executable, "-m", "featcache", "extract", "--config", str(config), "--ckpt", "x",
                           "--data", "train=x.h5", "--out", str(tmp_path / "c.zarr")], capture_output=True, text=True,
                          timeout=60, cwd=REPO, preexec_fn=limit_memory)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert_user_error(proc, "bomb.yaml", "aliases (*name) are not accepted")
    assert len(proc.stderr) < 1000
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize("content,fragment", [
    (b"layer: enc_last\nlayer: enc_0\n", "key 'layer' is given twice"),
    (b"layer: enc\xe9\n", "not UTF-8 text (byte 10 is 0xe9)"),
    (b"pool: &p global_mean\nlayer: *p\n", "aliases (*name) are not accepted"),
])
def test_configs_that_yaml_would_read_wrongly(tmp_path, content, fragment):
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    data = write_pfs(tmp_path / "d.h5", n=8, p=64)
    refused(tmp_path, "extract", "--config", config, "--ckpt", CKPT, "--data", f"train={data}", "--out",
            tmp_path / "c.zarr", fragments=("--config", "c.yaml", fragment))


def test_error_lines_are_one_line_of_bounded_length(tmp_path):
    """A path with a newline, and a config value of 15,000 characters: still one Error line, a screenful at most."""
    weird = tmp_path / "a\nb.h5"
    result = run_cli("extract", "--ckpt", CKPT, "--data", f"train={weird}", "--out", tmp_path / "c.zarr",
                     check=False)
    assert_cli_error(result, "a\\nb.h5: no such file")
    config = tmp_path / "long.yaml"
    config.write_text("batch_size: [" + ", ".join(["1"] * 5_000) + "]\n")
    result = run_cli("extract", "--config", config, "--ckpt", CKPT, "--data", f"train={weird}", check=False)
    assert_cli_error(result, "key 'batch_size' takes a single value", "characters cut")
    assert len(result.output) < 1200


def test_a_shard_waits_for_its_cache_with_a_limit(tmp_path):
    data = write_pfs(tmp_path / "d.h5", n=8, p=256)
    out = tmp_path / "never.zarr"
    proc = run_process("extract", "--ckpt", CKPT, "--data", f"train={data}", "--mask", "none", "--shard", "1/3",
                       "--wait", "1", "-q", "--out", out, timeout=60)
    assert proc.returncode == 2
    assert_user_error(proc, "shard 1/3: waited 1 s for", "never.zarr", "found no cache", "--prepare")
    assert not out.exists()
    result = run_cli("extract", "--ckpt", CKPT, "--data", f"train={data}", "--shard", "1/3", "--wait", "nan",
                     "--out", out, check=False)
    assert_cli_error(result, "--wait nan")
