"""Batches prepared in the background, ``depth`` ahead of the net (Caffe's prefetching data layers).

One feeder thread reads the records of each batch in order and draws every random number the
batch needs (so a seeded run repeats exactly, whatever the thread timing) and hands whole batches
to the decode workers in turn; a worker decodes and transforms a batch's items straight into its
float buffer (OpenCV and NumPy release the GIL, so the workers run in parallel); the net's thread
takes the batches in order and only wraps a finished buffer as a tensor. Batch buffers are recycled
once the net has dropped every tensor made from them (:class:`BufferPool`); for a GPU net they are
page-locked and copied asynchronously (:class:`DeviceCopies`).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from caffe.data.transform import CHW, HWC, DataTransformer
from caffe.errors import DataError

log = logging.getLogger("caffe")

_workers = int(os.environ.get("CAFFE_DATA_WORKERS", str(min(2, os.cpu_count() or 1))))
_live: weakref.WeakSet[Prefetcher] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Stop and join every prefetcher's threads before the interpreter shuts down.

    A daemon thread still inside OpenCV or NumPy while Python finalizes can abort the process
    ("terminate called without an active exception").
    """
    for prefetcher in list(_live):
        prefetcher.stop(join=True)


def set_data_workers(n: int) -> None:
    """Decode threads per data layer for layers set up from now on (0: decode in the net's thread)."""
    global _workers
    _workers = max(0, int(n))


def data_workers() -> int:
    return _workers


class BufferPool:
    """Batch buffers handed out again once nothing references them any more.

    A fresh ~20 MB float buffer per batch (AlexNet's 32x3x227x227) cost page faults and kernel page
    zeroing whenever glibc had handed the freed one back to the system: measured with two workers, 5-130 us
    of kernel time per image depending on the run, against ~5 us with recycled buffers. Each buffer is
    lent as a new NumPy view of a pooled array; the tensor the net receives holds that view, so when the
    net (and anyone else: pycaffe ``blob.data`` views, autograd's saved inputs) has let go of it, a
    finalizer returns the array to the pool. A buffer still in use is never reused: the pool makes a new one instead.
    """

    def __init__(self, keep: int, *, pinned: bool = False) -> None:
        self.keep = max(1, int(keep))  # free buffers kept per (shape, dtype); more are left to the GC
        self.pinned = pinned  # page-locked host memory (CUDA): the copies to the GPU run asynchronously
        self._free: dict[tuple[tuple[int, ...], np.dtype], list[np.ndarray]] = {}
        self._lock = threading.RLock()  # re-entrant: a finalizer may run while this thread holds it
        self.made = 0  # arrays allocated (for tests and benchmarks)

    def take(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        """An uninitialised array of ``shape``: a recycled one when one is free."""
        key = (tuple(shape), np.dtype(dtype))
        with self._lock:
            free = self._free.get(key)
            array = free.pop() if free else None
            if array is None:
                self.made += 1
        if array is None:
            if self.pinned:
                dtype = torch.from_numpy(np.empty(0, key[1])).dtype
                array = torch.empty(key[0], dtype=dtype, pin_memory=True).numpy()  # the array keeps the tensor
            else:
                array = np.empty(key[0], key[1])
        lent = array.view()
        weakref.finalize(lent, self._give_back, key, array).atexit = False
        return lent

    def _give_back(self, key: tuple[tuple[int, ...], np.dtype], array: np.ndarray) -> None:
        with self._lock:
            free = self._free.setdefault(key, [])
            if len(free) < self.keep:
                free.append(array)


@dataclass
class Record:
    """One item to read: a Datum's bytes or an image path, with a name (key or path) for messages."""

    payload: Any
    name: str
    label: float = 0.0


@dataclass
class Decoded:
    """A decoded item: HWC (images) or CHW (raw Datums) array, its layout and label (a float, or what the
    transformer's ``place_item`` takes: a float32 (L, 1, 1) array of a multi-label Datum, a layer's own object)."""

    array: np.ndarray
    layout: str
    label: Any


class Source(Protocol):
    """Where a prefetching layer's records come from."""

    def peek(self) -> Record:
        """The first record (read at set-up to learn the top shape)."""
        ...

    def next_records(self, n: int) -> list[Record]: ...

    def decode(self, record: Record) -> Decoded: ...

    # Optional: ``skip(n)`` moves on as ``next_records(n)`` would, without reading anything (fast-forward).
    # Optional: ``decode_batch(records)`` decodes a whole batch as ((N, C, H, W) array, float32 labels (N, ...)) in
    # a few NumPy operations, or returns None for a batch it leaves to ``decode`` item by item.


@dataclass
class _Batch:
    records: list[Record]
    draws: list[tuple[float, float, bool]]
    layout: str = HWC
    buffer: np.ndarray | None = None
    labels: Any = None  # float32 (N,) array, or what the transformer's new_labels gives
    item_shape: tuple[int, ...] = ()
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Prefetcher:
    """Fills batches of ``batch_size`` items from ``source`` with ``workers`` decode threads.

    ``skip_batches``: start as if that many batches had been read (the source's ``skip`` and one jump of
    the draws when the source has one). The threads start with the first :meth:`next`.
    """

    def __init__(
        self,
        source: Source,
        transformer: DataTransformer,
        batch_size: int,
        *,
        depth: int = 4,
        workers: int | None = None,
        seed: int = 0,
        name: str = "data",
        skip_batches: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.source, self.transformer, self.batch_size = source, transformer, int(batch_size)
        self.depth = max(1, int(depth))
        self.workers = _workers if workers is None else max(0, int(workers))
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.wait_seconds = 0.0  # time the net's thread spent waiting for a batch
        self.batches = 0
        self._ready: queue.Queue[_Batch] = queue.Queue()
        self._slots = threading.Semaphore(self.depth)
        self._jobs: list[queue.Queue[_Batch | None]] = [queue.Queue() for _ in range(self.workers)]
        self._stop = threading.Event()
        self._error: DataError | None = None  # the error that stopped the threads, raised again on next()
        self._threads: list[threading.Thread] = []
        self.pool = BufferPool(keep=self.depth + self.workers + 2, pinned=pin_memory)
        self.seed = int(seed)
        self._fed = 0  # batches whose records and draws are taken (the skipped ones included)
        if skip_batches:
            self._skip(int(skip_batches))

    def _skip(self, batches: int) -> None:
        """Continue as if ``batches`` batches had been read: the source's position and the draws move on."""
        skip = getattr(self.source, "skip", None)
        if skip is None:  # a source that can only be read: read and draw as the skipped batches would have
            for _ in range(batches):
                self._records()
            return
        skip(batches * self.batch_size)
        self.transformer.skip_draws(self.rng, batches * self.batch_size)
        self._fed += batches

    def _start(self) -> None:
        """Start the feeder and decode threads (on the first batch asked for: a prefetcher replaced before
        then, as by a fast-forward, has read nothing)."""
        self._threads.append(threading.Thread(target=self._feed, name=f"{self.name}-feeder", daemon=True))
        for w in range(self.workers):
            self._threads.append(threading.Thread(target=self._work, args=(w,), name=f"{self.name}-{w}", daemon=True))
        for t in self._threads:
            t.start()
        _live.add(self)

    # ------------------------------------------------------------------ background side
    def _records(self) -> _Batch:
        """Read a batch's records and draw its random numbers (feeder thread, in order)."""
        records = self.source.next_records(self.batch_size)
        draws = self.transformer.batch_draws([self.transformer.draw(self.rng) for _ in records], self.seed, self._fed)
        self._fed += 1
        return _Batch(records, draws)

    def _build(self, batch: _Batch) -> None:
        """Decode and transform every item of ``batch`` into a float32 buffer of the pool (one thread): the whole
        batch at once when the source can decode it so, else item by item."""
        records = batch.records
        decode_batch = getattr(self.source, "decode_batch", None) if self.transformer.places_batches else None
        whole = decode_batch(records) if decode_batch is not None else None
        if whole is not None:
            items, batch.labels = whole
            buffer = self._take_buffer(batch, items.shape[1:], CHW)
            self.transformer.place_batch(items, buffer, batch.draws)
            return
        first = self.source.decode(records[0])
        self._take_buffer(batch, first.array.shape, first.layout)
        batch.labels = self.transformer.new_labels(len(records))
        self._place(batch, 0, first)
        for i in range(1, len(records)):
            self._place(batch, i, self.source.decode(records[i]))

    def _take_buffer(self, batch: _Batch, item_shape: tuple[int, ...], layout: str) -> np.ndarray:
        """Check the first item's size and take the batch's buffer from the pool."""
        c, h, w = (item_shape[2], *item_shape[:2]) if layout == HWC else item_shape
        self.transformer.check_item(c, h, w, batch.records[0].name)
        c, hh, ww = self.transformer.batch_shape(c, h, w, batch.draws)
        n = len(batch.records)
        batch.layout, batch.item_shape = layout, tuple(item_shape)
        batch.buffer = self.pool.take((n, hh, ww, c) if layout == HWC else (n, c, hh, ww))
        return batch.buffer

    def _place(self, batch: _Batch, i: int, item: Decoded) -> None:
        fits = item.array.shape == batch.item_shape or self.transformer.resizes_items
        if not fits or item.layout != batch.layout:
            raise DataError(
                f"{self.name}: {batch.records[i].name}: item of shape {item.array.shape} in a batch whose first "
                f"item is {batch.item_shape}; images in a batch must have the same size (resize them, or use "
                "batch_size 1)"
            )
        assert batch.buffer is not None and batch.labels is not None
        batch.labels[i] = self.transformer.place_item(item, batch.buffer[i], batch.draws[i], batch.records[i].name)

    def _feed(self) -> None:
        """Read records in order and hand whole batches to the workers in turn."""
        k = 0
        while True:
            self._slots.acquire()
            if self._stop.is_set():
                return
            try:
                batch = self._records()
            except BaseException as e:
                batch = _Batch([], [], error=e)
                batch.done.set()
                self._ready.put(batch)
                return
            self._ready.put(batch)
            self._jobs[k % self.workers].put(batch)
            k += 1

    def _work(self, w: int) -> None:
        jobs = self._jobs[w]
        while True:
            batch = jobs.get()
            if batch is None:
                return
            try:
                self._build(batch)
            except BaseException as e:  # reported to the net's thread, which raises it
                batch.error = e
            batch.done.set()

    # ------------------------------------------------------------------ net side
    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch as (float data (N, C, H, W), labels (N, ...)); waits if it is not ready yet."""
        if self._error is not None:  # the threads are gone: say again what stopped them
            raise self._error.with_traceback(None)
        start = time.perf_counter()
        if self.workers:
            if not self._threads:
                self._start()
            batch = self._ready.get()
            batch.done.wait()
        else:
            batch = self._records()
            try:
                self._build(batch)
            except Exception as e:  # reported below as the workers' errors are
                batch.error = e
        self.wait_seconds += time.perf_counter() - start
        self.batches += 1
        try:
            if batch.error is not None:
                error = batch.error
                self.stop()
                if not isinstance(error, DataError):
                    cause, error = error, DataError(f"{self.name}: {type(error).__name__}: {error}")
                    error.__cause__ = cause
                self._error = error
                raise error.with_traceback(None)
            assert batch.buffer is not None and batch.labels is not None
            return self.transformer.to_tensor(batch.buffer, batch.layout), self.transformer.labels_tensor(batch.labels)
        finally:
            if self.workers:
                self._slots.release()

    def stop(self, join: bool = False) -> None:
        """End the background threads (``join``: wait for them, at most a few seconds)."""
        if not self._stop.is_set():
            self._stop.set()
            for jobs in self._jobs:
                jobs.put(None)
            self._slots.release()
        if join:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join(timeout=5.0)

    def runs_on_current_thread(self) -> bool:
        """Whether the calling thread is one of the background threads."""
        return threading.current_thread() in self._threads

    @property
    def running(self) -> bool:
        """Whether any of the background threads is still alive."""
        return any(t.is_alive() for t in self._threads)

    @property
    def mean_wait_ms(self) -> float:
        return 1000.0 * self.wait_seconds / max(1, self.batches)


class DeviceCopies:
    """Batches copied to the GPU without waiting: each host batch (a pooled, pinned buffer) is kept
    referenced until its copy has finished, so the pool cannot hand the buffer out again mid-copy."""

    def __init__(self, limit: int = 8) -> None:
        self.limit = max(1, int(limit))
        self._in_flight: deque[tuple[Any, tuple[torch.Tensor, ...]]] = deque()

    def copy(self, tensors: list[torch.Tensor], device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
        """``tensors`` on ``device`` in ``dtype``, copied asynchronously on the current stream."""
        out = [t.to(device=device, dtype=dtype, non_blocking=True) for t in tensors]
        if device.type == "cuda" and any(t.is_pinned() for t in tensors):
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(device))
            self._in_flight.append((done, tuple(tensors)))
        while self._in_flight and (len(self._in_flight) > self.limit or self._in_flight[0][0].query()):
            event, _ = self._in_flight.popleft()
            event.synchronize()  # a no-op when it has completed
        return out
