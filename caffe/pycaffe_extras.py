"""Small parts of pycaffe's module surface: logging helpers, a timer, and single-process NCCL stubs."""

from __future__ import annotations

import logging
import sys
import time

_log = logging.getLogger("caffe")
_solver_count = 1
_solver_rank = 0
_multiprocess = False


def init_log(level: int = 0, stderr: bool = True) -> None:
    """Send the ``caffe`` logger's messages to stderr from glog level ``level`` (0 INFO .. 3 FATAL) up."""
    levels = [logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]
    _log.setLevel(levels[max(0, min(int(level), 3))])
    if stderr and not any(getattr(h, "_caffe_init_log", False) for h in _log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler._caffe_init_log = True  # type: ignore[attr-defined]
        _log.addHandler(handler)


def log(message: str) -> None:
    """Log ``message`` at INFO level (pycaffe's ``caffe.log``)."""
    _log.info(message)


def has_nccl() -> bool:
    """Multi-GPU NCCL training is not built in; pycaffe answers False in that case."""
    return False


def solver_count() -> int:
    return _solver_count


def set_solver_count(count: int) -> None:
    global _solver_count
    _solver_count = int(count)


def solver_rank() -> int:
    return _solver_rank


def set_solver_rank(rank: int) -> None:
    global _solver_rank
    _solver_rank = int(rank)


def set_multiprocess(multiprocess: bool) -> None:
    global _multiprocess
    _multiprocess = bool(multiprocess)


class Timer:
    """pycaffe's Timer: ``start()``, ``stop()``, ``ms`` (elapsed milliseconds of the last start-stop)."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._elapsed = 0.0

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is not None:
            self._elapsed = time.perf_counter() - self._start
            self._start = None

    @property
    def ms(self) -> float:
        running = time.perf_counter() - self._start if self._start is not None else self._elapsed
        return running * 1000.0

    @property
    def seconds(self) -> float:
        return self.ms / 1000.0
