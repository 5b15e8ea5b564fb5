"""Studio trainings on several GPUs: the form and API, the scheduler's GPU pool (allotment, exclusivity,
FIFO without starving, restart), ``--gpu=`` on the command line, and what the pages show.

The pool is fake (``devices`` names ``cuda:0``..``cuda:N``) and the jobs are small Python programs, so this
runs on a machine without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_studio_scheduler import py, wait_for

from caffe.protoio import read_solver_param
from caffe.studio import datasets
from caffe.studio import models as m
from caffe.studio.gpus import Allotment, parse_gpu_count, parse_gpu_list, request_error
from caffe.studio.scheduler import Scheduler
from caffe.studio.store import JobStore

CPU_AND = ["cpu", "cuda:0", "cuda:1", "cuda:2"]  # a fake pool of 3 GPUs
# a training that holds its GPUs until the test writes 'release' into its folder (its working directory)
HOLD = (
    "import os, sys, time\n"
    "print('holding', sys.argv[1:], flush=True)\n"
    "t = time.time()\n"
    "while not os.path.exists('release'):\n"
    "    if time.time() - t > 60: sys.exit(3)\n"
    "    time.sleep(0.02)\n"
)
# a training that takes its GPUs (from --gpu=...) as lock files no other process may hold at the same time
LOCKS = (
    "import os, sys, time\n"
    "ids = sys.argv[-1].split('=', 1)[1].split(',')\n"
    "paths = [os.path.join(sys.argv[1], 'gpu' + i) for i in ids]\n"
    "for p in paths:\n"
    "    try: os.close(os.open(p, os.O_CREAT | os.O_EXCL))\n"
    "    except FileExistsError: sys.exit(9)\n"
    "time.sleep(0.05)\n"
    "for p in paths: os.remove(p)\n"
)


@pytest.fixture
def sched(tmp_path):
    """A scheduler on a fresh jobs folder with the fake pool."""
    scheduler = Scheduler(JobStore(tmp_path / "jobs"), CPU_AND, abort_grace=0.5).start()
    yield scheduler
    scheduler.stop(timeout=2)
    scheduler.store.close()


@pytest.fixture
def store(sched):
    return sched.store


def hold(sched: Scheduler, store: JobStore, name: str, gpus) -> str:
    job = store.create("model", name)
    sched.submit(job.id, py(HOLD), gpus=gpus)
    return job.id


def release(store: JobStore, job_id: str) -> None:
    (store.job_dir(job_id) / "release").touch()


def running(store: JobStore, job_id: str) -> bool:
    return store.get(job_id).status == "Running"


def after_a_pass(sched: Scheduler, store: JobStore) -> None:
    """Return once the scheduler has looked at everything queued so far: a job needing no device, queued
    last, has run (one pass goes through the whole queue in order)."""
    job = store.create("dataset", "barrier")
    sched.submit(job.id, py("pass"))
    assert sched.wait(job.id, 20).status == "Done"


# ---------------------------------------------------------------------------------------------- requests
def test_parsing_and_checking_requests():
    assert parse_gpu_list("0, 2") == [0, 2] and parse_gpu_list(["3", 1]) == [3, 1] and parse_gpu_list(None) == []
    assert parse_gpu_count("") == 0 and parse_gpu_count(" 2 ") == 2 and parse_gpu_count(3.0) == 3
    for bad in (["x"], ["1.5"], [True], [[0]], "--1", {"a": 1}, 7):
        with pytest.raises(ValueError):
            parse_gpu_list(bad)
    pool = [0, 1, 2]
    assert request_error(2, pool) is None and request_error([2, 0], pool) is None
    assert "at least 1" in request_error(0, pool) and "at least 1" in request_error(-2, pool)
    assert request_error(4, pool) == "4 GPUs asked for, but this server has 3 GPU(s): 0, 1, 2"
    assert "more than once" in request_error([1, 1], pool) and "no GPU 7" in request_error([7], pool)
    assert "no GPU -1" in request_error([-1], pool) and "4 GPUs given" in request_error([0, 1, 2, 2], pool)


def test_allotment_never_lets_a_younger_job_take_what_an_older_one_waits_for():
    a = Allotment([0, 1, 2])
    assert a.take(2) == [0, 1] and a.take([2]) == [2] and a.take(1) is None
    a = Allotment([1, 2, 3])  # GPU 0 is busy
    assert a.take([0, 1]) is None  # waits for 0; 1 is kept for it
    assert a.take([1]) is None  # younger: may not take 1
    assert a.take(1) == [2]  # any free GPU but the kept ones
    assert a.take(2) is None  # waits for a number of GPUs: no younger job starts on a GPU now
    assert a.take([3]) is None and a.take(1) is None


# ---------------------------------------------------------------------------------------------- scheduler
def test_two_jobs_needing_two_of_three_gpus_run_one_after_the_other(store, sched):
    first = hold(sched, store, "first", 2)
    second = hold(sched, store, "second", 2)
    wait_for(lambda: running(store, first))
    after_a_pass(sched, store)
    assert store.get(second).status == "Waiting"  # one GPU is free, it needs two
    assert sched.held_gpus() == {0: first, 1: first} and sched.free_gpus() == [2]
    assert store.get(first).gpus == [0, 1] and store.get(first).argv[-1] == "--gpu=0,1"
    assert store.get(second).gpus is None

    release(store, first)
    assert sched.wait(first, 20).status == "Done"
    wait_for(lambda: running(store, second))
    assert store.get(second).gpus == [0, 1]  # the freed ones (the lowest free ids)
    assert sched.held_gpus() == {0: second, 1: second}
    assert store.get(first).gpus == [0, 1]  # what the ended job held stays on record
    release(store, second)
    assert sched.wait(second, 20).status == "Done" and sched.held_gpus() == {} and sched.free_gpus() == [0, 1, 2]


def test_gpu_lists_and_single_ids_reach_the_command_line(store, sched):
    listed = hold(sched, store, "listed", [2, 0])
    single = store.create("model", "single")
    sched.submit(single.id, py(HOLD), "cuda:1")  # a device name is GPU 1
    wait_for(lambda: running(store, listed) and running(store, single.id))
    assert store.get(listed).argv[-1] == "--gpu=2,0" and store.get(single.id).argv[-1] == "--gpu=1"
    assert (store.get(single.id).resource, store.get(single.id).gpu_request) == ("cuda", [1])
    log = store.job_dir(listed) / "log.txt"
    wait_for(lambda: "holding ['--gpu=2,0']" in log.read_text())  # what the process got
    assert " run: " in log.read_text() and "--gpu=2,0\n" in log.read_text()
    assert sched.held_gpus() == {2: listed, 0: listed, 1: single.id} and sched.free_gpus() == []
    cpu = store.create("model", "cpu")
    sched.submit(cpu.id, py("import sys; print(sys.argv[1:])"), "cpu")  # the CPU is not a GPU
    assert sched.wait(cpu.id, 20).status == "Done"
    assert not any(a.startswith("--gpu") for a in store.get(cpu.id).argv)
    for job_id in (listed, single.id):
        release(store, job_id)
        assert sched.wait(job_id, 20).status == "Done"


def test_an_older_job_is_not_starved_by_younger_smaller_ones(store, sched):
    one = hold(sched, store, "one", [0])
    wait_for(lambda: running(store, one))
    pair = hold(sched, store, "pair", [0, 1])  # waits for GPU 0; GPU 1 is kept for it
    behind = hold(sched, store, "behind", [1])  # younger, wants a kept GPU: waits
    aside = hold(sched, store, "aside", [2])  # younger, but takes nothing the older ones wait for: runs
    wait_for(lambda: running(store, aside))
    after_a_pass(sched, store)
    assert [store.get(j).status for j in (pair, behind)] == ["Waiting", "Waiting"]
    assert sched.held_gpus() == {0: one, 2: aside}
    release(store, one)
    wait_for(lambda: running(store, pair))
    after_a_pass(sched, store)
    assert store.get(behind).status == "Waiting" and sched.held_gpus() == {0: pair, 1: pair, 2: aside}
    any_two = hold(sched, store, "any two", 2)  # waits: nothing free
    later = hold(sched, store, "later", 1)
    release(store, aside)
    assert sched.wait(aside, 20).status == "Done"
    after_a_pass(sched, store)
    # GPU 2 is free, but 'behind' (older) waits for GPU 1, and 'any two' for two GPUs: 'later' must wait
    assert [store.get(j).status for j in (behind, any_two, later)] == ["Waiting"] * 3
    release(store, pair)
    wait_for(lambda: running(store, behind) and running(store, any_two))
    assert store.get(behind).gpus == [1] and store.get(any_two).gpus == [0, 2]
    for job_id in (behind, any_two):
        release(store, job_id)
    wait_for(lambda: running(store, later))
    release(store, later)
    assert sched.wait(later, 20).status == "Done"


def test_exclusivity_holds_under_a_stream_of_jobs(store, sched, tmp_path):
    """Many short jobs on 3 GPUs: at each start the running jobs' GPUs are disjoint (the scheduler's state),
    and no job ever finds one of its GPUs taken by another process (lock files)."""
    locks = tmp_path / "locks"
    locks.mkdir()
    overlaps: list[str] = []

    def check(event: dict) -> None:
        if event["status"] != "Running":
            return
        held = [g for j in store.list() if j.status == "Running" for g in (j.gpus or [])]
        if len(held) != len(set(held)) or len(held) != len(sched.held_gpus()):
            overlaps.append(f"{event['job']}: {held}")

    sched.subscribe(check)
    requests = [1, [0, 2], 2, [1], 3, 1, [2], [0], 2, 1, [1, 2], 1]
    ids = []
    for i, request in enumerate(requests):
        job = store.create("model", f"j{i}")
        sched.submit(job.id, py(LOCKS, str(locks)), gpus=request)
        ids.append(job.id)
    ended = [sched.wait(j, 60) for j in ids]
    assert [j.status for j in ended] == ["Done"] * len(ids), [(j.returncode, j.gpus) for j in ended]
    assert overlaps == []
    for job, request in zip(ended, requests):
        assert len(job.gpus) == (request if isinstance(request, int) else len(request))
        assert job.argv[-1] == "--gpu=" + ",".join(map(str, job.gpus))
        if isinstance(request, list):
            assert job.gpus == request
    assert sched.free_gpus() == [0, 1, 2]


def test_bad_requests_are_refused_at_submission(store, sched):
    job = store.create("model", "m")
    for gpus, message in ((4, "4 GPUs asked for"), ([5], "no GPU 5"), ([1, 1], "more than once"), (0, "at least 1")):
        with pytest.raises(ValueError, match=message):
            sched.submit(job.id, py("pass"), gpus=gpus)
    with pytest.raises(ValueError, match="cpu"):
        sched.submit(job.id, py("pass"), "cpu", gpus=1)
    assert store.get(job.id).status == "Initialized" and sched.queue() == []


def test_restart_frees_the_gpus_of_jobs_no_longer_running(tmp_path):
    store = JobStore(tmp_path / "jobs")
    crashed, waiting = store.create("model", "crashed"), store.create("model", "waiting")
    # what a server that died left: a training recorded as running on GPUs 0 and 1 (its process gone), and
    # one waiting for two GPUs
    store.update(
        crashed.id,
        status="Running",
        pid=2**22 + 7,
        argv=[*py(HOLD), "--gpu=0,1"],
        resource="cuda",
        gpu_request=2,
        gpus=[0, 1],
    )
    store.update(waiting.id, status="Waiting", argv=py(HOLD), resource="cuda", gpu_request=2)
    sched = Scheduler(store, CPU_AND).start()
    try:
        assert store.get(crashed.id).status == "Interrupted" and store.get(crashed.id).gpus == [0, 1]
        wait_for(lambda: running(store, waiting.id))
        assert store.get(waiting.id).gpus == [0, 1] and sched.held_gpus() == {0: waiting.id, 1: waiting.id}
    finally:
        sched.stop(timeout=1)  # a clean stop: the job is interrupted
    assert store.get(waiting.id).status == "Interrupted" and store.get(waiting.id).gpus == [0, 1]
    late = store.create("model", "late")
    store.update(late.id, status="Waiting", argv=py(HOLD), resource="cuda", gpu_request=2)
    again = Scheduler(store, ["cpu", "cuda:0"]).start()  # restarted with one GPU: a 2-GPU job cannot wait here
    try:
        assert again.held_gpus() == {} and again.free_gpus() == [0]
        assert store.get(late.id).status == "Error" and "1 GPU" in store.get(late.id).result["scheduler_note"]
    finally:
        again.stop(timeout=1)
        store.close()


def test_a_resumed_training_asks_for_the_same_gpus(store, sched):
    blocker = hold(sched, store, "blocker", 3)
    wait_for(lambda: running(store, blocker))
    job = store.create("model", "stopped")
    store.update(job.id, status="Interrupted", resource="cuda", gpu_request=[2, 1], gpus=[2, 1])
    resumed = m.resume_model_job(store, sched, job.id)
    assert (resumed.status, resumed.gpu_request, resumed.gpus) == ("Waiting", [2, 1], None)
    assert not any(a.startswith("--gpu") for a in resumed.argv)  # added when it gets its GPUs
    assert sched.abort(job.id) and sched.held_gpus() == dict.fromkeys([0, 1, 2], blocker)
    release(store, blocker)


def test_a_store_made_before_the_gpu_columns_gets_them(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "studio.sqlite3")
    db.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL, "
        "created REAL NOT NULL, updated REAL NOT NULL, params TEXT NOT NULL DEFAULT '{}', "
        "result TEXT NOT NULL DEFAULT '{}', parent TEXT, argv TEXT, resource TEXT, pid INTEGER, returncode INTEGER)"
    )
    db.execute(
        "INSERT INTO jobs (id, kind, name, status, created, updated) VALUES "
        "('20240101-000000-abcd', 'model', 'old', 'Done', 0, 0)"
    )
    db.commit()
    db.close()
    store = JobStore(tmp_path)
    try:
        old = store.get("20240101-000000-abcd")
        assert (old.name, old.gpu_request, old.gpus) == ("old", None, None)
        assert store.update(old.id, gpus=[1]).gpus == [1]
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- form and API
def make_images(folder: Path) -> Path:
    """Two classes of four 8x8 gray images (enough for a dataset job)."""
    import cv2
    import numpy as np

    for name, level in (("dark", 40), ("light", 210)):
        (folder / name).mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(folder / name / f"{i}.png"), np.full((8, 8), level + i, np.uint8))
    return folder


@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    from caffe.studio.app import create_app

    tmp = tmp_path_factory.mktemp("studio-gpus")
    app = create_app({"jobs_dir": tmp / "jobs", "devices": ["cpu", "cuda:0", "cuda:1", "cuda:2", "cuda:3"]})
    with TestClient(app) as client:
        studio = app.state.studio
        job = studio.store.create("dataset", "tiny", {})
        params = datasets.DatasetParams.from_dict(
            {
                "folder_train": str(make_images(tmp / "images")),
                "resize_channels": 1,
                "resize_width": 28,
                "resize_height": 28,
            }
        )
        studio.store.update(job.id, status="Done", result=datasets.create_dataset(studio.store.job_dir(job.id), params))
        yield client, studio, job.id


LENET = {"model_name": "gpu lenet", "standard_networks": "lenet", "train_epochs": "1", "batch_size": "2"}


def test_form_and_api_take_a_count_or_a_list_and_pages_show_the_gpus(app_env):
    client, studio, dataset = app_env
    page = client.get("/models/images/classification/new")
    assert 'id="model-gpu-count"' in page.text and 'name="select_gpu_count"' in page.text
    assert page.text.count('name="select_gpus" multiple') == 1 and '<option value="3"' in page.text
    assert "4 of 4 GPUs free now" in page.text and 'id="model-no-gpu"' not in page.text

    blocker = hold(studio.scheduler, studio.store, "blocker", 4)  # every GPU busy: the jobs below wait
    wait_for(lambda: running(studio.store, blocker))
    by_count = client.post(
        "/models/images/classification.json", data={**LENET, "dataset": dataset, "select_gpu_count": "2"}
    )
    by_form_list = client.post(
        "/models/images/classification.json", data={**LENET, "dataset": dataset, "select_gpus": ["3", "1"]}
    )  # a multiple select
    by_json = client.post("/models/images/classification.json", json={**LENET, "dataset": dataset, "select_gpus": [2]})
    assert [r.status_code for r in (by_count, by_form_list, by_json)] == [201] * 3, by_count.text
    jobs = [studio.store.get(r.json()["job_id"]) for r in (by_count, by_form_list, by_json)]
    assert [(j.status, j.resource, j.gpu_request) for j in jobs] == [
        ("Waiting", "cuda", 2),
        ("Waiting", "cuda", [3, 1]),
        ("Waiting", "cuda", [2]),
    ]
    assert read_solver_param(studio.store.job_dir(jobs[0].id) / "solver.prototxt").solver_mode == 1  # GPU

    home = client.get("/")
    assert 'GPUs: <span id="gpu-free">0</span> of 4 free' in home.text and "waits for 2 GPUs" in home.text
    index = client.get("/index.json").json()
    assert index["gpus"] == {"all": [0, 1, 2, 3], "free": [], "held": {str(g): blocker for g in range(4)}}
    assert client.get(f"/models/{jobs[1].id}.json").json()["hardware"] == "waits for GPUs 3, 1"

    for job in jobs[1:]:
        studio.scheduler.abort(job.id)
    release(studio.store, blocker)
    started = studio.scheduler.wait(jobs[0].id, 120)  # `caffe train --gpu=0,1` (fails without CUDA: no matter)
    assert started.argv[-1] == "--gpu=0,1" and started.gpus == [0, 1] and started.argv[-4] == "train"
    assert "--gpu=0,1\n" in (studio.store.job_dir(started.id) / "log.txt").read_text()
    show = client.get(f"/models/{started.id}")
    assert '<td id="model-hardware" title="the GPUs its last run held">GPUs 0, 1</td>' in show.text
    assert client.get(f"/models/{started.id}.json").json()["gpus"] == [0, 1]
    assert f'data-job-id="{started.id}"' in client.get("/").text and "GPUs 0, 1" in client.get("/").text
    assert '<span id="gpu-free">4</span> of 4 free' in client.get("/").text
    for job in (*jobs, studio.store.get(blocker)):
        studio.scheduler.delete(job.id)


BAD = [
    ({"select_gpu_count": "-1"}, "select_gpu_count", "0 (train on the CPU) or more"),
    ({"select_gpu_count": "5"}, "select_gpu_count", "5 GPUs asked for, but this server has 4"),
    ({"select_gpu_count": "1.5"}, "select_gpu_count", "not a whole number"),
    ({"select_gpu_count": "two"}, "select_gpu_count", "not a number"),
    ({"select_gpus": ["7"]}, "select_gpus", "no GPU 7"),
    ({"select_gpus": ["1", "1"]}, "select_gpus", "GPU(s) 1 given more than once"),
    ({"select_gpus": ["x"]}, "select_gpus", "'x' is not a whole number"),
    ({"select_gpus": ["-1"]}, "select_gpus", "no GPU -1"),
    ({"select_gpus": ["1"], "select_gpu_count": "2"}, "select_gpus", "not both"),
    ({"select_gpus": ["1"], "device": "cuda:2"}, "device", "give the GPUs once"),
]
BAD_JSON = [
    ({"select_gpus": "abc"}, "select_gpus", "not a whole number"),
    ({"select_gpus": {"a": 1}}, "select_gpus", "give a list of GPU ids"),
    ({"select_gpus": [True]}, "select_gpus", "not a whole number"),
    ({"select_gpus": [0.5]}, "select_gpus", "not a whole number"),
    ({"select_gpu_count": 10**400}, "select_gpu_count", "not a number"),
    ({"select_gpu_count": [2]}, "select_gpu_count", "not a number"),
]


@pytest.mark.parametrize(("fields", "field", "message"), BAD + BAD_JSON)
def test_bad_gpu_fields_are_a_400_naming_the_field(app_env, fields, field, message):
    client, studio, dataset = app_env
    body = {**LENET, "dataset": dataset, **fields}
    before = len(studio.store.list())
    r = client.post(
        "/models/images/classification.json", **({"data": body} if (fields, field, message) in BAD else {"json": body})
    )
    assert r.status_code == 400, r.text
    assert message in r.json()["fields"][field]
    assert len(studio.store.list()) == before  # nothing was created


def test_the_form_page_keeps_the_choice_and_its_token_after_an_error(app_env):
    client, studio, dataset = app_env
    token = studio.csrf_token
    fields = {**LENET, "dataset": dataset, "select_gpus": ["1", "3"], "select_gpu_count": "2", "csrf_token": token}
    page = client.post(
        "/models/images/classification", data=fields, headers={"Accept": "text/html", "Origin": str(client.base_url)}
    )
    assert page.status_code == 400 and 'id="error-select-gpus"' in page.text and "not both" in page.text
    assert f'value="{token}"' in page.text  # the form can be sent again
    assert '<option value="1" selected>' in page.text and '<option value="3" selected>' in page.text
    assert '<option value="2" selected>' in page.text  # the count too
    no_token = client.post(
        "/models/images/classification",
        data={**fields, "csrf_token": ""},
        headers={"Accept": "text/html", "Origin": str(client.base_url)},
    )
    assert no_token.status_code == 403


def test_a_server_without_gpus_trains_on_the_cpu_only(tmp_path):
    from caffe.studio.app import create_app

    with TestClient(create_app({"jobs_dir": tmp_path / "jobs", "devices": ["cpu"]})) as client:
        page = client.get("/models/images/classification/new")
        assert 'id="model-no-gpu"' in page.text and 'name="select_gpus"' not in page.text
        assert "No GPU on this server" in client.get("/").text
        assert client.get("/index.json").json()["gpus"] == {"all": [], "free": [], "held": {}}
        r = client.post(
            "/models/images/classification.json",
            json={**LENET, "dataset": "20990101-000000-abcd", "select_gpu_count": 1},
        )
        assert r.status_code == 400 and "this server has no GPU" in r.json()["fields"]["select_gpu_count"]
