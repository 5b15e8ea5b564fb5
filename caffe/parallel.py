"""Training on several processes (GPUs or CPU cores, one machine or many) with Caffe's multi-GPU semantics on
``torch.distributed``: the one owner of ranks, the process group and the gradient exchange.

``world()`` is what the rest of the project asks: ``(rank, world_size)`` of this process, ``(0, 1)`` when it
trains alone. Data layers shard their records by it; the solver exchanges gradients and lets rank 0 alone
test, display and snapshot.
"""

from __future__ import annotations

import atexit
import logging
import re
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from caffe.errors import DeviceError

log = logging.getLogger("caffe")

_declared = (0, 1)  # pycaffe's set_solver_rank / set_solver_count, before caffe.NCCL joins the group


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process in the default process group; without one, what pycaffe's
    ``set_solver_rank``/``set_solver_count`` declared (``(0, 1)`` by default)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return _declared


def declare(rank: int | None = None, size: int | None = None) -> None:
    """pycaffe's ``set_solver_rank``/``set_solver_count``: the place this process will take in the group."""
    global _declared
    _declared = (_declared[0] if rank is None else int(rank), _declared[1] if size is None else int(size))


def joined() -> bool:
    """Whether this process is in a process group."""
    return dist.is_available() and dist.is_initialized()


def join(address: str, device_type: str = "cpu") -> tuple[int, int]:
    """pycaffe's ``caffe.NCCL``: join the group at ``address`` (``host:port``) as the declared rank of the
    declared count. Returns ``world()``."""
    import os

    if joined():
        return world()
    host, _, port = address.rpartition(":")
    rank, size = _declared
    os.environ.update(
        MASTER_ADDR=host,
        MASTER_PORT=port,
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(size),
    )
    return init(device_type)


def new_address() -> str:
    """A free ``host:port`` on this machine for ranks to meet at (pycaffe's ``NCCL.new_uid``)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def is_root() -> bool:
    """Whether this process logs, tests and snapshots (rank 0, or a process training alone)."""
    return world()[0] == 0


TIMEOUT_S = 60.0
"""How long a collective waits for a peer before the ranks give up (a lost rank ends the others)."""


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (torchrun sets it); 1 without it."""
    import os

    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise DeviceError(f"WORLD_SIZE must be an integer, got '{os.environ['WORLD_SIZE']}'") from None


def local_rank() -> int:
    """``LOCAL_RANK`` from the environment (this process's index on its machine); 0 without it."""
    import os

    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def init(device_type: str = "cpu") -> tuple[int, int]:
    """Join the process group torchrun (or ``launch``) described in the environment (``env://``).

    NCCL when the process trains on CUDA, gloo on the CPU; collectives time out after ``TIMEOUT_S``.
    A no-op when the group exists or ``WORLD_SIZE`` is 1. Returns ``world()``.
    """
    import datetime

    if dist.is_initialized() or env_world_size() == 1:
        return world()
    if not dist.is_available():
        raise DeviceError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = "nccl" if device_type == "cuda" and _gpu_per_local_rank() else "gloo"
    try:
        dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=TIMEOUT_S))
    except (RuntimeError, ValueError) as e:
        raise DeviceError(f"cannot join the process group ({backend}, env://): {_one_line(e)}") from None
    # A gloo group still alive when the interpreter exits can abort the process ("terminate called without an
    # active exception", from its threads' destructors): every process that joins leaves before it exits, also
    # a script that never calls shutdown() (pycaffe's python/train.py flow).
    atexit.unregister(shutdown)
    atexit.register(shutdown)
    return world()


def _gpu_per_local_rank() -> bool:
    """Whether each process on this machine has a GPU of its own (NCCL needs it; else gloo shares them)."""
    import os

    return torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)


def shutdown() -> None:
    """Leave the process group, if this process joined one (also after a peer was lost: an error then is only
    logged, so that it cannot hide the one that ended the run)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except (RuntimeError, ValueError) as e:
            log.debug("leaving the process group: %s", _one_line(e))


def _one_line(e: BaseException) -> str:
    """The first sentence of a backend's error, without its source-file prefix."""
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h)(?::\d+)?\]\s*", "", " ".join(str(e).split()))
    return re.split(r"(?<=\.)\s", text)[0][:300]


def _lost(what: str, e: BaseException) -> DeviceError:
    rank, size = world()
    others = [r for r in range(size) if r != rank]
    who = f"rank {others[0]}" if len(others) == 1 else "one of ranks " + ", ".join(map(str, others))
    return DeviceError(f"rank {rank}: lost {who} during {what} ({_one_line(e)})")


def broadcast(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Give every rank rank ``src``'s values of ``tensors`` (in place, one flattened message)."""
    if not tensors:
        return
    flat = _flatten(tensors)
    try:
        dist.broadcast(flat, src)
    except RuntimeError as e:
        raise _lost("the weight broadcast", e) from None
    _unflatten(flat, tensors)


def average(tensors: Sequence[torch.Tensor]) -> None:
    """Replace each tensor by its mean over the ranks: one all-reduce (sum) of them flattened, scaled by 1/N."""
    if not tensors:
        return
    if not joined():
        raise DeviceError(f"solver_count is {world()[1]} but this process is in no group: create caffe.NCCL first")
    flat = _flatten(tensors)
    try:
        dist.all_reduce(flat, dist.ReduceOp.SUM)
    except RuntimeError as e:
        raise _lost("the gradient all-reduce", e) from None
    flat.mul_(1.0 / dist.get_world_size())
    _unflatten(flat, tensors)


def _int_tensor(value: int) -> torch.Tensor:
    """``value`` as a one-element tensor where the backend can exchange it (NCCL: on this rank's GPU)."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    return torch.tensor([int(value)], dtype=torch.int64, device=device)


def max_over_ranks(value: int) -> int:
    """The largest of the ranks' ``value`` (e.g. so that a signal one rank got acts on all)."""
    t = _int_tensor(value)
    try:
        dist.all_reduce(t, dist.ReduceOp.MAX)
    except RuntimeError as e:
        raise _lost("the exchange of signal requests", e) from None
    return int(t)


def root_value(value: int) -> int:
    """Rank 0's ``value`` on every rank (e.g. a data layer's seed, so that all ranks draw one data order)."""
    t = _int_tensor(value)
    try:
        dist.broadcast(t, 0)
    except RuntimeError as e:
        raise _lost("the exchange of data seeds", e) from None
    return int(t)


def check_identical(tensors: Sequence[torch.Tensor], what: str) -> None:
    """Raise on every rank unless all ranks hold bitwise rank 0's values of ``tensors`` (a debug check)."""
    if not tensors:
        return
    mine = _flatten(tensors)
    root = mine.clone()
    try:
        dist.broadcast(root, 0)
        differs = torch.tensor([0 if torch.equal(mine, root) else 1], dtype=torch.int64, device=mine.device)
        dist.all_reduce(differs, dist.ReduceOp.SUM)
    except RuntimeError as e:
        raise _lost(f"the check of {what}", e) from None
    if int(differs):
        raise DeviceError(f"rank {world()[0]}: {what} diverged on {int(differs)} rank(s) from rank 0's")


def barrier() -> None:
    """Wait for every rank (e.g. before rank 0 reads what the others wrote)."""
    try:
        dist.barrier()
    except RuntimeError as e:
        raise _lost("a barrier", e) from None


def _flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _unflatten(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    at = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[at : at + n].view_as(t))
        at += n


def launch(n: int, target: Callable[[], int], port: int | None = None) -> int:
    """Run ``target()`` in ``n`` new processes on this machine, ranks 0 to n-1 of one group.

    Each process gets torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT), so ``init`` joins them. Returns the first non-zero exit status, else 0.
    """
    import multiprocessing as mp

    if port is None:
        port = int(new_address().rpartition(":")[2])
    ctx = mp.get_context("spawn")
    procs = []
    for rank in range(n):
        env = {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(n),
            "LOCAL_WORLD_SIZE": str(n),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        proc = ctx.Process(target=_run_rank, args=(env, target), name=f"caffe-rank-{rank}")
        proc.start()
        procs.append(proc)
    status = 0
    for proc in procs:
        proc.join()
        if proc.exitcode and not status:
            status = proc.exitcode if proc.exitcode > 0 else 128 - proc.exitcode
    return status


def _run_rank(env: dict[str, str], target: Callable[[], int]) -> None:
    import os
    import sys

    os.environ.update(env)
    sys.exit(target())
