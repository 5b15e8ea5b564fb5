"""Studio scheduler: stand-in jobs (small Python programs) instead of real trainings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caffe.errors import CaffeError
from caffe.studio.scheduler import Scheduler, caffe_argv, display_argv
from caffe.studio.store import JobStore

# a job that records when it ran (in its folder: the job's working directory)
TIMED = "import json, time; t0 = time.time(); time.sleep({s}); json.dump([t0, time.time()], open('times.json', 'w'))"
# a job that waits for a file to exist (so two jobs can prove they run at the same time)
RENDEZVOUS = (
    "import os, sys, time\n"
    "open(sys.argv[1], 'w').close()\n"
    "t = time.time()\n"
    "while not os.path.exists(sys.argv[2]):\n"
    "    if time.time() - t > 20: sys.exit(3)\n"
    "    time.sleep(0.02)\n"
)
# a job that, like `caffe train`, stops cleanly on SIGINT after 'snapshotting'
SIGINT_STOPS = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGINT, lambda *a: (open('snapshot', 'w').write('x'), sys.exit(0)))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)
SIGINT_IGNORED = (
    "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
)
# a job that starts a child of its own (as `caffe train` may: a Python layer's helper, a data reader), both
# ignoring the signals named in argv 1 and 2; the child's pid goes to 'grandchild.pid'
GRANDCHILD = (
    "import signal, sys, time\n"
    "for name in filter(None, sys.argv[1].split(',')): signal.signal(getattr(signal, name), signal.SIG_IGN)\n"
    "print('up', flush=True)\n"
    "time.sleep(60)\n"
)
FAMILY = (
    "import signal, subprocess, sys, time\n"
    "for name in filter(None, sys.argv[1].split(',')): signal.signal(getattr(signal, name), signal.SIG_IGN)\n"
    "kid = subprocess.Popen([sys.executable, '-c', sys.argv[3], sys.argv[2]], stdout=subprocess.PIPE, text=True)\n"
    "assert kid.stdout.readline() == 'up\\n'\n"
    "open('grandchild.pid', 'w').write(str(kid.pid))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def py(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs")
    yield s
    s.close()


@pytest.fixture
def sched(store):
    s = Scheduler(store, ["cpu", "cuda:0"], abort_grace=0.5).start()
    yield s
    s.stop(timeout=2)


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie its new parent has not reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def start_family(sched, store, ignored_by_job: str = "", ignored_by_child: str = "") -> tuple[str, int, int]:
    """Run FAMILY as a training: (job id, job pid, its child's pid) once both run."""
    job = store.create("model", "family")
    sched.submit(job.id, py(FAMILY, ignored_by_job, ignored_by_child, GRANDCHILD), "cpu")
    wait_log(store, job.id, "ready")
    pid, child = store.get(job.id).pid, int((store.job_dir(job.id) / "grandchild.pid").read_text())
    assert not gone(pid) and not gone(child)
    return job.id, pid, child


def wait_log(store, job_id: str, text: str) -> None:
    path = store.job_dir(job_id) / "log.txt"
    wait_for(lambda: path.exists() and text in path.read_text().splitlines())  # a line of its own


def test_job_runs_logs_and_ends_done_or_error(store, sched):
    ok = store.create("dataset", "ok")
    bad = store.create("dataset", "bad")
    events = []
    sched.subscribe(events.append)
    sched.submit(ok.id, py("print('hello from the job'); import sys; print('err', file=sys.stderr)"))
    sched.submit(bad.id, py("import sys; sys.exit(7)"))
    done, failed = sched.wait(ok.id, 20), sched.wait(bad.id, 20)
    assert (done.status, done.returncode, done.pid) == ("Done", 0, None)
    assert (failed.status, failed.returncode) == ("Error", 7)
    log = (store.job_dir(ok.id) / "log.txt").read_text()
    assert "hello from the job" in log and "err" in log
    assert [e["status"] for e in events if e["job"] == ok.id] == ["Waiting", "Running", "Done"]


def test_two_trainings_on_one_device_do_not_overlap(store, sched):
    jobs = [store.create("model", f"m{i}") for i in range(2)]
    for job in jobs:
        sched.submit(job.id, py(TIMED.format(s=0.6)), "cpu")
    wait_for(lambda: store.get(jobs[0].id).status == "Running")
    assert store.get(jobs[1].id).status == "Waiting"
    for job in jobs:
        assert sched.wait(job.id, 30).status == "Done"
    (_, e0), (s1, _) = (json.loads((store.job_dir(j.id) / "times.json").read_text()) for j in jobs)
    assert s1 >= e0, f"second training started at {s1} before the first ended at {e0}"


def test_trainings_on_different_devices_and_dataset_jobs_run_together(store, sched, tmp_path):
    a, b = store.create("model", "a"), store.create("model", "b")
    sched.submit(a.id, py(RENDEZVOUS, str(tmp_path / "a"), str(tmp_path / "b")), "cpu")
    sched.submit(b.id, py(RENDEZVOUS, str(tmp_path / "b"), str(tmp_path / "a")), "cuda:0")
    d1, d2 = store.create("dataset", "d1"), store.create("dataset", "d2")
    sched.submit(d1.id, py(RENDEZVOUS, str(tmp_path / "d1"), str(tmp_path / "d2")))
    sched.submit(d2.id, py(RENDEZVOUS, str(tmp_path / "d2"), str(tmp_path / "d1")))
    # each waits for the other's file: both Done means both ran at once
    assert [sched.wait(j.id, 30).status for j in (a, b, d1, d2)] == ["Done"] * 4


def test_abort_sends_sigint_and_the_job_stops_cleanly(store, sched):
    job = store.create("model", "m")
    sched.submit(job.id, py(SIGINT_STOPS), "cpu")
    wait_log(store, job.id, "ready")
    assert sched.abort(job.id)
    ended = sched.wait(job.id, 20)
    assert (ended.status, ended.returncode) == ("Aborted", 0)
    assert (store.job_dir(job.id) / "snapshot").exists()
    assert not sched.abort(job.id)  # nothing left to abort


def test_abort_escalates_when_sigint_is_ignored(store, sched):
    job = store.create("model", "m")
    sched.submit(job.id, py(SIGINT_IGNORED), "cpu")
    wait_log(store, job.id, "ready")
    t = time.monotonic()
    sched.abort(job.id)
    ended = sched.wait(job.id, 20)
    assert (ended.status, ended.returncode) == ("Aborted", -signal.SIGTERM)
    assert time.monotonic() - t >= 0.45  # the grace period (0.5 s) was given first


def test_abort_waiting_job_never_runs_and_next_one_does(store, sched):
    first, second, third = (store.create("model", n) for n in "abc")
    sched.submit(first.id, py(SIGINT_STOPS), "cpu")
    sched.submit(second.id, py("open('ran', 'w').close()"), "cpu")
    sched.submit(third.id, py("open('ran', 'w').close()"), "cpu")
    wait_log(store, first.id, "ready")
    assert sched.abort(second.id)
    assert store.get(second.id).status == "Aborted"
    sched.abort(first.id)
    assert sched.wait(third.id, 20).status == "Done"
    assert not (store.job_dir(second.id) / "ran").exists() and (store.job_dir(third.id) / "ran").exists()


def test_restart_marks_running_interrupted_kills_it_and_requeues_waiting(tmp_path):
    first = Scheduler(JobStore(tmp_path), ["cpu"], abort_grace=0.5).start()
    store = first.store
    running, waiting = store.create("model", "running"), store.create("model", "waiting")
    first.submit(running.id, py(SIGINT_IGNORED), "cpu")
    first.submit(waiting.id, py("open('ran', 'w').close()"), "cpu")
    wait_log(store, running.id, "ready")
    pid = store.get(running.id).pid
    assert store.get(waiting.id).status == "Waiting"
    first._stopping = True  # the server "crashes": its scheduler stops dispatching, nothing is cleaned up

    second = Scheduler(JobStore(tmp_path), ["cpu"]).start()  # the restarted server
    try:
        assert second.store.get(running.id).status == "Interrupted"
        wait_for(lambda: gone(pid))
        assert second.wait(waiting.id, 20).status == "Done"
        assert (second.store.job_dir(waiting.id) / "ran").exists()
        time.sleep(0.2)  # the old scheduler saw its child die: it must not overwrite the new status
        assert second.store.get(running.id).status == "Interrupted"
        # an interrupted job can be submitted again (resume)
        second.submit(running.id, py("pass"), "cpu")
        assert second.wait(running.id, 20).status == "Done"
    finally:
        second.stop(timeout=2)


def test_restart_leaves_a_foreign_process_alone(tmp_path):
    store = JobStore(tmp_path)
    job = store.create("model", "m")
    store.update(job.id, status="Running", pid=os.getpid(), argv=["not", "this", "process"], resource="cpu")
    Scheduler(store, ["cpu"]).start().stop(timeout=1)  # pytest is still alive to see the next line
    assert store.get(job.id).status == "Interrupted"


def test_a_second_server_process_on_the_same_jobs_dir_is_refused(store, tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom caffe.studio.scheduler import Scheduler\n"
            "from caffe.studio.store import JobStore\nScheduler(JobStore(sys.argv[1])).start()\n"
            "print('ready', flush=True)\ntime.sleep(60)",
            str(tmp_path / "other"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "ready\n"
        with pytest.raises(CaffeError, match=f"another studio server \\(pid {holder.pid}\\)"):
            Scheduler(JobStore(tmp_path / "other")).start()
    finally:
        holder.kill()
        holder.wait()
    Scheduler(JobStore(tmp_path / "other")).start().stop(timeout=1)  # free again once that process is gone


def test_stop_interrupts_running_jobs(store):
    sched = Scheduler(store, ["cpu"], abort_grace=5).start()
    job = store.create("model", "m")
    sched.submit(job.id, py(SIGINT_STOPS), "cpu")
    wait_log(store, job.id, "ready")
    sched.stop()
    wait_for(lambda: store.get(job.id).status == "Interrupted")
    assert (store.job_dir(job.id) / "snapshot").exists()  # SIGINT: the training snapshotted


@pytest.mark.parametrize("stubborn", [False, True], ids=["job-exits-on-sigint", "all-ignore-sigint-sigterm"])
def test_stop_ends_the_job_and_its_children_within_the_grace_periods(store, stubborn):
    """Shutdown: the job gets SIGINT, its process group SIGTERM after stop_grace and SIGKILL after
    kill_grace; a child the job leaves behind is ended too. stop() returns when they are all gone."""
    sched = Scheduler(store, ["cpu"], stop_grace=0.5, kill_grace=0.5).start()
    ignored = "SIGINT,SIGTERM" if stubborn else ""
    job_id, pid, child = start_family(sched, store, ignored, ignored)
    try:
        started = time.monotonic()
        sched.stop()
        took = time.monotonic() - started
        assert gone(pid) and gone(child)
        assert took < 0.5 + 0.5 + 2.0
        if stubborn:
            assert took >= 0.9  # both grace periods were given
        assert store.get(job_id).status == "Interrupted"
    finally:
        for p in (pid, child):
            if not gone(p):
                os.kill(p, signal.SIGKILL)


def test_abort_ends_what_the_job_left_running(store, sched):
    job_id, pid, child = start_family(sched, store)
    try:
        sched.abort(job_id)
        assert sched.wait(job_id, 10).status == "Aborted"
        assert gone(pid) and gone(child)
    finally:
        for p in (pid, child):
            if not gone(p):
                os.kill(p, signal.SIGKILL)


def test_grace_periods_are_checked(store):
    with pytest.raises(ValueError, match="kill_grace must be a number of seconds >= 0, got -1"):
        Scheduler(store, kill_grace=-1)
    with pytest.raises(ValueError, match="stop_grace"):
        Scheduler(store, stop_grace=float("nan"))


def test_delete_kills_the_job_and_removes_it(store, sched):
    job = store.create("model", "m")
    sched.submit(job.id, py(SIGINT_IGNORED), "cpu")
    wait_log(store, job.id, "ready")
    pid = store.get(job.id).pid
    sched.delete(job.id)
    assert not store.job_dir(job.id).exists() and store.list() == []
    with pytest.raises(OSError):
        os.kill(pid, 0)


def test_clone_copies_params_and_does_not_run(store, sched):
    ds = store.create("dataset", "d")
    job = store.create("model", "alexnet", {"epochs": 30, "base_lr": 0.01}, parent=ds.id)
    clone = sched.clone(job.id)
    assert clone.id != job.id and clone.kind == "model" and clone.parent == ds.id
    assert clone.params == job.params and clone.status == "Initialized" and clone.name == "alexnet (clone)"
    assert sched.queue() == []


def test_submit_checks_device_and_state(store, sched):
    job = store.create("model", "m")
    with pytest.raises(ValueError, match="cuda:7"):
        sched.submit(job.id, py("pass"), "cuda:7")
    sched.submit(job.id, py(SIGINT_STOPS), "cpu")
    with pytest.raises(RuntimeError, match="already"):
        sched.submit(job.id, py("pass"), "cpu")
    sched.abort(job.id)


def test_caffe_argv_runs_the_caffe_command_and_reads_as_one(store, sched):
    job = store.create("model", "m")
    argv = caffe_argv("train", "--solver", "/no such/solver.prototxt")
    assert display_argv(argv) == "caffe train --solver '/no such/solver.prototxt'"
    sched.submit(job.id, argv, "cpu")
    ended = sched.wait(job.id, 60)
    log = (store.job_dir(job.id) / "log.txt").read_text()
    assert log.startswith("[studio] ") and "run: caffe train --solver '/no such/solver.prototxt'\n" in log
    assert ended.status == "Error" and ended.returncode == 1 and "/no such/solver.prototxt" in log


def test_a_program_that_cannot_start_is_an_error(store, sched):
    job = store.create("dataset", "d")
    sched.submit(job.id, ["/nonexistent/program"])
    ended = sched.wait(job.id, 10)
    assert ended.status == "Error" and "cannot start" in ended.result["scheduler_note"]
