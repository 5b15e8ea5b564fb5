"""Studio job store (SQLite + folders) and the safe path helpers."""

from __future__ import annotations

import os
import re
import threading

import pytest

from caffe.studio.paths import UnsafePathError, check_job_id, resolve_user_path, safe_join
from caffe.studio.store import JobNotFound, JobStore


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs")
    yield s
    s.close()


def test_create_get_list_update_delete(store, tmp_path):
    ds = store.create("dataset", "dolphins", {"resize_width": 256, "folder": "/data/x"})
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", ds.id)
    assert ds.status == "Initialized" and ds.params == {"resize_width": 256, "folder": "/data/x"}
    assert store.job_dir(ds.id) == tmp_path / "jobs" / ds.id and store.job_dir(ds.id).is_dir()

    model = store.create("model", "alexnet", {"epochs": 30}, parent=ds.id)
    assert [j.id for j in store.list()] == [model.id, ds.id]  # newest first
    assert [j.id for j in store.list("dataset")] == [ds.id]
    assert store.list("pretrained") == []

    updated = store.update(model.id, status="Running", pid=1234, argv=["caffe", "train"], resource="cpu")
    assert (updated.status, updated.pid, updated.argv, updated.resource) == ("Running", 1234, ["caffe", "train"], "cpu")
    assert updated.updated >= model.updated and updated.created == model.created
    assert store.get(model.id) == updated
    assert store.get(model.id).parent == ds.id

    store.delete(model.id)
    assert not (tmp_path / "jobs" / model.id).exists()
    with pytest.raises(JobNotFound):
        store.get(model.id)
    with pytest.raises(JobNotFound):
        store.delete(model.id)


def test_reopened_store_sees_the_jobs(tmp_path):
    a = JobStore(tmp_path)
    job = a.create("pretrained", "squeezenet", {"w": 1})
    a.merge_result(job.id, classes=1000)
    b = JobStore(tmp_path)
    assert b.get(job.id).result == {"classes": 1000}
    assert (tmp_path / "studio.sqlite3").is_file()
    assert b._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_bad_values_are_refused(store):
    job = store.create("dataset", "d")
    with pytest.raises(ValueError, match="kind"):
        store.create("video", "v")
    with pytest.raises(ValueError, match="status"):
        store.update(job.id, status="Finished")
    with pytest.raises(ValueError, match="id"):
        store.update(job.id, id="20200101-000000-abcd")
    with pytest.raises(ValueError, match="kind"):
        store.update(job.id, kind="model")


@pytest.mark.parametrize("bad", ["../../etc", "..", "/etc/passwd", "20200101-000000-abcd/../..", "", "x" * 20])
def test_ids_that_are_not_job_ids_are_not_found(store, bad):
    with pytest.raises(JobNotFound):
        store.get(bad)
    with pytest.raises(JobNotFound):
        store.job_dir(bad)
    with pytest.raises(JobNotFound):
        store.delete(bad)
    with pytest.raises(UnsafePathError):
        check_job_id(bad)


def test_concurrent_merges_lose_nothing(tmp_path):
    """Two stores (two connections, as two processes would have) and eight threads merge results."""
    stores = [JobStore(tmp_path), JobStore(tmp_path)]
    job = stores[0].create("model", "m")

    def work(t: int) -> None:
        for i in range(25):
            stores[t % 2].merge_result(job.id, **{f"t{t}_{i}": i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = stores[1].get(job.id).result
    assert result == {f"t{t}_{i}": i for t in range(8) for i in range(25)}


def test_compare_and_set_has_one_winner(store):
    job = store.create("model", "m")
    store.update(job.id, status="Running", pid=42)
    wins = []
    barrier = threading.Barrier(6)

    def racer(k: int) -> None:
        barrier.wait()
        if store.update_if(job.id, {"status": "Running", "pid": 42}, status="Done", returncode=k) is not None:
            wins.append(k)

    threads = [threading.Thread(target=racer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get(job.id).returncode == wins[0] and store.get(job.id).status == "Done"


def test_many_creates_in_one_second_get_distinct_ids(store):
    ids = {store.create("dataset", f"d{i}").id for i in range(60)}
    assert len(ids) == 60 and len(store.list()) == 60


# --- paths -------------------------------------------------------------------------------------


def test_safe_join(tmp_path):
    (tmp_path / "sub").mkdir()
    assert safe_join(tmp_path, "sub/a.txt") == tmp_path / "sub" / "a.txt"
    assert safe_join(tmp_path, "./sub//b") == tmp_path / "sub" / "b"
    for bad in ("../../etc", "sub/../../x", "/etc/passwd", "..\\..\\etc", "C:\\Windows", "", "a\x00b"):
        with pytest.raises(UnsafePathError):
            safe_join(tmp_path, bad)
    os.symlink("/etc", tmp_path / "out")  # a link leading outside
    with pytest.raises(UnsafePathError, match="outside"):
        safe_join(tmp_path, "out/passwd")


def test_resolve_user_path(tmp_path):
    data = tmp_path / "data"
    (data / "cats").mkdir(parents=True)
    assert resolve_user_path(str(data / "cats"), roots=[data]) == data / "cats"
    assert resolve_user_path(f"  {data}  ") == data
    with pytest.raises(UnsafePathError, match=r"'\.\.'"):
        resolve_user_path(f"{data}/../../etc")
    with pytest.raises(UnsafePathError, match="outside"):
        resolve_user_path("/etc", roots=[data])
    os.symlink("/etc", data / "etc")
    with pytest.raises(UnsafePathError, match="outside"):
        resolve_user_path(str(data / "etc"), roots=[data])
