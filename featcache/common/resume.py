"""One checkpoint-and-resume helper and one resume policy, for every command that trains for epochs and can be
continued (`finetune --resume`, `pretrain --resume`).

The policy: a resumed run continues the checkpoint's run. A setting the caller gave must match the
checkpoint's, except the settings free to change (more epochs, a time limit, the device, ...); a setting the
caller did not give is the checkpoint's. `given=None` means every setting was given (the Python API, unless the
caller names what it set); the command line passes the options given on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from .errors import FeatcacheError
from .files import load_torch


def load_resume_checkpoint(path: str | os.PathLike[str], command: str, is_ours: Callable[[Any], bool]) -> Any:
    """The checkpoint a --resume continues (read weights-only), refusing a missing file and one that another
    command (or another program) wrote."""
    path = Path(path)
    if not path.exists():
        raise FeatcacheError(f"--resume: {path} does not exist (nothing to resume; drop --resume to start)")
    state = load_torch(path)
    if not is_ours(state):
        raise FeatcacheError(f"--resume: {path} was not written by featcache {command}")
    return state


def resumed_settings(saved: Mapping[str, Any], requested: Mapping[str, Any],
                     given: Collection[str] | None) -> dict[str, Any]:
    """The policy's first half: each requested setting, or the checkpoint's where the caller did not give it
    (settings the checkpoint does not hold stay as requested)."""
    if given is None:
        return dict(requested)
    return {k: (v if k in given or k not in saved else saved[k]) for k, v in requested.items()}


def check_resume_policy(resume: bool, overwrite: bool) -> None:
    """--resume continues a run, --overwrite starts it again: never both."""
    if resume and overwrite:
        raise FeatcacheError("--resume and --overwrite exclude each other")
