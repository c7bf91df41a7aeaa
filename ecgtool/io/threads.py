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


_CHOSEN: int | None = None  # -@/--threads, when given


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_threads(n: int | None) -> int | None:
    """``-@/--threads N``: the threads every command uses (readers, filters, Parquet encoding, torch).
    0 or more than the usable cores is clamped, with a note. Returns the value in force."""
    global _CHOSEN
    if n is None:
        _CHOSEN = None
        return None
    import logging

    cores = usable_cores()
    m = min(max(1, int(n)), cores)
    if m != n:
        logging.getLogger("ecgtool").warning("--threads %d: using %d (this machine lets the command use %d core%s)",
                                             n, m, cores, "s" if cores != 1 else "")
    _CHOSEN = m
    try:
        import pyarrow as pa

        pa.set_cpu_count(m)
        pa.set_io_thread_count(max(1, m))
    except Exception:  # noqa: BLE001 - an old pyarrow: its own default stays
        pass
    return m


def chosen_threads() -> int | None:
    return _CHOSEN


def default_threads(limit: int = 8) -> int:
    """Threads for parallel work: ``--threads`` when given, else the usable cores, at most ``limit``."""
    n = _CHOSEN if _CHOSEN is not None else usable_cores()
    return max(1, min(limit, n)) if _CHOSEN is None else _CHOSEN


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
