"""A producer run in a background thread a few items ahead: HDF5 reading and noise overlap the encoder."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def background(produce: Iterable[T], depth: int = 2, name: str = "featcache-reader") -> Iterator[T]:
    """Iterate `produce` in a thread, at most `depth` items ahead (bounded memory); its exceptions re-raise
    in the consumer, and closing the consumer stops the thread."""
    items: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in produce:
                if stop.is_set():
                    return
                items.put(("item", item))
            items.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 -- handed to the consumer
            items.put(("error", exc))

    thread = threading.Thread(target=worker, daemon=True, name=name)
    thread.start()
    try:
        while True:
            kind, item = items.get()
            if kind == "end":
                return
            if kind == "error":
                raise item  # type: ignore[misc]
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue so it can see `stop`
            with contextlib.suppress(queue.Empty):
                items.get(timeout=0.1)
