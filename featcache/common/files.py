"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of either.

Every file featcache writes that another run may read back (metrics, cells, checkpoints, logs, synthetic
data) goes through `atomic_write`: the content is written to a temporary name in the same folder, then
moved over the target with os.replace (atomic on POSIX), and the temporary file is removed on any failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .serialise import plain

TMP_SUFFIX = ".partial"


def temporary_name(path: Path) -> Path:
    """Where `atomic_write` writes before the move: hidden, per process, so two writers never share it."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call write(tmp) to fill a temporary file, then move it over `path`; on failure nothing is left."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        tmp.touch(exist_ok=False)  # an unwritable folder fails here, with a plain OSError naming the target
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int = 2, finite_only: bool = False) -> Path:
    """Atomically write `data` as JSON (numpy values made plain; NaN/inf -> null with finite_only)."""
    text = json.dumps(plain(data, finite_only=finite_only), indent=indent, default=str) + "\n"
    return write_text(path, text)


def save_torch(path: str | os.PathLike[str], payload: Any) -> Path:
    """Atomically torch.save a payload (checkpoints that a resumed run reads back)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_torch(path: str | os.PathLike[str]) -> Any:
    """torch.load with weights_only=True: a file that needs full unpickling (which can run code) is refused;
    a file that is not a torch checkpoint is a one-line error naming it."""
    import pickle
    import zipfile

    import torch

    from .errors import FeatcacheError

    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # neither torch's zip nor legacy pickle format
        raise FeatcacheError(f"{path}: not a PyTorch checkpoint (expected a file written by torch.save)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        raise FeatcacheError(f"{path}: refused: the file needs full unpickling, which can run arbitrary code "
                             f"(weights_only load failed: {first[:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise FeatcacheError(f"{path}: not a PyTorch checkpoint ({str(exc).splitlines()[0][:160]})") from None
