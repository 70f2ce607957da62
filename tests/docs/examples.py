"""The code blocks of the README and the docs site: found, marked runnable or skipped, and run.

A fenced block in bash, sh or python is runnable unless the line above it says
`<!-- docs-test: skip (why) -->`. Examples are written for `make demo`'s standard outputs; the suite runs them
on the quick demo's (the same files at 400/150/150 spectra), through the substitutions below.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..helpers import REPO

RUNNABLE = ("bash", "sh", "python")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<why>.+)\)\s*-->")
# the documents whose code blocks must run: the README, every page of the site, and the repository documents
# the site mounts (docs/hooks.py) that hold code
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), REPO / "data" / "README.md",
             REPO / "featcache" / "data" / "encoders" / "README.md", REPO / "featcache" / "cache" / "FORMAT.md",
             REPO / "CHANGELOG.md"]
# make demo's standard outputs -> the quick demo's
SUBSTITUTIONS = [("demo-standard", "demo-quick"), ("demo-train-n20000-s101", "demo-train-n400-s101"),
                 ("demo-val-n1000-s102", "demo-val-n150-s102"), ("demo-test-n1000-s103", "demo-test-n150-s103")]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    def for_quick_demo(self) -> str:
        code = self.code
        for old, new in SUBSTITUTIONS:
            code = code.replace(old, new)
        return code


def find_blocks(paths: list[Path] = DOCUMENTS) -> list[Block]:
    blocks = []
    for path in paths:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            match = re.match(r"^(`{3,})\s*([\w+-]*)", lines[i])
            if not match:
                i += 1
                continue
            fence, lang = match.group(1), match.group(2)
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(fence))
            if lang in RUNNABLE:
                above = lines[i - 1] if i else ""
                marker = SKIP.search(above)
                blocks.append(Block(path, i + 1, lang, "\n".join(lines[i + 1:end]) + "\n",
                                    marker.group("why") if marker else None))
            i = end + 1
    return blocks


def shell_commands(code: str) -> list[tuple[str, list[str]]]:
    """A bash block's commands: continuation lines joined, comments and blank lines dropped; each as its
    text and its words."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append((line, words))
    return out
