"""Small parts of pycaffe's module surface: logging helpers, a timer, the multi-process names (caffe.parallel)."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING

from caffe import parallel

if TYPE_CHECKING:
    from caffe.solver import Solver

_log = logging.getLogger("caffe")


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
    """Whether several processes can train together (``caffe.NCCL``: torch.distributed, NCCL or gloo)."""
    import torch.distributed as dist

    return dist.is_available()


def solver_count() -> int:
    return parallel.world()[1]


def set_solver_count(count: int) -> None:
    parallel.declare(size=count)


def solver_rank() -> int:
    return parallel.world()[0]


def set_solver_rank(rank: int) -> None:
    parallel.declare(rank=rank)


def set_multiprocess(multiprocess: bool) -> None:
    """Accepted for pycaffe's ``python/train.py``: ranks here are always processes."""


class NCCL:
    """pycaffe's ``caffe.NCCL(solver, uid)``: joins this process to the group at ``uid`` as the declared
    ``solver_rank`` of ``solver_count`` and makes ``solver`` exchange its gradients there (Caffe's rule,
    ``caffe.parallel``). ``bcast()`` gives every rank rank 0's weights; as a solver callback it does nothing
    more (the exchange is in the solver's update)."""

    def __init__(self, solver: Solver, uid: str) -> None:
        from caffe import common

        parallel.join(uid, "cuda" if common.mode() == "GPU" else "cpu")
        solver.rank, solver.world_size = parallel.world()
        solver.root = solver.rank == 0
        if not solver.root:
            _log.setLevel(logging.WARNING)
            solver.events = None
        self.solver = solver

    @staticmethod
    def new_uid() -> str:
        return parallel.new_address()

    def bcast(self) -> None:
        self.solver.broadcast_weights()

    def on_start(self) -> None:
        pass

    def on_gradients_ready(self) -> None:
        pass


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
