"""Training on several processes (GPUs or CPU cores, one machine or many) with Caffe's multi-GPU semantics on
``torch.distributed``: the one owner of ranks, the process group and the gradient exchange.

``world()`` is what the rest of the project asks: ``(rank, world_size)`` of this process, ``(0, 1)`` when it
trains alone. Data layers shard their records by it; the solver exchanges gradients and lets rank 0 alone
test, display and snapshot.
"""

from __future__ import annotations


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process in the default process group; ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_root() -> bool:
    """Whether this process logs, tests and snapshots (rank 0, or a process training alone)."""
    return world()[0] == 0
