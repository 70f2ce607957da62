"""The writers' lock: a flock beside the cache, so two independent runs never write one cache."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..common.errors import FeatcacheError


class CacheLock:
    """A flock beside the cache: two independent runs cannot write one cache.

    A plain run (or the rank that prepares a sharded one) holds it exclusively; the ranks of a sharded run
    hold it shared, each also holding its own shard's lock exclusively. The kernel drops a lock when its
    holder dies (even by SIGKILL), so no stale lock survives a crash.
    """

    def __init__(self, cache_path: Path, name: str = "lock"):
        # keyed by the real path: two writers reaching one cache through a symlink or '..' share the lock
        real = Path(os.path.realpath(cache_path))
        self.path = real.with_name(real.name + f".{name}")
        self._handle: Any = None

    def acquire(self, description: str, *, shared: bool = False) -> CacheLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 -- held open for the lock's lifetime
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "the ranks of a sharded featcache extract"
            handle.close()
            raise FeatcacheError(f"cache {self.path.with_suffix('')} is being written by {holder}; wait for it "
                                 f"to finish (the lock {self.path} frees itself when that process ends)") from None
        if not shared:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({description})")
            handle.flush()
        self._handle = handle
        self._shared = shared
        return self

    def release(self) -> None:
        if self._handle is not None:
            if not self._shared:
                self._handle.truncate(0)
                self._handle.flush()
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> CacheLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
