"""Why a job failed, read from the end of its ``log.txt``: what its page shows first.

The last run of the job (after the scheduler's last ``[studio] ... run:`` line) is searched for its last error:
a glog error line (``E0101 12:00:00.000000 123 cli.py:102] message``, how ``caffe`` reports a CaffeError, with
the lines that continue it) or a Python traceback (its exception line, and the file:line of the innermost frame),
whichever comes later. A message that names a file:line itself (``train_val.prototxt:12: ...``) keeps it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TAIL_BYTES = 64 << 10  # the end of the log that is searched
MAX_MESSAGE_CHARS = 2000

_GLOG = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([^\]\s]+:\d+)\] ?(.*)$")
_RUN = re.compile(r"^\[studio\] .* run: ")
_FRAME = re.compile(r'^\s+File "([^"]+)", line (\d+)')


@dataclass(frozen=True)
class Failure:
    """A job's error: the message, where it was raised (``file:line``, None when unknown) and its kind."""

    message: str
    where: str | None = None
    kind: str = "error"  # "error": a logged error line; "exception": a traceback's last line

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _last_run(text: str) -> list[str]:
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _RUN.match(line)]
    return lines[starts[-1] + 1 :] if starts else lines


def _glog_error(lines: list[str]) -> tuple[int, Failure] | None:
    """The last E/F glog line (with the unprefixed lines that continue it) and its position."""
    for i in range(len(lines) - 1, -1, -1):
        m = _GLOG.match(lines[i])
        if m and m.group(1) in "EF":
            more = []
            for line in lines[i + 1 :]:
                if _GLOG.match(line) or _RUN.match(line) or line.startswith("Traceback"):
                    break
                more.append(line)
            message = "\n".join([m.group(3), *more]).strip()
            if message == "Interrupted.":
                continue
            return i, Failure(message[:MAX_MESSAGE_CHARS], _named_place(message))
    return None


def _traceback(lines: list[str]) -> tuple[int, Failure] | None:
    """The last traceback's exception (its first unindented line after the frames, with the lines that continue
    it) and the file:line of its innermost frame."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        return None
    where, message = None, []
    for line in lines[starts[-1] + 1 :]:
        frame = _FRAME.match(line)
        if message and (not line.strip() or _GLOG.match(line) or _RUN.match(line)):
            break
        if frame and not message:
            where = f"{frame.group(1)}:{frame.group(2)}"
        elif message or (line.strip() and not line[0].isspace()):
            message.append(line)
    if not message:
        return None
    return starts[-1], Failure("\n".join(message).strip()[:MAX_MESSAGE_CHARS], where, "exception")


def _named_place(message: str) -> str | None:
    """A ``file:line`` the message itself names (``net.prototxt:12``, ``layer.py:40``), if any."""
    m = re.search(r"([\w./-]+\.(?:prototxt|py|txt|caffemodel|binaryproto|solverstate)):(\d+)", message)
    return f"{m.group(1)}:{m.group(2)}" if m else None


def failure_in(text: str) -> Failure | None:
    """The last error of the log's last run, or None when it has none."""
    lines = _last_run(text)
    found = [f for f in (_glog_error(lines), _traceback(lines)) if f is not None]
    return max(found, key=lambda f: f[0])[1] if found else None


def read_tail(path: Path, limit: int = TAIL_BYTES) -> str:
    """The last ``limit`` bytes of a text file ('' when it is missing)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def job_failure(job_dir: Path, result: dict[str, Any], returncode: int | None) -> Failure:
    """Why a failed job failed: its log's last error, else the scheduler's note, else its exit status and the
    log's last line."""
    found = failure_in(read_tail(job_dir / "log.txt"))
    if found is not None:
        return found
    note = result.get("scheduler_note") or result.get("error")
    if note:
        return Failure(str(note)[:MAX_MESSAGE_CHARS])
    last = next((line for line in reversed(_last_run(read_tail(job_dir / "log.txt"))) if line.strip()), "")
    status = f"exit status {returncode}" if returncode is not None else "no exit status"
    return Failure(f"the job ended with {status}" + (f"; its log ends: {last.strip()}" if last else ""))
