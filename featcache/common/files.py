"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of either.

Every file featcache writes that another run may read back (metrics, cells, checkpoints, logs, synthetic
data) goes through `atomic_write`: the content is written to a temporary name in the same folder, then
moved over the target with os.replace (atomic on POSIX), and the temporary file is removed on any failure.
"""

from __future__ import annotations

import contextlib
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
    except OSError as exc:
        raise normalise_os_error(exc, path) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_together(folder: str | os.PathLike[str], writers: dict[str, Callable[[Path], Any]], *,
                   replaces: tuple[str, ...] | list[str] = ()) -> list[Path]:
    """Write a set of files that belong together (a run's metrics, predictions, head, ...): each to a temporary
    name first, and only once every one is written are they moved into place, then the files of `replaces` that
    the new set lacks (an earlier run's) removed. A failure (a full disk) removes the temporaries, and the folder
    too if this call made it, so the earlier files stay whole and nothing is left for a rerun to trip over."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    temps: dict[str, Path] = {}
    name = ""
    try:
        for name, write in writers.items():
            temps[name] = temporary_name(folder / name)
            temps[name].touch(exist_ok=False)
            write(temps[name])
    except BaseException as exc:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError):
            raise normalise_os_error(exc, folder / name) from None
        raise
    for name, tmp in temps.items():
        os.replace(tmp, folder / name)
    for name in replaces:
        if name not in writers:
            (folder / name).unlink(missing_ok=True)
    return [folder / name for name in writers]


def normalise_os_error(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """The OSError of a failed write, naming the file the user asked for (not a temporary name) and with the
    system's words for its errno: h5py's errors carry the errno only inside a long HDF5 message."""
    import re

    code = exc.errno
    if not code:
        found = re.search(r"errno = (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    if not code:
        return exc
    return OSError(code, os.strerror(code), str(path))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def json_text(data: Any, *, indent: int = 2, finite_only: bool = False) -> str:
    """`data` as JSON text (numpy values made plain; NaN/inf -> null with finite_only)."""
    return json.dumps(plain(data, finite_only=finite_only), indent=indent, default=str) + "\n"


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int = 2, finite_only: bool = False) -> Path:
    """Atomically write `data` as JSON (numpy values made plain; NaN/inf -> null with finite_only)."""
    return write_text(path, json_text(data, indent=indent, finite_only=finite_only))


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


def check_not_inside_store(path: str | os.PathLike[str], flag: str = "--out", *, folder: bool = False) -> None:
    """Refuse an output inside a Zarr store (a featcache cache): the cache's own arrays would be overwritten or a
    run's files taken for part of the cache, and --overwrite of the cache would delete them. folder: the output
    is a folder of files (a run, a report), which must not be a cache itself either."""
    here = Path(os.path.abspath(path))
    here = here if folder else here.parent
    for folder_ in (here, *here.parents):
        if (folder_ / "zarr.json").is_file():
            from .errors import FeatcacheError

            raise FeatcacheError(f"{flag} {path}: is inside the cache {folder_}; write it beside the cache instead")
