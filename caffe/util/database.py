"""A database created as a whole or not at all.

Records go to a hidden sibling folder that is renamed to the database's name once everything is written and
closed, so an error, Ctrl-C or crash never leaves a half-written database under the name Caffe's ``db::NEW``
would have created (a killed process may leave the hidden ``.NAME.partial-PID``, which the next run creating
``NAME`` removes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from caffe.data.db import DB, open_db
from caffe.errors import DataError
from caffe.processes import pid_alive

log = logging.getLogger("caffe")

#: The LMDB map of a new database starts at 1 GiB (it still doubles when full): fewer re-done
#: commits than the library's 64 MiB start. The file only grows as records are written.
LMDB_START_MAP_SIZE = 1 << 30


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
