"""Progress on stderr: a tqdm bar on a terminal; when stderr is not a terminal (a pipe, nohup, a Slurm log) a
plain line at a bounded rate (every FEATCACHE_PROGRESS_EVERY seconds, default 30) and one when the work ends;
nothing with --quiet."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

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


def line_interval() -> float:
    """Seconds between two progress lines when stderr is not a terminal (FEATCACHE_PROGRESS_EVERY, default 30)."""
    try:
        return max(float(os.environ.get("FEATCACHE_PROGRESS_EVERY", "30")), 0.0)
    except ValueError:
        return 30.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class LineProgress:
    """The part of tqdm's interface featcache uses, printing a line (what, how far, rate, ETA) at most every
    ``interval`` seconds and once at the end: progress a log file can show."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, interval: float | None = None, **_: Any):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        if self.total is None and iterable is not None and hasattr(iterable, "__len__"):
            self.total = len(iterable)  # type: ignore[arg-type]
        self.n = self.start_n = int(initial)
        self.interval = line_interval() if interval is None else interval
        self.started = self.last = time.monotonic()
        self.postfix = ""
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        where = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        if self.total:
            where += f" {self.unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            where += f" {self.unit}"
        text = f"{self.desc}: {where}, {rate:.3g} {self.unit}/s, {_duration(elapsed)} elapsed"
        if self.total and rate > 0 and self.n < self.total:
            text += f", ETA {_duration((self.total - self.n) / rate)}"
        return text + (f" [{self.postfix}]" if self.postfix else "")

    def _emit(self) -> None:
        print(self.line(), file=sys.stderr, flush=True)
        self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        if time.monotonic() - self.last >= self.interval:
            self._emit()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = str(text)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        self._emit()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.start_n:
                self._emit()


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", **kwargs) -> tqdm | LineProgress:
    """A tqdm bar on a terminal; plain lines at a bounded rate when stderr is not one; nothing with --quiet."""
    if not _quiet and not sys.stderr.isatty():
        kwargs.pop("dynamic_ncols", None)
        return LineProgress(iterable, total=total, desc=desc, unit=unit, **kwargs)
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
