"""Small facts about other processes: whether a pid is alive, which processes are in a process group."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (someone else's counts; a zombie counts too)."""
    return _signal_reaches(os.kill, pid)


def group_alive(pgid: int) -> bool:
    """Whether a process other than a zombie is left in process group ``pgid`` (without /proc, zombies count)."""
    if not _signal_reaches(os.killpg, pgid):
        return False
    members = group_members(pgid)
    return members is None or bool(members)


def _signal_reaches(send, target: int) -> bool:
    """Whether signal 0 sent by ``send`` (os.kill or os.killpg) finds ``target`` (someone else's counts)."""
    try:
        send(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(pgid: int) -> list[int] | None:
    """The living (not zombie) processes of process group ``pgid``, from /proc; None without /proc."""
    if not Path("/proc/self/stat").exists():
        return None
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # gone meanwhile
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                members.append(int(stat.parent.name))
    return members
