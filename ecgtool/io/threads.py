"""Overlapping reading and decoding with compute, with bounded memory.

* :func:`background` runs an iterator in a thread, a fixed number of items
  ahead of its consumer (reading and adapting the next batches while the
  model runs on this one);
* :func:`ordered_map` applies a function to items in a thread pool and hands
  the results back in order, a fixed number in flight (Parquet row groups
  decoded in parallel).

Both re-raise a worker's exception in the consumer and stop their threads
when the consumer stops early (``close()``, an exception, Ctrl-C).
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_END = object()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def default_threads(limit: int = 8) -> int:
    """Threads for parallel decoding: the usable cores, at most ``limit``."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(limit, n))


def background(items: Iterable[T], depth: int = 2, name: str = "ecgtool-prefetch") -> Iterator[T]:
    """Iterate ``items`` in a daemon thread, at most ``depth`` items ahead."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        it = iter(items)
        try:
            for item in it:
                if not put(item):
                    break
            else:
                put(_END)
        except BaseException as exc:  # handed to the consumer
            put(_Raised(exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        # the worker finishes the item it is producing (bounded: one batch), then sees ``stop``
        thread.join(timeout=30)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int, ahead: int | None = None,
                name: str = "ecgtool-decode") -> Iterator[R]:
    """``fn`` over ``items`` in ``threads`` threads; results in input order, at most ``ahead`` in flight."""
    ahead = max(1, ahead if ahead is not None else threads)
    pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix=name)
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True)
