"""`featcache --help`'s "Typical session" runs as written, command after command, in an empty folder."""

from __future__ import annotations

import contextlib
import re
import shlex

from ..helpers import run_cli


def session_commands(help_text: str) -> list[list[str]]:
    """The commands under "Typical session" in --help (continuation lines joined)."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if "Typical session" in line)
    block = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        block.append(line.strip())
    text = "\n".join(block).replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.startswith("featcache ")]


def test_help_session_runs_as_written(tmp_path):
    commands = session_commands(run_cli("--help").output)
    assert [c[1] for c in commands] == ["synth", "synth", "synth", "pretrain", "extract", "fit", "compare"]
    outputs = []
    with contextlib.chdir(tmp_path):
        for words in commands:
            outputs.append(run_cli(*words[1:], "-q").output)
    fitted = outputs[5]
    assert re.search(r"log_g: val R2 -?\d\.\d{3} \(n=100\) test R2 -?\d\.\d{3} \[", fitted), fitted
    assert "| l4e8k5s1bn1d1 | enc_pre_latent | seg_mean_K8 |" in outputs[6]
    assert (tmp_path / "reports" / "x" / "report.html").is_file()
