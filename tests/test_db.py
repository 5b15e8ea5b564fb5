"""Caffe's databases: LMDB and LevelDB written and read through the real libraries, with Caffe's modes."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import lmdb
import plyvel
import pytest

from caffe.data.db import LMDB, LevelDB, detect_backend, feature_key, item_key, open_db
from caffe.errors import DataError
from caffe.proto import caffe_pb2 as pb

BACKENDS = ["lmdb", "leveldb"]
N = 2500  # crosses two 1000-record commit boundaries, as convert_imageset commits


def records(n: int = N) -> list[tuple[bytes, bytes]]:
    # Values of varied length, including empty and binary bytes; keys in the convert_imageset format.
    return [
        (item_key(i, f"cls{i % 7}/img_{i}.jpg"), bytes([i % 256]) * (i % 97) + b"\x00\xff" + b"%d" % i)
        for i in range(n)
    ]


def write_db(path: Path, backend: str, items: list[tuple[bytes, bytes]], **kw) -> None:
    with open_db(path, backend, "new", **kw) as db:
        txn = db.transaction()
        for count, (k, v) in enumerate(items, 1):
            txn.put(k, v)
            if count % 1000 == 0:
                txn.commit()
                txn = db.transaction()
        txn.commit()


@pytest.mark.parametrize("backend", BACKENDS)
def test_write_then_read_back(tmp_path: Path, backend: str):
    path = tmp_path / f"train_{backend}"
    items = records()
    write_db(path, backend, list(reversed(items)))  # written out of order, read back in key order
    with open_db(path, backend, "read") as db:
        assert len(db) == N
        cur = db.cursor()
        got = []
        while cur.valid:
            got.append((cur.key, cur.value))
            cur.next()
        assert got == sorted(items)
        assert not cur.valid
        cur.seek_to_first()  # Caffe's data reader wraps around this way
        assert (cur.key, cur.value) == items[0]
        assert list(db) == sorted(items)
        assert db.get(items[5][0]) == items[5][1]
        assert db.get(b"nope") is None
        with pytest.raises(DataError, match="read-only"):
            db.transaction()
    assert db.closed
    with pytest.raises(DataError, match="after close"):
        db.cursor()


@pytest.mark.parametrize("backend", BACKENDS)
def test_layout_is_the_libraries_own(tmp_path: Path, backend: str):
    path = tmp_path / "db"
    write_db(path, backend, records(10))
    names = set(os.listdir(path))
    if backend == "lmdb":
        assert {"data.mdb", "lock.mdb"} <= names
        env = lmdb.open(str(path), readonly=True, lock=False)  # what Caffe's mdb_env_open sees
        with env.begin() as txn:
            assert txn.stat()["entries"] == 10
            assert txn.get(item_key(3, "cls3/img_3.jpg")) == records(10)[3][1]
        env.close()
    else:
        assert "CURRENT" in names
        raw = plyvel.DB(str(path))
        assert list(raw) == records(10)
        raw.close()
    assert detect_backend(path) == backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_reads_a_database_made_by_the_library(tmp_path: Path, backend: str):
    path = tmp_path / "made_elsewhere"
    datum = pb.Datum(channels=1, height=2, width=2, data=b"\x01\x02\x03\x04", label=7)
    if backend == "lmdb":
        env = lmdb.open(str(path), map_size=1 << 20)
        with env.begin(write=True) as txn:
            txn.put(feature_key(0), datum.SerializeToString())
        env.close()
    else:
        raw = plyvel.DB(str(path), create_if_missing=True)
        raw.put(feature_key(0), datum.SerializeToString())
        raw.close()
    with open_db(path, pb.DataParameter.LMDB if backend == "lmdb" else pb.DataParameter.LEVELDB) as db:
        ((key, value),) = list(db)
    assert key == b"0000000000"
    assert pb.Datum.FromString(value) == datum


@pytest.mark.parametrize("backend", BACKENDS)
def test_write_mode_appends_and_overwrites(tmp_path: Path, backend: str):
    path = tmp_path / "db"
    write_db(path, backend, [(b"a", b"1"), (b"b", b"2")])
    with open_db(path, backend.upper(), "write") as db, db.transaction() as txn:
        txn.put(b"b", b"two")
        txn.put("c", b"3")  # str keys are UTF-8
    with open_db(path, backend, "write") as db:
        txn = db.transaction()
        txn.put(b"d", b"4")
        txn.abort()
        txn.commit()
        assert len(db) == 3
    with open_db(path, None) as db:  # backend detected
        assert list(db) == [(b"a", b"1"), (b"b", b"two"), (b"c", b"3")]


def test_write_mode_creates_a_missing_database(tmp_path: Path):
    for backend in BACKENDS:
        with open_db(tmp_path / "sub" / backend, backend, "write") as db:
            db.transaction().commit()
            assert len(db) == 0
        assert detect_backend(tmp_path / "sub" / backend) == backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_refuses_an_existing_database(tmp_path: Path, backend: str):
    path = tmp_path / "db"
    write_db(path, backend, records(3))
    with pytest.raises(DataError, match=r"db: cannot create a new .* exists and holds an existing"):
        open_db(path, backend, "new")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="holds other files"):
        open_db(tmp_path / "other", backend, "new")
    (tmp_path / "empty").mkdir()  # an empty folder is fine (e.g. from mkdtemp)
    open_db(tmp_path / "empty", backend, "new").close()
    with open_db(path, backend) as db:  # untouched
        assert len(db) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_database_names_the_path(tmp_path: Path, backend: str):
    path = tmp_path / f"mnist_train_{backend}"
    label = "LMDB" if backend == "lmdb" else "LevelDB"
    with pytest.raises(DataError, match=rf"^{path}: no such {label} database") as e:
        open_db(path, backend)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=rf"^{path}: no such database"):
        detect_backend(path)


def test_wrong_backend_suggests_the_other(tmp_path: Path):
    write_db(tmp_path / "mnist_train_leveldb", "leveldb", records(3))
    write_db(tmp_path / "x_lmdb", "lmdb", records(3))
    with pytest.raises(DataError, match=r"holds a LevelDB .*use backend LEVELDB"):
        open_db(tmp_path / "mnist_train_leveldb", "lmdb")
    with pytest.raises(DataError, match=r"holds an LMDB .*use backend LMDB"):
        open_db(tmp_path / "x_lmdb", "leveldb")
    # a missing LMDB whose LevelDB sibling exists (Caffe's examples come in both flavours)
    with pytest.raises(DataError, match="mnist_train_leveldb exists - is the backend LEVELDB"):
        open_db(tmp_path / "mnist_train_lmdb", "lmdb")


def test_not_a_database(tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="not a database folder"):
        detect_backend(tmp_path / "images")
    with pytest.raises(DataError, match=r"no such LMDB database .*no data.mdb"):
        open_db(tmp_path / "images", "lmdb")
    (tmp_path / "file.mdb").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file"):
        open_db(tmp_path / "file.mdb", "lmdb")
    with pytest.raises(DataError, match="is a file"):
        detect_backend(tmp_path / "file.mdb")
    bad = tmp_path / "bad_lmdb"
    bad.mkdir()
    (bad / "data.mdb").write_bytes(os.urandom(20000))
    with pytest.raises(DataError, match=r"bad_lmdb: data.mdb is not an LMDB file"):
        open_db(bad, "lmdb")
    with pytest.raises(DataError, match="unknown database backend 'rocksdb'"):
        open_db(bad, "rocksdb")
    with pytest.raises(DataError, match="unknown database mode"):
        open_db(bad, "lmdb", "append")


def test_leveldb_handles_share_one_opener_per_process(tmp_path: Path):
    """LevelDB admits one opener: handles in this process share it (a TRAIN and a TEST net on one database),
    another process is refused with a clear error."""
    from caffe.data import db as dbmod

    write_db(tmp_path / "db", "leveldb", records(3))
    first = open_db(tmp_path / "db", "leveldb")
    (tmp_path / "sub").mkdir()
    second = open_db(tmp_path / "sub" / ".." / "db", "leveldb")  # another spelling of the same folder
    with first.cursor() as a, second.cursor() as b:
        assert [k for k, _ in a] == [k for k, _ in b] and len(second) == 3
    other = subprocess.run(
        [sys.executable, "-c", f"from caffe.data.db import open_db; open_db({str(tmp_path / 'db')!r}, 'leveldb')"],
        capture_output=True,
        text=True,
    )
    assert other.returncode != 0 and "locked - another process has it open" in other.stderr
    first.close()
    assert second.get(records(3)[1][0]) == records(3)[1][1]  # still open through the other handle
    second.close()
    # the last handle closed the database (other tests' readers on this worker may still be open)
    assert dbmod._file_key(str(tmp_path / "db")) not in dbmod._LEVELDB_HANDLES.items
    with open_db(tmp_path / "db", "leveldb", "write") as db:  # and it can be opened again
        assert len(db) == 3


def in_forked_child(fn) -> str:
    """``fn()``'s text (or its error) from a forked child process."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running any cleanup of the parent's state
        try:
            text = fn()
        except BaseException as e:
            text = f"{type(e).__name__}: {e}"
        os.write(w, text.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return text


def test_lmdb_concurrent_readers(tmp_path: Path):
    path = tmp_path / "db"
    items = records()
    write_db(path, "lmdb", items)
    results: dict[str, list] = {}
    errors: list[BaseException] = []
    with open_db(path, "lmdb") as shared, open_db(path, "lmdb") as second:
        barrier = threading.Barrier(3)

        def read(name: str, db) -> None:
            try:
                barrier.wait()
                with db.cursor() as cur:  # one cursor (read transaction) per thread
                    results[name] = [(k, v) for k, v in cur]
            except BaseException as e:
                errors.append(e)

        threads = [
            threading.Thread(target=read, args=("t1", shared)),
            threading.Thread(target=read, args=("t2", shared)),
            threading.Thread(target=read, args=("t3", second)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # and a forked process at the same time, reading through the handle it inherited
        out = in_forked_child(lambda: f"{len(shared)} {sum(1 for _ in shared)}")
    assert not errors
    assert results == {"t1": items, "t2": items, "t3": items}
    assert out == f"{N} {N}"


def test_lmdb_opens_and_closes_from_many_threads(tmp_path: Path):
    """Handles opened and closed concurrently (a web page loading thumbnails): a close never races an open."""
    path = tmp_path / "db"
    with open_db(path, "lmdb", "new") as db, db.transaction() as txn:
        txn.put("00000003", b"x" * 100)
    errors: list[str] = []

    def work() -> None:
        for _ in range(150):
            try:
                with open_db(path, "lmdb", "read") as db:
                    assert db.get("00000003") == b"x" * 100
            except Exception as e:  # collected: an exception in a thread would not fail the test
                errors.append(repr(e))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_fork_rules(tmp_path: Path):
    write_db(tmp_path / "a", "lmdb", records(5))
    write_db(tmp_path / "b", "leveldb", records(5))
    with open_db(tmp_path / "a") as lm, open_db(tmp_path / "b", "leveldb") as ldb:
        cursor = lm.cursor()
        text = in_forked_child(lambda: cursor.key.decode())
        assert text.startswith("DataError: ") and "across a fork" in text
        assert "cannot be used in a forked process" in in_forked_child(lambda: str(len(ldb)))
        with open_db(tmp_path / "w", "lmdb", "new") as writer:
            assert "opened for writing cannot be used in a forked" in in_forked_child(lambda: str(len(writer)))
        assert cursor.key == records(5)[0][0]  # the parent's handles are untouched
        assert len(ldb) == 5


def test_lmdb_readers_survive_pickling_and_read_only_folders(tmp_path: Path):
    path = tmp_path / "db"
    write_db(path, "lmdb", records(20))
    with open_db(path) as db:
        clone = pickle.loads(pickle.dumps(db))
        assert list(clone) == list(db)
        clone.close()
    os.remove(path / "lock.mdb")  # e.g. a database copied without its lock file
    with open_db(path) as db:
        assert len(db) == 20
    with open_db(path, "lmdb", "write") as db, pytest.raises(TypeError):
        pickle.dumps(db)


def test_lmdb_handles_share_one_environment(tmp_path: Path):
    path = tmp_path / "db"
    with open_db(path, "lmdb", "new") as writer:
        writer.transaction().commit()
        with open_db(path) as reader:  # readable while this process writes it
            with writer.transaction() as txn:
                txn.put(b"k", b"v")
            assert reader.get(b"k") == b"v"
            assert len(reader) == 1
    with open_db(path), pytest.raises(DataError, match="open read-only in this process"):
        open_db(path, "lmdb", "write")
    with open_db(path, "lmdb", "write") as writer:  # fine once the readers are closed
        assert len(writer) == 1
    forgotten = open_db(path)  # ... or dropped without close()
    del forgotten
    gc.collect()
    open_db(path, "lmdb", "write").close()


def test_lmdb_map_grows_on_demand(tmp_path: Path):
    path = tmp_path / "db"
    items = [(feature_key(i), os.urandom(3000)) for i in range(400)]  # ~1.2 MB into a 64 KiB map
    with open_db(path, "lmdb", "new", map_size=1 << 16) as db:
        start = db.map_size
        txn = db.transaction()
        for count, (k, v) in enumerate(items, 1):
            txn.put(k, v)
            if count % 150 == 0:
                txn.commit()
        txn.commit()
        assert db.map_size >= 16 * start
        assert db.map_size // start & (db.map_size // start - 1) == 0  # doubled, as Caffe does
    with open_db(path) as db:
        assert list(db) == items


def test_lmdb_bad_key(tmp_path: Path):
    with open_db(tmp_path / "db", "lmdb", "new") as db:
        txn = db.transaction()
        txn.put(b"k" * 600, b"v")
        with pytest.raises(DataError, match="LMDB keys need 1 to 511 bytes"):
            txn.commit()
        with pytest.raises(DataError, match="keys must be bytes or str"):
            txn.put(5, b"v")
        with pytest.raises(DataError, match="values must be bytes"):
            txn.put(b"k", pb.Datum())


def test_cursor_closed_with_database(tmp_path: Path):
    for backend in BACKENDS:
        write_db(tmp_path / backend, backend, records(3))
        db = open_db(tmp_path / backend, backend)
        cur = db.cursor()
        db.close()
        assert not cur.valid
        with pytest.raises(DataError, match="closed"):
            cur.seek_to_first()
        with pytest.raises(DataError, match=r"past the last record|closed"):
            _ = cur.key


@pytest.mark.parametrize("backend", BACKENDS)
def test_seek_and_seek_index(tmp_path: Path, backend: str):
    """seek: the first key at or after the one given; seek_index: record ``index % len`` (wrapping round),
    whichever side of the every-1024th-key marks it falls, and past the end of many passes."""
    items = records()
    write_db(tmp_path / "db", backend, items)
    with open_db(tmp_path / "db", backend, "read") as db:
        cur = db.cursor()
        cur.seek(items[17][0])
        assert (cur.key, cur.value) == items[17]
        cur.seek(items[17][0][:8] + b"~")  # between 17 and 18
        assert cur.key == items[18][0]
        cur.seek(b"\xff")
        assert not cur.valid
        for index in (0, 1, 1023, 1024, 1025, N - 1, N, N + 1, 2 * N + 1500, 10**15 + 3):
            cur.seek_index(index)
            assert cur.valid and (cur.key, cur.value) == items[index % N], index
            assert list(cur) == items[index % N :]  # and reads on from there
        with pytest.raises(ValueError):
            cur.seek_index(-1)
    write_db(tmp_path / "empty", backend, [])
    with open_db(tmp_path / "empty", backend, "read") as db:
        cur = db.cursor()
        cur.seek_index(3)
        assert not cur.valid


def test_keys():
    assert item_key(7, "n01440764/n01440764_10026.JPEG") == b"00000007_n01440764/n01440764_10026.JPEG"
    assert item_key(123456789, "a.jpg") == b"123456789_a.jpg"
    assert feature_key(42) == b"0000000042"


def test_backend_names():
    from caffe.data.db import backend_name

    assert backend_name("LMDB") == backend_name(pb.DataParameter.LMDB) == "lmdb"
    assert backend_name("LevelDB") == backend_name(pb.DataParameter.LEVELDB) == "leveldb"
    with pytest.raises(DataError):
        backend_name(5)
    assert LMDB.backend == "lmdb" and LevelDB.backend == "leveldb"


def test_a_release_during_an_acquire_on_the_same_thread_does_not_deadlock():
    """The garbage collector can finalize an abandoned reader while its thread holds the registry's lock
    (inside an open): that reader's release must go through (it once hung the test suite)."""
    from caffe.data.db import _SharedRegistry

    class Held:
        def __init__(self, key):
            self.key, self.refs, self.closed = key, 0, False

        def close(self):
            self.closed = True

    registry = _SharedRegistry()
    old = registry.acquire((1, 1), lambda: Held((1, 1)))

    def make():
        registry.release(old)  # what a finalizer run by the GC at this point does
        return Held((1, 2))

    done = []
    thread = threading.Thread(target=lambda: done.append(registry.acquire((1, 2), make)), daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert done and old.closed and done[0].refs == 1
    assert registry.items == {(1, 2): done[0]}
