"""Plumbing shared by the data tools (``convert_imageset``, ``convert_mnist_data``, ``compute_image_mean``, ...).

* :class:`ToolParser` / :func:`parse_flags`: gflags-style command lines. Wrong or missing arguments
  print the usage on stderr and give exit status 1 (never a traceback, never ``SystemExit``).
  Boolean flags take gflags' spellings: ``--gray``, ``--gray=true``, ``--gray=false``, ``--nogray``.
* :func:`new_database`: a database created as a whole or not at all. Records go to a hidden
  sibling folder that is renamed to the database's name once everything is written and closed,
  so an error, Ctrl-C or crash never leaves a half-written database under the name Caffe's
  ``db::NEW`` would have created (a killed process may leave the hidden ``.NAME.partial-PID``,
  which the next run creating ``NAME`` removes).
* :func:`ordered_map`: ``map`` over threads (OpenCV and zlib release the GIL), results in input
  order, with bounded look-ahead so memory stays flat on long lists.
* :class:`Progress`: a tqdm bar on stderr when stderr is a terminal (log lines are printed above
  it); nothing when it is not, so logs and pipes get only Caffe's own log lines.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from caffe.data.db import DB, open_db
from caffe.errors import DataError
from caffe.processes import pid_alive

log = logging.getLogger("caffe")

#: The LMDB map of a new database starts at 1 GiB (it still doubles when full): fewer re-done
#: commits than the library's 64 MiB start. The file only grows as records are written.
LMDB_START_MAP_SIZE = 1 << 30

T = TypeVar("T")
R = TypeVar("R")

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


# ---------------------------------------------------------------------------------------------
# command lines


class _UsageError(Exception):
    pass


class ToolParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are exceptions (turned into usage + exit 1 by :func:`parse_flags`)."""

    def __init__(self, prog: str, usage: str, description: str = "") -> None:
        super().__init__(prog=prog, usage=usage, description=description, add_help=True, allow_abbrev=False)
        self.bool_flags: list[str] = []

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise _UsageError(message)

    def add_bool(self, name: str, help: str) -> None:
        """A gflags boolean: ``--name``, ``--name=true|false``, ``--noname``; default false."""
        self.add_argument(f"--{name}", action="store_true", default=False, help=help)
        self.add_argument(f"--no{name}", action="store_false", dest=name, help=argparse.SUPPRESS)
        self.bool_flags.append(name)


def _expand_bools(argv: Sequence[str], names: Iterable[str]) -> list[str]:
    names = set(names)
    out = []
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            if key in names:
                v = value.lower()
                if v in _TRUE:
                    arg = f"--{key}"
                elif v in _FALSE:
                    arg = f"--no{key}"
                else:
                    raise _UsageError(f"--{key} is a boolean flag: use --{key}, --{key}=true or --{key}=false")
        out.append(arg)
    return out


def parse_flags(parser: ToolParser, argv: Sequence[str]) -> argparse.Namespace | int:
    """Parse ``argv`` (flags may come before, between or after the positional arguments, as with
    gflags); on a usage error print the usage and the problem to stderr and return 1; for
    ``--help`` print the help and return 0."""
    try:
        return parser.parse_intermixed_args(_expand_bools(argv, parser.bool_flags))
    except _UsageError as e:
        print(f"{parser.format_usage().rstrip()}\n{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:  # --help
        return int(e.code or 0)


def usage_error(parser: ToolParser, message: str) -> int:
    """Print the usage and ``message`` to stderr; exit status 1."""
    print(f"{parser.format_usage().rstrip()}\n{parser.prog}: error: {message}", file=sys.stderr)
    return 1


def gflags_int(text: str) -> int:
    """An int32 flag's value as gflags reads it: decimal, or hex with a ``0x`` prefix."""
    t = text.strip()
    try:
        return int(t, 16) if t.lower().lstrip("+-").startswith("0x") else int(t, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def default_threads() -> int:
    """Decoding threads: one per CPU core available to this process (at least 1, at most 32)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(32, n))


# ---------------------------------------------------------------------------------------------
# databases created atomically


def check_new_database_path(path: str | os.PathLike) -> Path:
    """DataError if ``path`` exists and is not an empty folder (Caffe never overwrites a database)."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise DataError(f"{path}: exists and is a file; cannot create a database there")
        if any(p.iterdir()):
            raise DataError(f"{path}: already exists; remove it first (a new database is never written over another)")
    return p


def _remove_stale_partials(final: Path) -> None:
    """Remove ``.NAME.partial-PID`` folders left by killed runs (their process no longer exists)."""
    prefix = f".{final.name}.partial-"
    with contextlib.suppress(OSError):
        for p in final.parent.iterdir():
            pid = p.name[len(prefix) :]
            if not (p.name.startswith(prefix) and pid.isdigit()) or int(pid) == os.getpid():
                continue
            if not pid_alive(int(pid)):  # (another user's process counts as alive: left alone)
                log.info("Removing %s, left by an interrupted run", p)
                shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def new_database(path: str | os.PathLike, backend: str) -> Iterator[DB]:
    """Create the database ``path`` atomically: yields a new DB opened in a hidden sibling folder,
    which becomes ``path`` when the ``with`` block ends normally and is deleted otherwise.

    Commit the records before the block ends; uncommitted records are lost, as with Caffe's DBs.
    """
    final = check_new_database_path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(final)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    db = open_db(tmp, backend, "new", map_size=LMDB_START_MAP_SIZE)
    try:
        yield db
        db.close()
        if final.exists():  # an empty folder (checked above) or one that appeared meanwhile
            check_new_database_path(final)
            final.rmdir()
        os.rename(tmp, final)
    except BaseException:
        db.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# threads


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int, ahead: int = 0) -> Iterator[R]:
    """``fn`` over ``items`` on ``threads`` threads, yielding results in the items' order.

    At most ``ahead`` items (default: 64, or 8 per thread when more) are in flight, so that the
    threads keep working while the consumer is busy (a database commit). An exception raised by ``fn`` is
    raised here, at that item's turn; leaving the loop early cancels what has not started.
    """
    if threads <= 1:
        yield from map(fn, items)
        return
    ahead = ahead or max(64, 8 * threads)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="caffe-tool")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# progress


class Progress:
    """A tqdm progress bar on stderr when stderr is a terminal, else nothing (use as a context manager).

    While the bar is shown, the ``caffe`` logger's console lines are written above it.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", unit_scale: bool = False) -> None:
        self.bar = None
        self._stack = contextlib.ExitStack()
        if _stderr_is_tty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(
                total=total, desc=desc, unit=unit, unit_scale=unit_scale, file=sys.stderr, dynamic_ncols=True
            )
            self._stack.enter_context(logging_redirect_tqdm([log]))

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        if self.bar is not None:
            self.bar.close()


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
