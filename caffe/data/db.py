"""Caffe's key-value databases: LMDB and LevelDB behind one small interface (``caffe::db``).

A database is a folder. An LMDB is a folder holding ``data.mdb`` and ``lock.mdb``; a LevelDB is a
folder holding ``CURRENT``, ``MANIFEST-*``, ``*.ldb``/``*.log`` files. Both are read and written
through the real libraries (python-lmdb, plyvel), so databases made by Caffe's ``convert_imageset``,
``convert_mnist_data`` or ``extract_features`` open here unchanged, and databases written here open
in Caffe.

    with open_db("examples/mnist/mnist_train_lmdb") as db:      # read-only
        for key, value in db.cursor():
            datum = caffe_pb2.Datum.FromString(value)

    with open_db("out_lmdb", "lmdb", "new") as db:
        txn = db.transaction()
        for i, (name, datum) in enumerate(items):
            txn.put(item_key(i, name), datum.SerializeToString())
            if (i + 1) % 1000 == 0:
                txn.commit()                                     # as convert_imageset does
        txn.commit()

Modes are Caffe's ``db::Mode``:

* ``"read"``: the database must exist. LMDB is opened read-only and without the lock file, so any
  number of threads and processes may read it at once, also from a read-only folder - but nothing
  may write it meanwhile. LevelDB always takes its ``LOCK`` file: one process at a time.
* ``"write"``: opens an existing database for adding records, creating it when missing.
* ``"new"``: creates the database; the folder must not exist or must be empty (Caffe's LMDB
  ``mkdir`` fails on any existing folder; LevelDB fails on an existing database). Missing parent
  folders are created.

In one process, all handles on one LMDB share a single environment (LMDB forbids opening one
twice); a database open read-only here must be closed before it is opened for writing. All handles
on one LevelDB in a process likewise share one plyvel handle (its ``LOCK`` admits one opener), so a
TRAIN and a TEST net may read the same LevelDB; another process still cannot open it meanwhile.

LMDB grows its memory map as Caffe does: a commit that fills the map doubles the map size and is
retried, so ``map_size`` is only the starting size.

Thread safety: an LMDB :class:`DB` may be shared by threads; each :class:`Cursor` has its own read
transaction and must be used by one thread at a time (open one cursor per thread). A LevelDB
:class:`DB` may also be shared, but each cursor wraps a LevelDB iterator that is not thread-safe:
again one cursor per thread. A :class:`Transaction` buffers its records in memory and must not be
shared between threads. A read-mode LMDB reopens itself when used in a forked child process and can
be pickled (it reopens by path), so it can be handed to data-loader workers; LevelDB cannot be shared
between processes at all.

Corrupt records (values that do not parse) are the caller's concern: this module moves bytes.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import plyvel

from caffe.errors import DataError

PathLike = str | os.PathLike

MODES = ("read", "write", "new")

#: LMDB's starting map size for new and written databases; it doubles on demand (Caffe starts from
#: liblmdb's default and doubles the same way).
DEFAULT_LMDB_MAP_SIZE = 1 << 26

# Caffe's leveldb::Options (db_leveldb.cpp).
LEVELDB_BLOCK_SIZE = 65536
LEVELDB_WRITE_BUFFER_SIZE = 268435456
LEVELDB_MAX_OPEN_FILES = 100

#: ``Cursor.seek_index`` keeps every so many keys of its counting pass (to come back without a second pass).
_INDEX_STRIDE = 1024

_BACKEND_NAMES = {"lmdb": "lmdb", "leveldb": "leveldb"}
_LEVELDB_FILE = re.compile(r"^(CURRENT|LOCK|MANIFEST-\d+|\d+\.(ldb|sst|log))$")


# ---------------------------------------------------------------------------------------------
# keys and backend names


def item_key(index: int, name: str) -> bytes:
    """The key ``convert_imageset`` gives the ``index``-th listed file: ``b"%08d_%s"``."""
    return b"%08d_%s" % (index, name.encode("utf-8") if isinstance(name, str) else name)


def feature_key(index: int) -> bytes:
    """The key ``extract_features`` gives the ``index``-th feature: ``b"%010d"``."""
    return b"%010d" % index


def backend_name(backend: str | int) -> str:
    """``"lmdb"`` or ``"leveldb"`` from a name (any case) or a ``DataParameter.DB`` enum value."""
    from caffe.proto import caffe_pb2 as pb

    if isinstance(backend, bool):
        raise DataError(f"unknown database backend {backend!r} (use 'lmdb' or 'leveldb')")
    if isinstance(backend, int):
        if backend == pb.DataParameter.LMDB:
            return "lmdb"
        if backend == pb.DataParameter.LEVELDB:
            return "leveldb"
        raise DataError(f"unknown database backend {backend} (DataParameter.DB is LEVELDB=0 or LMDB=1)")
    name = _BACKEND_NAMES.get(str(backend).lower())
    if name is None:
        raise DataError(f"unknown database backend {backend!r} (use 'lmdb' or 'leveldb')")
    return name


def _looks_like(path: Path) -> str | None:
    """Which backend a folder's files belong to, or None (path must be an existing folder)."""
    try:
        names = os.listdir(path)
    except PermissionError:
        raise DataError(f"{path}: permission denied reading the database folder") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the database folder: {e.strerror}") from None
    if "data.mdb" in names:
        return "lmdb"
    if "CURRENT" in names or any(_LEVELDB_FILE.match(n) for n in names):
        return "leveldb"
    return None


def detect_backend(path: PathLike) -> str:
    """``"lmdb"`` or ``"leveldb"`` from the files in the database folder ``path``.

    A folder with ``data.mdb`` is an LMDB; one with ``CURRENT``, ``MANIFEST-*``, ``*.ldb``/``*.sst``
    or numbered ``*.log`` files is a LevelDB. Anything else is a DataError.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: no such database (neither an LMDB nor a LevelDB folder exists there)")
    if not p.is_dir():
        raise DataError(f"{path}: is a file, not a database folder (an LMDB or LevelDB is a folder)")
    kind = _looks_like(p)
    if kind is None:
        raise DataError(f"{path}: not a database folder (no data.mdb for LMDB, no CURRENT for LevelDB)")
    return kind


def _a(label: str) -> str:
    return f"an {label}" if label == "LMDB" else f"a {label}"


def _mode_name(mode: str) -> str:
    m = str(mode).lower()
    if m not in MODES:
        raise DataError(f"unknown database mode {mode!r} (use 'read', 'write' or 'new')")
    return m


def _error_text(e: BaseException) -> str:
    arg = e.args[0] if e.args else str(e)
    if isinstance(arg, bytes):
        arg = arg.decode("utf-8", "replace")
    return str(arg)


def _check_key(key: bytes | str) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise DataError(f"database keys must be bytes or str, not {type(key).__name__}")


def _check_value(value: bytes) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise DataError(f"database values must be bytes, not {type(value).__name__} (serialize messages first)")


# ---------------------------------------------------------------------------------------------
# opening


def open_db(
    path: PathLike,
    backend: str | int | None = "lmdb",
    mode: str = "read",
    *,
    map_size: int = DEFAULT_LMDB_MAP_SIZE,
    readahead: bool = True,
) -> DB:
    """Open the database at ``path`` (Caffe's ``GetDB(backend)->Open(path, mode)``).

    ``backend``: ``"lmdb"``/``"leveldb"`` (any case), a ``caffe_pb2.DataParameter.DB`` value, or
    None to detect it from the folder (``read``/``write`` of an existing database only).
    ``mode``: ``"read"``, ``"write"`` or ``"new"`` (see the module docstring).
    ``map_size`` (LMDB, write modes): starting map size in bytes; it doubles whenever a commit needs
    more. ``readahead`` (LMDB, read mode): OS read-ahead; on for sequential scans as Caffe does
    (turning it off made a cold sequential scan ~30x slower here), off only helps random access to
    databases far larger than RAM.
    """
    mode = _mode_name(mode)
    if backend is None:
        if mode == "new":
            raise DataError(f"{path}: a new database needs a backend ('lmdb' or 'leveldb')")
        if mode == "write" and not Path(path).exists():
            raise DataError(f"{path}: no such database; name the backend ('lmdb' or 'leveldb') to create one")
        backend = detect_backend(path)
    name = backend_name(backend)
    if name == "lmdb":
        return LMDB(path, mode, map_size=map_size, readahead=readahead)
    return LevelDB(path, mode)


def _other_hint(path: Path, label: str) -> str:
    """For a missing folder: a hint when a sibling with the other backend's name exists."""
    mine, other = ("lmdb", "leveldb") if label == "LMDB" else ("leveldb", "lmdb")
    name = path.name
    if mine in name.lower():
        idx = name.lower().rfind(mine)
        sibling = path.with_name(name[:idx] + other + name[idx + len(mine) :])
        if sibling.is_dir():
            return f"; {sibling} exists - is the backend {other.upper()}?"
    elif other in name.lower():
        return (
            f"; the name suggests {_a('LevelDB' if other == 'leveldb' else 'LMDB')} - is the backend {other.upper()}?"
        )
    return ""


def _prepare_folder(path: Path, mode: str, label: str) -> None:
    """Checks and folder creation shared by both backends before the library opens ``path``."""
    other = "LevelDB" if label == "LMDB" else "LMDB"
    if mode == "read":
        if not path.exists():
            raise DataError(f"{path}: no such {label} database (folder not found){_other_hint(path, label)}")
        if not path.is_dir():
            raise DataError(f"{path}: is a file, not {_a(label)} database folder")
        kind = _looks_like(path)
        mine = label.lower()
        if kind != mine:
            if kind is not None:
                raise DataError(
                    f"{path}: not {_a(label)} database - the folder holds {_a(other)} "
                    f"(use backend {other.upper()}, or detect_backend())"
                )
            what = "data.mdb" if label == "LMDB" else "CURRENT"
            raise DataError(f"{path}: no such {label} database (the folder has no {what})")
        if not os.access(path, os.R_OK | os.X_OK):
            raise DataError(f"{path}: permission denied reading the {label} database")
        return
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: is a file, not {_a(label)} database folder")
    if mode == "new":
        if path.exists():
            try:
                names = os.listdir(path)
            except OSError as e:
                raise DataError(f"{path}: cannot read the folder: {e.strerror}") from None
            if names:
                kind = _looks_like(path)
                what = f"an existing {'LMDB' if kind == 'lmdb' else 'LevelDB'} database" if kind else "other files"
                raise DataError(
                    f"{path}: cannot create a new {label} database: the folder exists and holds {what} "
                    "(remove it, or open it with mode 'write' to add records)"
                )
    elif path.exists():
        kind = _looks_like(path)
        if kind is not None and kind != label.lower():
            raise DataError(
                f"{path}: not {_a(label)} database - the folder holds {_a(other)} (use backend {other.upper()})"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise DataError(f"{path}: permission denied creating the {label} database folder") from None
    except OSError as e:
        raise DataError(f"{path}: cannot create the {label} database folder: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataError(f"{path}: permission denied writing the {label} database")


# ---------------------------------------------------------------------------------------------
# the interface


class Cursor:
    """Caffe's ``db::Cursor``: a position in key order, starting at the first record.

    ``valid`` is False past the last record; ``key``/``value`` are bytes copies. Iterating yields
    ``(key, value)`` from the current position to the end. Use from one thread at a time.
    """

    def __init__(self, db: DB) -> None:
        self._db = db
        self._closed = False
        self._pid = os.getpid()

    # Caffe's API ---------------------------------------------------------------------------
    def seek_to_first(self) -> None:
        raise NotImplementedError

    def next(self) -> None:
        raise NotImplementedError

    @property
    def key(self) -> bytes:
        raise NotImplementedError

    @property
    def value(self) -> bytes:
        raise NotImplementedError

    @property
    def valid(self) -> bool:
        raise NotImplementedError

    # positioning without reading values (neocaffe) -----------------------------------------
    def seek(self, key: bytes | str) -> None:
        """Move to the first record whose key is ``key`` or sorts after it (invalid if none does)."""
        raise NotImplementedError

    def seek_index(self, index: int) -> None:
        """Move to the record ``index`` places after the first, going round again from the first record
        past the last one (record ``index % len(db)``); an empty database leaves the cursor invalid.

        Reads keys only (no value is read or copied) in at most one pass over them: when ``index`` is
        beyond the last record, the pass has counted the records and kept every
        ``_INDEX_STRIDE``-th key, so the cursor seeks the nearest one and steps fewer than that many.
        """
        self._check_open()
        if index < 0:
            raise ValueError(f"seek_index: index must not be negative, got {index}")
        marks: list[bytes] = []
        count = 0
        with contextlib.closing(self._keys()) as keys:
            for key in keys:
                if count == index:
                    self.seek(key)
                    return
                if count % _INDEX_STRIDE == 0:
                    marks.append(key)
                count += 1
        if count == 0:
            self._set_past_end()
            return
        index %= count
        with contextlib.closing(self._keys(marks[index // _INDEX_STRIDE])) as keys:
            for _ in range(index % _INDEX_STRIDE):
                next(keys)
            self.seek(next(keys))

    def _keys(self, start: bytes | None = None) -> Iterator[bytes]:
        """The keys in order from the first record (or from ``start``), through a separate keys-only
        iterator: this cursor does not move."""
        raise NotImplementedError

    def _set_past_end(self) -> None:
        raise NotImplementedError

    # Python --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        while self.valid:
            item = (self.key, self.value)
            self.next()
            yield item

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise DataError(f"{self._db.path}: cursor used after it (or its database) was closed")
        if self._pid != os.getpid():
            raise DataError(f"{self._db.path}: a cursor cannot be used across a fork; open a new one in this process")

    def _check_valid(self) -> None:
        self._check_open()
        if not self.valid:
            raise DataError(f"{self._db.path}: cursor is past the last record (seek_to_first() to restart)")


class Transaction:
    """Caffe's ``db::Transaction``: ``put`` buffers records in memory, ``commit`` writes them at once.

    After a commit the transaction is empty and can be reused. As a context manager it commits on a
    normal exit and drops the buffered records on an exception. Not for sharing between threads.
    """

    def __init__(self, db: DB) -> None:
        self._db = db
        self._pending: list[tuple[bytes, bytes]] = []

    def put(self, key: bytes | str, value: bytes) -> None:
        """Buffer one record; an existing key is overwritten at commit."""
        self._pending.append((_check_key(key), _check_value(value)))

    def commit(self) -> None:
        """Write the buffered records in one atomic batch."""
        self._db._check_open()
        self._write(self._pending)
        self._pending = []

    def abort(self) -> None:
        """Drop the buffered records."""
        self._pending = []

    def __len__(self) -> int:
        return len(self._pending)

    def _write(self, items: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class DB:
    """Caffe's ``db::DB``: an open database (see the module docstring for modes and threads)."""

    backend: str = ""

    def __init__(self, path: PathLike, mode: str) -> None:
        self.path = str(path)
        self.mode = _mode_name(mode)
        self._cursors: weakref.WeakSet[Cursor] = weakref.WeakSet()
        self._closed = False

    def cursor(self) -> Cursor:
        """A new cursor at the first record (its own snapshot of the database)."""
        self._check_open()
        c = self._new_cursor()
        self._cursors.add(c)
        return c

    def transaction(self) -> Transaction:
        """A new, empty write transaction (write and new modes only)."""
        self._check_open()
        if self.mode == "read":
            raise DataError(f"{self.path}: {self._label} database opened read-only; open it with mode 'write'")
        return self._new_transaction()

    def get(self, key: bytes | str) -> bytes | None:
        """The value stored under ``key``, or None."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        """All ``(key, value)`` pairs in key order, through a new cursor."""
        cursor = self.cursor()
        try:
            yield from cursor
        finally:
            cursor.close()

    def close(self) -> None:
        """Close the database and every cursor opened from it (idempotent)."""
        if self._closed:
            return
        for c in list(self._cursors):
            c.close()
        self._close()
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __del__(self) -> None:
        # A handle dropped without close() must still release its share of an LMDB environment.
        with contextlib.suppress(Exception):
            if getattr(self, "_ready", False):
                self.close()

    def __enter__(self) -> DB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.mode
        return f"<{type(self).__name__} {self.path!r} ({state})>"

    @property
    def _label(self) -> str:
        return "LMDB" if self.backend == "lmdb" else "LevelDB"

    def _check_open(self) -> None:
        if self._closed:
            raise DataError(f"{self.path}: {self._label} database used after close()")

    def _new_cursor(self) -> Cursor:
        raise NotImplementedError

    def _new_transaction(self) -> Transaction:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# LMDB


class LMDBCursor(Cursor):
    def __init__(self, db: LMDB, env: lmdb.Environment) -> None:
        super().__init__(db)
        try:
            self._txn = env.begin(write=False, buffers=False)
            self._cur = self._txn.cursor()
        except lmdb.Error as e:
            raise DataError(f"{db.path}: cannot read LMDB database: {_error_text(e)}") from None
        self._valid = False
        self.seek_to_first()

    def seek_to_first(self) -> None:
        self._check_open()
        self._valid = self._cur.first()

    def next(self) -> None:
        self._check_valid()
        self._valid = self._cur.next()

    @property
    def key(self) -> bytes:
        self._check_valid()
        return self._cur.key()

    @property
    def value(self) -> bytes:
        self._check_valid()
        return self._cur.value()

    @property
    def valid(self) -> bool:
        return self._valid and not self._closed

    def seek(self, key: bytes | str) -> None:
        self._check_open()
        self._valid = self._cur.set_range(_check_key(key))

    def seek_index(self, index: int) -> None:
        # LMDB keeps the number of records: the walk stops before the end and no key is copied
        self._check_open()
        if index < 0:
            raise ValueError(f"seek_index: index must not be negative, got {index}")
        count = int(self._txn.stat(self._db.env.open_db())["entries"])
        self._valid = self._cur.first()
        step = self._cur.next
        for _ in range(index % count if count else 0):
            step()

    def _set_past_end(self) -> None:
        self._valid = False

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        self._check_open()
        cur = self._cur
        while self._valid and not self._closed:
            item = cur.item()
            self._valid = cur.next()
            yield item

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._valid = False
            try:
                self._cur.close()
                self._txn.abort()
            except lmdb.Error:
                pass


class LMDBTransaction(Transaction):
    _db: LMDB

    def _write(self, items: list[tuple[bytes, bytes]]) -> None:
        db = self._db
        env = db.env
        while True:
            try:
                with env.begin(write=True) as txn:
                    cur = txn.cursor()
                    for key, value in items:
                        cur.put(key, value)
                return
            except lmdb.MapFullError:
                db._grow()
            except lmdb.BadValsizeError:
                bad = next((k for k, _ in items if not 0 < len(k) <= env.max_key_size()), None)
                if bad is not None:
                    raise DataError(
                        f"{db.path}: LMDB key {bad[:60]!r} has {len(bad)} bytes; LMDB keys need 1 to "
                        f"{env.max_key_size()} bytes"
                    ) from None
                raise DataError(f"{db.path}: LMDB rejected a record size") from None
            except lmdb.Error as e:
                raise DataError(f"{db.path}: LMDB write failed: {_error_text(e)}") from None


def _file_key(path: str) -> tuple[int, int] | None:
    """(device, inode) of a file or folder: the same database whatever path names it; None if missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _lmdb_file_key(path: str) -> tuple[int, int] | None:
    return _file_key(os.path.join(path, "data.mdb"))


class _Shared:
    """What a library allows to open once per database and process (an LMDB environment, a plyvel handle),
    counted: every :class:`DB` on that database holds it, the last one to close closes it."""

    key: tuple[int, int] | None
    refs: int = 0

    def close(self) -> None:
        raise NotImplementedError


_S = TypeVar("_S", bound=_Shared)


class _SharedRegistry:
    """The :class:`_Shared` objects of one backend, by the (device, inode) that names their database."""

    def __init__(self) -> None:
        self.items: dict[tuple[int, int], _Shared] = {}
        # Open and close under it: a concurrent open must not race a close. Re-entrant: the garbage collector
        # may finalize an abandoned reader (a data layer's record generator) while this thread holds the lock,
        # and its release runs here, on an object other than the one being acquired.
        self.lock = threading.RLock()

    def acquire(
        self, key: tuple[int, int] | None, make: Callable[[], _S], check: Callable[[_S], None] | None = None
    ) -> _S:
        """The shared object for ``key`` (``check`` may refuse reusing it), else a new one from ``make``;
        counted."""
        with self.lock:
            shared = self.items.get(key) if key is not None else None
            if shared is None:
                shared = make()
                if shared.key is not None:
                    self.items[shared.key] = shared
            elif check is not None:
                check(shared)  # type: ignore[arg-type]  # one registry per backend: its own kind
            shared.refs += 1
            return shared  # type: ignore[return-value]

    def release(self, shared: _Shared) -> None:
        """One holder fewer; the last closes it."""
        with self.lock:
            shared.refs -= 1
            if shared.refs > 0:
                return
            if shared.key is not None and self.items.get(shared.key) is shared:
                del self.items[shared.key]
            shared.close()


class _SharedEnv(_Shared):
    """One python-lmdb environment per database file and process (LMDB forbids opening one twice:
    its fcntl locks belong to the process), shared by every :class:`LMDB` handle on that file."""

    def __init__(self, path: str, writable: bool, map_size: int, readahead: bool) -> None:
        self.path = path
        self.writable = writable
        self.map_size = map_size
        self.readahead = readahead
        self.refs = 0
        self.lock = threading.Lock()
        self.env = self._open()
        self.pid = os.getpid()
        self.key = _lmdb_file_key(path)

    def _open(self) -> lmdb.Environment:
        try:
            if not self.writable:
                return lmdb.open(
                    self.path, readonly=True, lock=False, create=False, subdir=True, readahead=self.readahead
                )
            return lmdb.open(self.path, map_size=self.map_size, create=False, subdir=True, mode=0o664)
        except lmdb.InvalidError:
            raise DataError(f"{self.path}: data.mdb is not an LMDB file (corrupt or another format)") from None
        except lmdb.VersionMismatchError as e:
            raise DataError(f"{self.path}: LMDB version mismatch: {_error_text(e)}") from None
        except lmdb.Error as e:
            text = _error_text(e)
            if "ermission denied" in text or "EACCES" in text:
                raise DataError(f"{self.path}: permission denied opening the LMDB database") from None
            raise DataError(f"{self.path}: cannot open LMDB database: {text}") from None

    def get(self) -> lmdb.Environment:
        """The environment, mapped afresh in a forked child (read-only environments only)."""
        if self.pid != os.getpid():
            with self.lock:
                if self.pid != os.getpid():
                    if self.writable:
                        raise DataError(f"{self.path}: an LMDB opened for writing cannot be used in a forked process")
                    # Closing the inherited copy only unmaps it in this process (no locks are held in
                    # read mode); python-lmdb refuses a second open while it is registered.
                    with contextlib.suppress(lmdb.Error):
                        self.env.close()
                    self.env = self._open()
                    self.pid = os.getpid()
        return self.env

    def close(self) -> None:
        with contextlib.suppress(lmdb.Error):
            self.env.close()


_LMDB_ENVS = _SharedRegistry()


class LMDB(DB):
    """An LMDB folder (``data.mdb``, ``lock.mdb``); see the module docstring.

    Several handles on one database in a process share one environment. A database already open
    for writing in this process can also be opened for reading; one open read-only cannot be
    opened for writing until those handles are closed.
    """

    backend = "lmdb"

    def __init__(
        self, path: PathLike, mode: str = "read", *, map_size: int = DEFAULT_LMDB_MAP_SIZE, readahead: bool = True
    ) -> None:
        super().__init__(path, mode)
        self._readahead = bool(readahead)
        _prepare_folder(Path(self.path), self.mode, "LMDB")
        writable = self.mode != "read"

        def check(shared: _SharedEnv) -> None:
            if writable and not shared.writable:
                raise DataError(
                    f"{self.path}: LMDB database is open read-only in this process; close those handles before "
                    "opening it for writing (LMDB allows one environment per database and process)"
                )

        self._shared = _LMDB_ENVS.acquire(
            _lmdb_file_key(self.path),
            lambda: _SharedEnv(self.path, writable, int(map_size), self._readahead),
            check,
        )
        self._ready = True

    @property
    def env(self) -> lmdb.Environment:
        """The python-lmdb environment, shared with other handles on this database in this process."""
        self._check_open()
        return self._shared.get()

    @property
    def map_size(self) -> int:
        """The current size of the memory map in bytes."""
        return int(self.env.info()["map_size"])

    def _grow(self) -> None:
        size = self.map_size * 2
        try:
            self.env.set_mapsize(size)
        except lmdb.Error as e:
            raise DataError(
                f"{self.path}: cannot grow the LMDB map to {size >> 20} MiB ({_error_text(e)}); "
                "close the cursors open on this database in this process before committing"
            ) from None

    def _new_cursor(self) -> Cursor:
        return LMDBCursor(self, self.env)

    def _new_transaction(self) -> Transaction:
        self.env  # noqa: B018 - reopens or refuses after a fork
        return LMDBTransaction(self)

    def get(self, key: bytes | str) -> bytes | None:
        with self.env.begin(write=False) as txn:
            return txn.get(_check_key(key))

    def __len__(self) -> int:
        return int(self.env.stat()["entries"])

    def _close(self) -> None:
        _LMDB_ENVS.release(self._shared)

    def __reduce__(self) -> tuple[Any, ...]:
        if self.mode != "read":
            raise TypeError(f"{self.path}: an LMDB opened for writing cannot be pickled")
        return (_reopen_lmdb, (self.path, self._readahead))


def _reopen_lmdb(path: str, readahead: bool) -> LMDB:
    return LMDB(path, "read", readahead=readahead)


# ---------------------------------------------------------------------------------------------
# LevelDB


class LevelDBCursor(Cursor):
    def __init__(self, db: LevelDB, handle: plyvel.DB) -> None:
        super().__init__(db)
        self._handle = handle
        self._it = handle.iterator()
        self._item: tuple[bytes, bytes] | None = None
        self.seek_to_first()

    def _advance(self) -> None:
        try:
            self._item = next(self._it)
        except StopIteration:
            self._item = None
        except plyvel.Error as e:
            self._item = None
            raise DataError(f"{self._db.path}: cannot read LevelDB database: {_error_text(e)}") from None

    def seek_to_first(self) -> None:
        self._check_open()
        self._it.seek_to_start()
        self._advance()

    def next(self) -> None:
        self._check_valid()
        self._advance()

    @property
    def key(self) -> bytes:
        self._check_valid()
        assert self._item is not None
        return self._item[0]

    @property
    def value(self) -> bytes:
        self._check_valid()
        assert self._item is not None
        return self._item[1]

    @property
    def valid(self) -> bool:
        return self._item is not None and not self._closed

    def seek(self, key: bytes | str) -> None:
        self._check_open()
        self._it.seek(_check_key(key))
        self._advance()

    def _keys(self, start: bytes | None = None) -> Iterator[bytes]:
        try:
            with self._handle.iterator(include_value=False) as keys:
                if start is not None:
                    keys.seek(start)
                yield from keys
        except plyvel.Error as e:
            raise DataError(f"{self._db.path}: cannot read LevelDB database: {_error_text(e)}") from None

    def _set_past_end(self) -> None:
        self._item = None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._item = None
            self._it.close()


class LevelDBTransaction(Transaction):
    _db: LevelDB

    def _write(self, items: list[tuple[bytes, bytes]]) -> None:
        try:
            with self._db._handle.write_batch() as batch:
                for key, value in items:
                    batch.put(key, value)
        except plyvel.Error as e:
            raise DataError(f"{self._db.path}: LevelDB write failed: {_error_text(e)}") from None


class _SharedLevelDB(_Shared):
    """One plyvel handle per LevelDB folder and process (LevelDB's LOCK file admits one opener), shared
    by every :class:`LevelDB` handle on that folder: a TRAIN and a TEST net may read the same database."""

    def __init__(self, path: str, mode: str) -> None:
        self.path = path
        self.refs = 0
        try:
            self.handle = plyvel.DB(
                path,
                create_if_missing=mode != "read",
                error_if_exists=mode == "new",
                block_size=LEVELDB_BLOCK_SIZE,
                write_buffer_size=LEVELDB_WRITE_BUFFER_SIZE,
                max_open_files=LEVELDB_MAX_OPEN_FILES,
            )
        except plyvel.IOError as e:
            text = _error_text(e)
            if "lock" in text.lower():
                raise DataError(
                    f"{path}: LevelDB database is locked - another process has it open; LevelDB allows one "
                    "process at a time (convert it to LMDB to share it between processes)"
                ) from None
            if "ermission denied" in text:
                raise DataError(f"{path}: permission denied opening the LevelDB database") from None
            raise DataError(f"{path}: cannot open LevelDB database: {text}") from None
        except plyvel.CorruptionError as e:
            raise DataError(f"{path}: corrupt LevelDB database: {_error_text(e)}") from None
        except plyvel.Error as e:
            raise DataError(f"{path}: cannot open LevelDB database: {_error_text(e)}") from None
        self.key = _file_key(path)

    def close(self) -> None:
        self.handle.close()


_LEVELDB_HANDLES = _SharedRegistry()


class LevelDB(DB):
    """A LevelDB folder, opened with Caffe's options; see the module docstring.

    Several handles on one database in a process share one plyvel handle (opening it for ``"new"``
    while it is open here is the usual "already exists" error).
    """

    backend = "leveldb"

    def __init__(self, path: PathLike, mode: str = "read") -> None:
        super().__init__(path, mode)
        _prepare_folder(Path(self.path), self.mode, "LevelDB")
        self._shared = _LEVELDB_HANDLES.acquire(_file_key(self.path), lambda: _SharedLevelDB(self.path, self.mode))
        self._handle = self._shared.handle
        self._pid = os.getpid()
        self._ready = True

    def _check_open(self) -> None:
        super()._check_open()
        if self._pid != os.getpid():
            raise DataError(
                f"{self.path}: a LevelDB handle cannot be used in a forked process (LevelDB allows one process; "
                "read it in the parent, or convert the database to LMDB)"
            )

    def _new_cursor(self) -> Cursor:
        return LevelDBCursor(self, self._handle)

    def _new_transaction(self) -> Transaction:
        return LevelDBTransaction(self)

    def get(self, key: bytes | str) -> bytes | None:
        self._check_open()
        return self._handle.get(_check_key(key))

    def __len__(self) -> int:
        self._check_open()
        with self._handle.iterator(include_value=False) as it:
            return sum(1 for _ in it)

    def close(self) -> None:
        if getattr(self, "_pid", None) not in (None, os.getpid()):
            self._closed = True  # an inherited copy: leave the parent's LevelDB alone
            return
        super().close()

    def _close(self) -> None:
        _LEVELDB_HANDLES.release(self._shared)
