"""The studio's GPUs: the pool, what a job asks for, and which waiting jobs get which GPUs.

The pool is the ``cuda:N`` entries of the server's devices (``StudioConfig.devices``; by default every
device ``torch.cuda.device_count()`` sees, so a test may give ``["cpu", "cuda:0", "cuda:1", "cuda:2"]``).
A training asks for a number of GPUs (any free ones) or for a list of GPU ids (:data:`GpuRequest`: an int
or a list); the scheduler gives it GPUs held by no other job (:class:`Allotment`) and runs the command with
``--gpu=ID,ID`` (:func:`gpu_flag`).
"""

from __future__ import annotations

import re
import reprlib
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from caffe.studio.store import Job

GpuRequest = int | list[int]  # a number of GPUs, any free ones, or these GPU ids (in this order)
_PREFIX = "cuda:"


def gpu_pool(devices: Iterable[str]) -> list[int]:
    """The GPU ids among device names (``cuda:N``), in order."""
    return sorted({int(d[len(_PREFIX) :]) for d in devices if d.startswith(_PREFIX) and d[len(_PREFIX) :].isdecimal()})


def device_gpu(device: str) -> int | None:
    """The id of a single-GPU device name (``cuda:N``), or None (``cpu``)."""
    rest = device[len(_PREFIX) :] if device.startswith(_PREFIX) else ""
    return int(rest) if rest.isdecimal() else None


def _integer(value: Any) -> int:
    """An int from a JSON number or a form string; ValueError naming the value otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,9}\s*", value):
        return int(value)
    raise ValueError(f"{reprlib.repr(value)} is not a whole number")


def parse_gpu_list(raw: Any) -> list[int]:
    """GPU ids from a list (JSON, or a form's repeated field) or a comma-separated string; ValueError if
    one is not a whole number."""
    if raw is None:
        return []
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"give a list of GPU ids, not {reprlib.repr(raw)}")
    return [_integer(x) for x in items if not (isinstance(x, str) and not x.strip())]


def parse_gpu_count(raw: Any) -> int:
    """A number of GPUs from a JSON number or a form string (empty: 0); ValueError otherwise."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return 0
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    return _integer(raw)


def request_error(request: GpuRequest, pool: Sequence[int]) -> str | None:
    """Why this server can never run ``request`` (None: it can, once the GPUs are free)."""
    have = f"this server has {len(pool)} GPU(s)" + (f": {', '.join(map(str, pool))}" if pool else "")
    if isinstance(request, int):
        if request < 1:
            return f"the number of GPUs must be at least 1, got {request}"
        if request > len(pool):
            return f"{request} GPUs asked for, but {have}"
        return None
    if not request:
        return "no GPU given"
    if len(request) > len(pool):
        return f"{len(request)} GPUs given, but {have}"
    duplicates = sorted(g for g, n in Counter(request).items() if n > 1)
    if duplicates:
        return f"GPU(s) {', '.join(map(str, duplicates))} given more than once"
    unknown = [g for g in request if g not in pool]
    if unknown:
        return f"no GPU {', '.join(map(str, unknown))} ({have})"
    return None


def describe(request: GpuRequest) -> str:
    """``"2 GPUs"``, ``"1 GPU"`` or ``"GPUs 0, 2"`` / ``"GPU 1"``."""
    if isinstance(request, int):
        return f"{request} GPU{'s' if request != 1 else ''}"
    return f"GPU{'s' if len(request) != 1 else ''} {', '.join(map(str, request))}"


def job_hardware(job: Job) -> str:
    """What a job runs on, for pages: ``"GPUs 0, 2"`` (held now, or by its last run), ``"waits for 2
    GPUs"``, ``"CPU"``; empty for jobs without a device."""
    if job.resource != "cuda":
        return "CPU" if job.resource == "cpu" else (job.resource or "")
    if job.status == "Waiting" or (not job.gpus and job.gpu_request is not None):
        verb = "waits for" if job.status == "Waiting" else "asked for"
        return f"{verb} {describe(job.gpu_request)}"  # type: ignore[arg-type]
    return describe(job.gpus or [])


def gpu_flag(gpus: Sequence[int]) -> str:
    """The ``caffe train`` flag for the allotted GPUs: ``--gpu=0,2``."""
    return "--gpu=" + ",".join(map(str, gpus))


class Allotment:
    """One pass over the waiting jobs, oldest first: which GPUs each may take now.

    A job takes GPUs only when all it needs are free, and never ones an older waiting job still waits
    for: the ids an older job listed are kept for it, and once an older job waits for a number of GPUs,
    no younger one starts on a GPU (it takes the next ones that are free). So no job waits for ever
    behind younger ones."""

    def __init__(self, free: Iterable[int]) -> None:
        self.free = sorted(set(free))
        self.kept: set[int] = set()  # listed by an older job that waits
        self.closed = False  # an older job waits for a number of GPUs

    def take(self, request: GpuRequest) -> list[int] | None:
        """The GPUs for the next waiting job, now taken; None when it must wait."""
        if self.closed:
            return None
        if isinstance(request, int):
            picked = [g for g in self.free if g not in self.kept][:request]
            if len(picked) < request:
                self.closed = True
                return None
        else:
            if self.kept.intersection(request) or not set(request) <= set(self.free):
                self.kept.update(request)
                return None
            picked = list(request)
        self.free = [g for g in self.free if g not in picked]
        return picked


__all__ = [
    "Allotment",
    "GpuRequest",
    "describe",
    "device_gpu",
    "gpu_flag",
    "gpu_pool",
    "job_hardware",
    "parse_gpu_count",
    "parse_gpu_list",
    "request_error",
]
