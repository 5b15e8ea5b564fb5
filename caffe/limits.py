"""Bounds on what untrusted input may make this process do: the one owner of size budgets and bounded reads.

Files people download from anywhere name other files (a solver's ``net``, a ``.solverstate``'s
``learned_net``, a layer's ``mean_file`` or ``source``) and declare blob shapes; a parser that trusts
them can be sent to read ``/dev/zero`` forever or to allocate more memory than the machine has.
Everything here ends such input in a :class:`~caffe.errors.CaffeError` naming the file or blob:

* :func:`check_path` - a path given as text (no NUL byte, not empty);
* :func:`read_file` - a regular file's bytes, refused when it is a device, FIFO or folder, or larger
  than :func:`max_file_bytes`;
* :func:`check_blob` - a declared shape refused before allocation when its elements overflow or its bytes
  exceed :func:`blob_budget`.

Budgets come from the environment (``CAFFE_MAX_FILE_MB``, ``CAFFE_MAX_BLOB_MB``) or from the machine:
a blob may take at most half of the memory available when first asked, and a file at most 8 GiB (the
largest Caffe models are about 0.6 GB).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from caffe.errors import CaffeError, DataError

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_MAX_FILE_BYTES = 8 * GiB
_FALLBACK_BLOB_BYTES = 4 * GiB  # when the machine's available memory cannot be read


class LimitError(CaffeError):
    """Input that would exceed a size budget (file, blob, archive) or names an unusable file."""


def _env_mib(name: str) -> int | None:
    """A size from environment variable ``name`` in MiB (None when unset); a bad value is a CaffeError."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise CaffeError(f"{name}={text!r}: expected a size in MiB") from None
    if not math.isfinite(value) or value <= 0:
        raise CaffeError(f"{name}={text!r}: expected a positive size in MiB")
    return int(value * MiB)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations now (Linux ``MemAvailable``), None when unknown."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@lru_cache(maxsize=1)
def _machine_blob_budget() -> int:
    available = available_memory()
    return available // 2 if available else _FALLBACK_BLOB_BYTES


def blob_budget() -> int:
    """The most bytes one declared blob may take: ``CAFFE_MAX_BLOB_MB``, else half the available memory."""
    return _env_mib("CAFFE_MAX_BLOB_MB") or _machine_blob_budget()


def max_file_bytes() -> int:
    """The largest file a parser reads whole: ``CAFFE_MAX_FILE_MB``, else 8 GiB."""
    return _env_mib("CAFFE_MAX_FILE_MB") or DEFAULT_MAX_FILE_BYTES


def format_bytes(n: int | float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def check_path(path: str | os.PathLike, what: str = "file", error: type[CaffeError] = DataError) -> Path:
    """``path`` as a Path; an empty path or one with a NUL byte is ``error`` naming ``what``."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not text:
        raise error(f"empty path given for the {what}")
    if "\x00" in text:
        raise error(f"{text!r}: a NUL byte in the path of the {what}")
    return Path(text)


def read_file(
    path: str | os.PathLike,
    what: str = "file",
    *,
    max_bytes: int | None = None,
    error: type[CaffeError] = DataError,
) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` (default :func:`max_file_bytes`).

    A missing file, a folder, a device, FIFO or socket, or a larger file is ``error`` naming the path and
    ``what``; nothing unbounded is read (the size is checked on the open file, and the read stops one byte
    past the limit in case the file grows).
    """
    p = check_path(path, what, error)
    limit = max_file_bytes() if max_bytes is None else max_bytes
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{p}: is a folder, expected a {what}") from None
    except OSError as e:
        raise error(f"{p}: cannot read the {what}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{p}: is a folder, expected a {what}")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{p}: not a regular file (a device, pipe or socket), expected a {what}")
        if st.st_size > limit:
            raise LimitError(f"{p}: {format_bytes(st.st_size)}, larger than the {format_bytes(limit)} allowed "
                             f"for a {what}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"{p}: cannot read the {what}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise LimitError(f"{p}: larger than the {format_bytes(limit)} allowed for a {what}")
    return data


def check_blob(shape: Iterable[int], itemsize: int = 4, what: str = "blob") -> int:
    """The element count of ``shape``; a negative dimension, or more bytes than :func:`blob_budget`, is a
    LimitError naming ``what`` (e.g. ``"layer 'data' (Input) top 'data'"``) and the shape, before allocation."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise LimitError(f"{what}: negative dimension in shape {dims}")
    count = math.prod(dims)
    budget = blob_budget()
    if count * itemsize > budget:
        raise LimitError(
            f"{what}: shape {dims} needs {format_bytes(count * itemsize)}, more than the {format_bytes(budget)} "
            "budget for one blob (set CAFFE_MAX_BLOB_MB to change it)"
        )
    return count
