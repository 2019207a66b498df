"""A bounded background-thread prefetcher that keeps order and re-raises errors."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(items: Iterable, depth: int, prepare: Callable[[Any], Any] = lambda item: item) -> Iterator:
    """``prepare(item)`` for each of ``items`` in order, computed up to ``depth`` items ahead on a
    background thread. Errors re-raise in the consumer; closing the generator early (``break``,
    an exception in the consumer) stops and joins the thread."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(prepare(item)):
                    return
            put(end)
        except BaseException as exc:
            put(_Failed(exc))

    worker = threading.Thread(target=produce, name="skinflow-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is end:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()
