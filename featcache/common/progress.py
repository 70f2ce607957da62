"""Progress bars on stderr: shown on a terminal, hidden with --quiet or when stderr is not a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_quiet = os.environ.get("FEATCACHE_QUIET", "") not in ("", "0")


def set_quiet(quiet: bool) -> None:
    """Turn every progress bar and status line off (the CLI's --quiet)."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def bars_enabled() -> bool:
    return not _quiet and sys.stderr.isatty()


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", **kwargs) -> tqdm:
    """A tqdm bar on stderr that respects --quiet and hides itself when stderr is not a terminal."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=not bars_enabled(), dynamic_ncols=True, leave=False, **kwargs)


def status(message: str) -> None:
    """A one-line note on stderr (what is happening), silenced by --quiet."""
    if not _quiet:
        print(message, file=sys.stderr, flush=True)


def iterate(iterable: Iterable[T], **kwargs) -> Iterator[T]:
    yield from progress(iterable, **kwargs)


def warning(message: str) -> None:
    """A one-line warning on stderr that --quiet does not silence (an override the user should see)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
