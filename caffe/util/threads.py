"""Work spread over threads (OpenCV and zlib release the GIL): the default thread count, an ordered ``map``."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_threads() -> int:
    """Decoding threads: one per CPU core available to this process (at least 1, at most 32)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(32, n))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int, ahead: int = 0) -> Iterator[R]:
    """``fn`` over ``items`` on ``threads`` threads, yielding results in the items' order.

    At most ``ahead`` items (default: 64, or 8 per thread when more) are in flight, so that the
    threads keep working while the consumer is busy (a database commit). An exception raised by ``fn`` is
    raised here, at that item's turn; leaving the loop early cancels what has not started.
    """
    if threads <= 1:
        yield from map(fn, items)
        return
    ahead = ahead or max(64, 8 * threads)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="caffe-tool")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
