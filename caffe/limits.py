"""Bounds on what untrusted input may make this process do: the one owner of size budgets and bounded reads.

Files people download from anywhere name other files (a solver's ``net``, a ``.solverstate``'s
``learned_net``, a layer's ``mean_file`` or ``source``) and declare blob shapes; a parser that trusts
them can be sent to read ``/dev/zero`` forever or to allocate more memory than the machine has.
Everything here ends such input in a :class:`~caffe.errors.CaffeError` naming the file or blob:

* :func:`check_path` - a path given as text (no NUL byte, not empty);
* :func:`read_file` - a regular file's bytes, refused when it is a device, FIFO or folder, or larger
  than :func:`max_file_bytes`;
* :func:`read_text` - the same for a text file (a list file), at most :func:`max_list_bytes`, UTF-8;
* :func:`check_regular_file` - a file opened by another library (h5py), refused unless regular;
* :func:`hdf5_errors` - h5py's low-level exceptions from a corrupt file as a CaffeError naming it;
* :func:`check_blob` - a declared shape refused before allocation when its elements overflow or its bytes
  exceed :func:`blob_budget`.

Budgets come from the environment (``CAFFE_MAX_FILE_MB``, ``CAFFE_MAX_LIST_MB``, ``CAFFE_MAX_BLOB_MB``) or
from the machine: a blob may take at most half of the memory available when first asked, a file at most
8 GiB (the largest Caffe models are about 0.6 GB), a list file at most 1 GiB (ImageNet's is 40 MB).
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from caffe.errors import CaffeError, DataError

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_MAX_FILE_BYTES = 8 * GiB
DEFAULT_MAX_LIST_BYTES = 1 * GiB
_FALLBACK_BLOB_BYTES = 4 * GiB  # when the machine's available memory cannot be read


class LimitError(CaffeError):
    """Input that would exceed a size budget (file, blob, archive) or names an unusable file."""


def env_mib(name: str, error: type[CaffeError] = CaffeError) -> int | None:
    """A size from environment variable ``name`` in MiB (None when unset); a bad value is ``error``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise error(f"{name}={text!r}: expected a size in MiB") from None
    if not math.isfinite(value) or value <= 0:
        raise error(f"{name}={text!r}: expected a positive size in MiB")
    return int(value * MiB)


def env_count(name: str, error: type[CaffeError] = CaffeError) -> int | None:
    """A positive whole number from environment variable ``name`` (None when unset); a bad value is ``error``."""
    text = os.environ.get(name, "").strip()
    if text and (not text.isdigit() or int(text) < 1):
        raise error(f"{name}={text!r}: expected a positive whole number")
    return int(text) if text else None


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
    return env_mib("CAFFE_MAX_BLOB_MB") or _machine_blob_budget()


def max_file_bytes() -> int:
    """The largest file a parser reads whole: ``CAFFE_MAX_FILE_MB``, else 8 GiB."""
    return env_mib("CAFFE_MAX_FILE_MB") or DEFAULT_MAX_FILE_BYTES


def max_list_bytes() -> int:
    """The largest text list file (image list, HDF5 list, window file) read whole: ``CAFFE_MAX_LIST_MB``, else 1 GiB."""
    return env_mib("CAFFE_MAX_LIST_MB") or DEFAULT_MAX_LIST_BYTES


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
    except OSError as e:
        raise _os_error(p, what, error, e) from None
    try:
        st = os.fstat(fd)
        _require_regular(p, st.st_mode, what, error)
        if st.st_size > limit:
            raise LimitError(
                f"{p}: {format_bytes(st.st_size)}, larger than the {format_bytes(limit)} allowed for the {what}"
            )
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = _read_up_to(f, st.st_size, limit)
    except OSError as e:
        raise _os_error(p, what, error, e) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise LimitError(f"{p}: larger than the {format_bytes(limit)} allowed for the {what}")
    return data


def _read_up_to(f: BinaryIO, size: int, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of ``f``: its ``size`` from stat at once (a larger buffer would be reserved
    up front), then, only if the file grew meanwhile, the rest in 1 MiB pieces."""
    want = min(size, limit) + 1
    data = f.read(want)
    if len(data) < want:
        return data
    rest = bytearray(data)
    while len(rest) <= limit:
        piece = f.read(min(MiB, limit + 1 - len(rest)))
        if not piece:
            break
        rest += piece
    return bytes(rest)


def _os_error(p: Path, what: str, error: type[CaffeError], e: OSError) -> CaffeError:
    """The one-line ``error`` for an OSError met opening or reading ``p``."""
    if isinstance(e, FileNotFoundError):
        return error(f"{p}: {what} not found")
    if isinstance(e, IsADirectoryError):
        return error(f"{p}: the {what} is a folder")
    return error(f"{p}: cannot read the {what}: {e.strerror}")


def _require_regular(p: Path, mode: int, what: str, error: type[CaffeError]) -> None:
    """``error`` unless ``mode`` (from stat) is a regular file's."""
    if stat.S_ISDIR(mode):
        raise error(f"{p}: the {what} is a folder")
    if not stat.S_ISREG(mode):
        raise error(f"{p}: the {what} is not a regular file (a device, pipe or socket)")


def read_text(
    path: str | os.PathLike,
    what: str = "list file",
    *,
    max_bytes: int | None = None,
    error: type[CaffeError] = DataError,
) -> str:
    """The UTF-8 text of the regular file ``path``, at most ``max_bytes`` (default :func:`max_list_bytes`)."""
    data = read_file(path, what, max_bytes=max_list_bytes() if max_bytes is None else max_bytes, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{os.fspath(path)}: the {what} is not UTF-8 text (byte {e.start})") from None


def check_regular_file(path: str | os.PathLike, what: str = "file", error: type[CaffeError] = DataError) -> Path:
    """``path`` as a Path when it names an existing regular file (symlinks followed), else ``error``.

    For files another library opens itself (h5py would block on a FIFO or read a device).
    """
    p = check_path(path, what, error)
    try:
        mode = p.stat().st_mode
    except OSError as e:
        raise _os_error(p, what, error, e) from None
    _require_regular(p, mode, what, error)
    return p


# what h5py (and NumPy under it) raises for corrupt or unexpected HDF5 content
HDF5_FAILURES = (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError, OverflowError)


@contextlib.contextmanager
def hdf5_errors(path: str | os.PathLike, what: str, error: type[CaffeError] = DataError) -> Iterator[None]:
    """Turn h5py's low-level exceptions inside the block into ``error`` naming ``path`` and ``what``."""
    try:
        yield
    except CaffeError:
        raise
    except HDF5_FAILURES as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(f"{os.fspath(path)}: corrupt or unreadable {what}: {detail}") from None


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
