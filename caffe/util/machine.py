"""What the machine is, for logs, benchmark tables and per-machine records: the CPU as ``/proc/cpuinfo``
names it (``platform.processor()`` is empty on most Linux systems)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpuinfo() -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines():
            if ":" in line:
                key, value = (part.strip() for part in line.split(":", 1))
                fields.setdefault(key, value)
            elif not line.strip() and fields:
                break  # the first processor is enough
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name (``AMD EPYC 7B13``), else what ``platform`` knows."""
    return cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_description() -> str:
    """The model name with family, model and stepping, clock, cache size and a virtual-machine note."""
    fields = cpuinfo()
    extra = []
    if "cpu family" in fields:
        extra.append(
            f"family {fields['cpu family']} model {fields.get('model', '?')} stepping {fields.get('stepping', '?')}"
        )
    if "cpu MHz" in fields:
        extra.append(f"{float(fields['cpu MHz']) / 1000:.2f} GHz")
    if "cache size" in fields:
        extra.append(f"{fields['cache size']} cache")
    if "hypervisor" in cpu_flags():
        extra.append("virtual machine")
    return f"{cpu_model()} ({', '.join(extra)})" if extra else cpu_model()


def cpu_flags() -> list[str]:
    """The instruction-set and feature flags the CPU reports (``avx2``, ``fma``, ``hypervisor``, ...)."""
    return cpuinfo().get("flags", "").split()
