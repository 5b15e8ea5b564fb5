"""Runs studio jobs as child processes: one training at a time per device, dataset jobs side by side.

A job is submitted with its command line and its resource (a device name such as ``"cpu"`` or
``"cuda:0"``, or None for jobs that need no device) or the GPUs it needs (a number of them or their ids,
see :mod:`caffe.studio.gpus`). It waits (status ``Waiting``) until the resource, or every GPU it needs, is
free (GPU jobs start oldest first, a younger one never taking what an older one waits for), then runs
(``Running``) with stdout and stderr appended to ``<job_dir>/log.txt``; it ends ``Done`` (exit status 0),
``Error`` or ``Aborted``. The scheduler owns the GPUs (the ``cuda:N`` devices): a job holds the ones it was
given, alone, while its process runs; they are recorded with the job (``Job.gpus``, kept after it ends)
and appended to its command as ``--gpu=0,2``. Everything is written to the store first, so a new
scheduler on the same store (a restarted server) finds jobs that were running marked ``Interrupted``
(their leftover process killed) and waiting jobs queued again. One process at a time schedules a jobs
folder (a lock file): a second server on the same folder is refused instead of killing the first one's jobs.

Every job runs in a session (process group) of its own, and whatever it started dies with it: when its
main process ends, anything left in its group gets SIGTERM, then SIGKILL ``kill_grace`` seconds later.
Abort sends SIGINT (``caffe train`` then stops after the iteration and snapshots), then SIGTERM to the
group after ``abort_grace`` seconds and SIGKILL after ``kill_grace`` more. ``stop()`` (the server shutting
down, or this process exiting: an atexit hook) sends SIGINT too and waits for each training to write the
snapshot of the iteration it is in: a bounded wait that follows the job's pace, read from its events file
(:func:`stop_wait`: ``STOP_ITERATIONS`` measured iterations plus ``stop_grace`` seconds, at most
``stop_wait_max``; jobs that are not trainings, or have not started iterating, get ``stop_grace``), logged as
it waits; only then SIGTERM, and SIGKILL ``kill_grace`` later. ``force_stop()`` (a second Ctrl-C) sends
SIGTERM at once. Its jobs end ``Interrupted``. A server that is killed cannot do this, so each job is told
the server's pid (``CAFFE_STUDIO_PID``) and stops itself the same way when the server is gone
(:mod:`caffe.util.parent_watch`). Listeners registered with ``subscribe`` get every status change, from the
scheduler's threads.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caffe.errors import CaffeError
from caffe.processes import group_alive
from caffe.studio.gpus import Allotment, GpuRequest, describe, device_gpu, gpu_flag, gpu_pool, request_error
from caffe.studio.store import FINISHED, Job, JobStore
from caffe.util.parent_watch import ENV as PARENT_ENV

log = logging.getLogger("caffe")

Listener = Callable[[dict[str, Any]], None]

# ``python -m caffe.tools.cli`` would need a __main__ block; this runs the same entry point.
_CLI = "import sys; from caffe.tools.cli import main; sys.exit(main(sys.argv[1:]))"


def caffe_argv(*args: str) -> list[str]:
    """The command line of ``caffe ARGS...`` run by this Python (no PATH lookup of the console script)."""
    return [sys.executable, "-c", _CLI, *args]


def display_argv(argv: Sequence[str]) -> str:
    """A command line as a user would type it (``caffe train ...`` for ``caffe_argv``'s)."""
    n = len(caffe_argv())
    if list(argv[:n]) == caffe_argv():
        return shlex.join(["caffe", *argv[n:]])
    return shlex.join(argv)


def python_module_argv(module: str, *args: str) -> list[str]:
    """``python -m MODULE ARGS...`` with this Python."""
    return [sys.executable, "-m", module, *args]


def _proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def _is_our_process(pid: int, argv: Sequence[str] | None) -> bool:
    """Whether ``pid`` is alive and runs ``argv`` (checked through /proc; elsewhere we cannot tell: no)."""
    return bool(argv) and _proc_cmdline(pid) == list(argv)


def _signal(pid: int, sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group and hasattr(os, "killpg"):
            os.killpg(pid, sig)  # children run in their own session: pid == pgid
        else:
            os.kill(pid, sig)


def _end_group(pgid: int, grace: float) -> None:
    """End what is left of a job's process group (its main process has exited): SIGTERM, then SIGKILL
    after ``grace`` seconds."""
    if not hasattr(os, "killpg") or not group_alive(pgid):
        return
    log.warning("Process group %d: its leader has exited, ending the processes it left", pgid)
    _signal(pgid, signal.SIGTERM, group=True)
    deadline = time.monotonic() + grace
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            _signal(pgid, signal.SIGKILL, group=True)
            return
        time.sleep(0.05)


_HELD_LOCKS: dict[Path, int] = {}  # jobs folders this process schedules (fd of their lock file)


def _lock_jobs_dir(jobs_dir: Path) -> None:
    """Make this process the only one scheduling ``jobs_dir`` (another server would take its running
    jobs for leftovers of a crash and kill them). Schedulers within one process share the lock."""
    if jobs_dir in _HELD_LOCKS:
        return
    try:
        import fcntl
    except ImportError:  # no flock (Windows): nothing to hold
        return
    path = jobs_dir / "scheduler.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the jobs (close-on-exec)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise CaffeError(
            f"another studio server (pid {owner}) is using the jobs folder {jobs_dir}: stop it, "
            "or give this one another --jobs-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD_LOCKS[jobs_dir] = fd


STOP_ITERATIONS = 2.0  # at shutdown a training gets this many of its measured iterations (plus stop_grace)
STOP_LOG_EVERY_S = 10.0  # how often a shutdown that waits for trainings says so again
_EVENTS_TAIL_BYTES = 256 << 10  # the part of an events file read to find a training's pace


@dataclass(frozen=True)
class Pace:
    """Where a training is, from its events file: ``done`` iterations at wall time ``at``, an iteration
    taking ``seconds`` (None: none finished in this run yet), its last snapshot's iteration and file."""

    done: int
    at: float
    seconds: float | None
    snapshot: tuple[int, str] | None = None


def _tail_events(path: Path) -> list[dict[str, Any]]:
    """The events in the last ``_EVENTS_TAIL_BYTES`` of a JSON-lines file (whole lines only)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _EVENTS_TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    lines = data.splitlines()[1 if size > _EVENTS_TAIL_BYTES else 0 :]
    events = []
    for line in lines:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def training_pace(events_file: Path) -> Pace | None:
    """The pace of the training writing ``events_file`` (``caffe train --events``) in its current run;
    None before its first ``start`` event (not a training, or still building its nets)."""
    events = _tail_events(events_file)
    starts = [i for i, e in enumerate(events) if e.get("event") == "start"]
    if not starts:
        return None
    points: list[tuple[int, float]] = []  # (iterations done, time)
    seconds, snapshot = None, None
    for e in events[starts[-1] :]:
        kind, t = e.get("event"), float(e.get("time", 0.0))
        if kind == "start":
            points.append((int(e.get("iter", 0)), t))
        elif kind == "train":
            points.append((int(e.get("iter", 0)) + 1, t))
            rate = e.get("iter_per_s")
            seconds = 1.0 / rate if isinstance(rate, (int, float)) and rate > 0 else None
        elif kind == "snapshot":
            snapshot = (int(e.get("iter", 0)), str(e.get("model", "")))
    if seconds is None and len(points) > 1 and points[-1][0] > points[-2][0]:
        (n0, t0), (n1, t1) = points[-2:]
        seconds = max(t1 - t0, 0.0) / (n1 - n0)
    done, at = points[-1]
    return Pace(done, at, seconds, snapshot)


def stop_wait(pace: Pace | None, grace: float, most: float, now: float | None = None) -> tuple[float, int | None]:
    """How long a training stopped now may take to snapshot (seconds, at most ``most``) and the iteration it
    will snapshot: ``STOP_ITERATIONS`` iterations at its measured pace (none measured yet: the iteration in
    progress has run since its start) plus ``grace``. No pace: ``grace``, iteration unknown."""
    if pace is None:
        return grace, None
    elapsed = max(0.0, (time.time() if now is None else now) - pace.at)
    per_iter = pace.seconds if pace.seconds is not None else elapsed
    ahead = int(elapsed // per_iter) if per_iter > 0 else 0  # iterations finished since the last event
    return min(most, grace + STOP_ITERATIONS * per_iter), pace.done + ahead + 1


class _Running:
    def __init__(
        self, job_id: str, proc: subprocess.Popen, resource: str | None, gpus: list[int], job_dir: Path
    ) -> None:
        self.job_id = job_id
        self.proc = proc
        self.resource = resource
        self.gpus = gpus  # held alone until the process ends
        self.job_dir = job_dir
        self.end_status: str | None = None  # set by abort / stop: the status to record at exit
        self.stop_at: float | None = None  # stopping: the monotonic time it gets SIGTERM
        self.stop_iter: int | None = None  # stopping: the iteration it should snapshot
        self.term_at: float | None = None  # when it got SIGTERM (then SIGKILL kill_grace later)
        self.killed_at: float | None = None


class Scheduler:
    def __init__(
        self,
        store: JobStore,
        devices: Iterable[str] = ("cpu",),
        *,
        max_parallel: int = 4,
        abort_grace: float = 30.0,
        stop_grace: float = 3.0,
        kill_grace: float = 2.0,
        stop_wait_max: float = 600.0,
    ) -> None:
        limits = {"abort_grace": abort_grace, "stop_grace": stop_grace, "kill_grace": kill_grace}
        for name, value in {**limits, "stop_wait_max": stop_wait_max}.items():
            if not value >= 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        self.store = store
        self.devices = list(devices)
        self.gpus = gpu_pool(self.devices)  # the GPU ids jobs may be given
        self.max_parallel = max_parallel  # jobs without a resource (datasets) running at once
        self.abort_grace = abort_grace  # abort: seconds from SIGINT to SIGTERM
        self.stop_grace = stop_grace  # stop: seconds from SIGINT to SIGTERM, beyond a training's iterations
        self.kill_grace = kill_grace  # seconds from SIGTERM to SIGKILL
        self.stop_wait_max = stop_wait_max  # stop: the longest wait for a training's snapshot
        self._cv = threading.Condition()
        self._queue: list[str] = []  # waiting job ids, in order
        self._running: dict[str, _Running] = {}
        self._listeners: list[Listener] = []
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> Scheduler:
        """Recover the store's jobs (Running -> Interrupted, Waiting queued again), then dispatch."""
        with self._cv:
            if self._thread is not None:
                return self
            _lock_jobs_dir(self.store.jobs_dir)
            for job in sorted(self.store.list(), key=lambda j: j.updated):
                if job.status == "Running":
                    self._recover_running(job)
                elif job.status == "Waiting":
                    self._requeue(job)
            self._stopping = False
            self._thread = threading.Thread(target=self._dispatch, name="studio-scheduler", daemon=True)
            self._thread.start()
            atexit.register(self.stop)  # an interpreter exiting without stop() must not leave its jobs running
        return self

    def _requeue(self, job: Job) -> None:
        """Queue a job a previous server left waiting, if this one has what it needs."""
        try:
            resource, request = self._device_request(job.resource, job.gpu_request)
        except ValueError as e:
            self._set_status(job.id, "Error", result_note=f"queued for a device this server lacks: {e}")
            return
        if not job.argv:
            self._set_status(job.id, "Error", result_note="queued without a command")
            return
        self.store.update(job.id, resource=resource, gpu_request=request)
        self._queue.append(job.id)

    def _recover_running(self, job: Job) -> None:
        if job.pid and _is_our_process(job.pid, job.argv):
            log.warning("Job %s: killing its process %d, left from a previous server", job.id, job.pid)
            _signal(job.pid, signal.SIGKILL, group=True)
        self._set_status(job.id, "Interrupted", pid=None)

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` (or ``request_stop``) was called since the last ``start``."""
        return self._stopping

    def request_stop(self, timeout: float | None = None) -> None:
        """Begin ``stop`` without waiting: dispatch no more, send the running jobs SIGINT (trainings
        snapshot); each gets SIGTERM once its wait (:func:`stop_wait`, or ``timeout`` seconds) has passed."""
        with self._cv:
            if self._stopping:
                return
            self._stopping = True
            now = time.monotonic()
            for r in self._running.values():
                self._plan_stop(r, now, timeout)
                if r.end_status is None:
                    r.end_status = "Interrupted"
                    _signal(r.proc.pid, signal.SIGINT, group=False)
            self._cv.notify_all()

    def _plan_stop(self, r: _Running, now: float, timeout: float | None) -> None:
        """When a job being stopped gets SIGTERM: after its training's measured snapshot wait, logged."""
        if timeout is not None:
            r.stop_at = now + max(0.0, timeout)
            return
        wait, iteration = stop_wait(training_pace(r.job_dir / "events.jsonl"), self.stop_grace, self.stop_wait_max)
        r.stop_at, r.stop_iter = now + wait, iteration
        if iteration is not None:
            log.info("studio: waiting up to %.0f s for job %s to snapshot iteration %d", wait, r.job_id, iteration)

    def force_stop(self) -> None:
        """End the running jobs now (a second Ctrl-C): SIGTERM to their groups, SIGKILL ``kill_grace`` later
        (by ``stop``); they may leave no snapshot of their current iteration."""
        self.request_stop()
        with self._cv:
            now = time.monotonic()
            for r in self._running.values():
                r.stop_at = min(r.stop_at if r.stop_at is not None else now, now)
                self._escalate_stop(r, now)
            self._cv.notify_all()

    def stop_time_left(self) -> float:
        """Seconds until the last job being stopped gets SIGTERM (0 when none waits)."""
        with self._cv:
            ends = [r.stop_at for r in self._running.values() if r.stop_at is not None]
        return max(0.0, max(ends, default=0.0) - time.monotonic())

    def stop(self, timeout: float | None = None) -> None:
        """Stop dispatching and end the running jobs (status ``Interrupted``; waiting ones stay queued in
        the store): SIGINT, then SIGTERM to each job's process group once its training has had the time to
        snapshot (``timeout`` seconds if given), SIGKILL ``kill_grace`` seconds later; returns once they are gone."""
        self.request_stop(timeout)
        with self._cv:
            next_log = time.monotonic() + STOP_LOG_EVERY_S
            while self._running:
                now = time.monotonic()
                for r in list(self._running.values()):
                    self._escalate_stop(r, now)
                if all(r.killed_at is not None and now > r.killed_at + 2.0 for r in self._running.values()):
                    log.error("studio: jobs %s did not end", ", ".join(self._running))  # SIGKILL acts at once
                    break
                if now >= next_log:
                    self._log_waiting(now)
                    next_log = now + STOP_LOG_EVERY_S
                self._cv.wait(max(0.01, min(self._next_escalation(), next_log) - now))
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)
        atexit.unregister(self.stop)

    def _escalate_stop(self, r: _Running, now: float) -> None:
        """SIGTERM a stopping job past its wait, SIGKILL it ``kill_grace`` after that (holding ``_cv``)."""
        if r.term_at is None and r.stop_at is not None and now >= r.stop_at:
            log.warning("Job %s: still running at shutdown, sending SIGTERM", r.job_id)
            _signal(r.proc.pid, signal.SIGTERM, group=True)
            r.term_at = now
        elif r.term_at is not None and r.killed_at is None and now >= r.term_at + self.kill_grace:
            log.warning("Job %s: still running at shutdown, sending SIGKILL", r.job_id)
            _signal(r.proc.pid, signal.SIGKILL, group=True)
            r.killed_at = now

    def _next_escalation(self) -> float:
        """The monotonic time of the next SIGTERM or SIGKILL ``stop`` sends (holding ``_cv``)."""
        times = [time.monotonic() + 0.5]
        for r in self._running.values():
            if r.term_at is None and r.stop_at is not None:
                times.append(r.stop_at)
            elif r.term_at is not None and r.killed_at is None:
                times.append(r.term_at + self.kill_grace)
        return min(times)

    def _log_waiting(self, now: float) -> None:
        for r in self._running.values():
            if r.term_at is None and r.stop_at is not None:
                what = f" to snapshot iteration {r.stop_iter}" if r.stop_iter is not None else " to end"
                log.info("studio: still waiting up to %.0f s for job %s%s", r.stop_at - now, r.job_id, what)

    # --- jobs --------------------------------------------------------------------------------

    def submit(
        self, job_id: str, argv: Sequence[str], resource: str | None = None, *, gpus: GpuRequest | None = None
    ) -> Job:
        """Queue ``argv`` for the job (status Waiting); it runs when ``resource`` (a device name) or the
        ``gpus`` (a number of GPUs or their ids; ``--gpu=...`` is appended to ``argv``) are free.
        ValueError when this server can never serve them."""
        resource, request = self._device_request(resource, gpus)
        with self._cv:
            job = self.store.get(job_id)
            if job.active:
                raise RuntimeError(f"job {job_id} is already {job.status.lower()}")
            job = self._set_status(
                job_id,
                "Waiting",
                argv=list(argv),
                resource=resource,
                gpu_request=request,
                gpus=None,
                pid=None,
                returncode=None,
            )
            self._queue.append(job_id)
            self._cv.notify_all()
        return job

    def _device_request(self, resource: str | None, gpus: GpuRequest | None) -> tuple[str | None, GpuRequest | None]:
        """``(resource, gpu_request)`` as a job stores them: GPU jobs (``cuda:N`` or ``gpus``) have the
        resource ``"cuda"``. ValueError when this server cannot serve them."""
        if gpus is None and resource is not None:
            if resource not in self.devices:
                raise ValueError(f"unknown device {resource!r} (this server has: {', '.join(self.devices)})")
            gpu = device_gpu(resource)
            if gpu is None:
                return resource, None
            gpus = [gpu]
        elif gpus is not None and resource not in (None, "cuda"):
            raise ValueError(f"a job on the device {resource!r} cannot also ask for GPUs")
        if gpus is None:
            return None, None
        error = request_error(gpus, self.gpus)
        if error:
            raise ValueError(error)
        return "cuda", gpus

    def abort(self, job_id: str) -> bool:
        """Abort a waiting or running job; False if it was neither."""
        with self._cv:
            if job_id in self._queue:
                self._queue.remove(job_id)
                self._set_status(job_id, "Aborted")
                return True
            r = self._running.get(job_id)
            if r is None or r.end_status is not None:
                return False
            r.end_status = "Aborted"
        wait, _ = stop_wait(training_pace(r.job_dir / "events.jsonl"), self.abort_grace, self.stop_wait_max)
        wait = max(wait, self.abort_grace)
        log.info("Job %s: abort (SIGINT; SIGTERM in %.0f s if it is still running)", job_id, wait)
        _signal(r.proc.pid, signal.SIGINT, group=False)
        threading.Thread(target=self._escalate, args=(r, wait), name=f"abort-{job_id}", daemon=True).start()
        return True

    def _escalate(self, r: _Running, wait: float) -> None:
        """SIGTERM an aborted job still running ``wait`` s after SIGINT, SIGKILL it ``kill_grace`` s later."""
        for sig, grace in ((signal.SIGTERM, wait), (signal.SIGKILL, self.kill_grace)):
            try:
                r.proc.wait(grace)
                return
            except subprocess.TimeoutExpired:
                log.warning("Job %s: still running after %gs, sending %s", r.job_id, grace, sig.name)
                _signal(r.proc.pid, sig, group=True)

    def kill(self, job_id: str, status: str = "Aborted", timeout: float = 10.0) -> None:
        """End a job at once (SIGTERM to its group, SIGKILL after ``kill_grace``): for deleting, where no
        snapshot is wanted. Waits at most ``timeout`` seconds for it to be recorded as ended."""
        with self._cv:
            if job_id in self._queue:
                self._queue.remove(job_id)
                self._set_status(job_id, status)
                return
            r = self._running.get(job_id)
            if r is None:
                return
            r.end_status = r.end_status or status
        _signal(r.proc.pid, signal.SIGTERM, group=True)
        try:
            r.proc.wait(min(timeout, self.kill_grace))
        except subprocess.TimeoutExpired:
            _signal(r.proc.pid, signal.SIGKILL, group=True)
        self.wait(job_id, timeout)

    def delete(self, job_id: str) -> None:
        """Kill the job if it runs, then remove it (row and folder)."""
        self.store.get(job_id)  # JobNotFound first
        self.kill(job_id)
        self.store.delete(job_id)

    def clone(self, job_id: str) -> Job:
        """A new job (Initialized, not run) with the same kind, parameters and parent."""
        src = self.store.get(job_id)
        return self.store.create(src.kind, f"{src.name} (clone)", src.params, parent=src.parent)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job is neither waiting nor running (for tests and deletes); returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while job_id in self._queue or job_id in self._running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"job {job_id} still {self.store.get(job_id).status} after {timeout}s")
                self._cv.wait(1.0 if left is None else min(left, 1.0))
        return self.store.get(job_id)

    def is_running(self, job_id: str) -> bool:
        with self._cv:
            return job_id in self._running

    def queue(self) -> list[str]:
        with self._cv:
            return list(self._queue)

    def waiting_for(self, job_id: str) -> str | None:
        """What a waiting job waits for, for its page: the device (and the jobs holding it) and its place in the
        queue, e.g. "the CPU (job 'alexnet' runs on it); 2nd of 3 in the queue"; None when it is not waiting."""
        with self._cv:
            if job_id not in self._queue:
                return None
            place, total = self._queue.index(job_id) + 1, len(self._queue)
            running = [(r.job_id, r.resource, r.gpus) for r in self._running.values()]
        try:
            job = self.store.get(job_id)
        except KeyError:
            return None
        if job.resource == "cuda":
            device = describe(job.gpu_request or 1)
            wanted = set(job.gpu_request) if isinstance(job.gpu_request, list) else set(self.gpus)
            holders = [j for j, _, gpus in running if wanted & set(gpus)]
        elif job.resource:
            device = "the CPU" if job.resource == "cpu" else job.resource
            holders = [j for j, resource, _ in running if resource == job.resource]
        else:
            device = f"a free slot ({self.max_parallel} run at once)"
            holders = [j for j, resource, _ in running if resource is None]
        busy = f" ({', '.join(self._job_name(j) for j in holders)} {'runs' if len(holders) == 1 else 'run'} on it)"
        return f"{device}{busy if holders else ''}; {_ordinal(place)} of {total} in the queue"

    def _job_name(self, job_id: str) -> str:
        try:
            return f"job '{self.store.get(job_id).name}'"
        except KeyError:
            return f"job {job_id}"

    def held_gpus(self) -> dict[int, str]:
        """``{gpu id: job id}`` for the GPUs running jobs hold now."""
        with self._cv:
            return {g: r.job_id for r in self._running.values() for g in r.gpus}

    def free_gpus(self) -> list[int]:
        """The GPUs no running job holds."""
        held = self.held_gpus()
        return [g for g in self.gpus if g not in held]

    # --- listeners ---------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener({"event": "status", "job": id, "status": s, ...})`` on every status change;
        returns the function that unsubscribes it. Listeners run on scheduler threads: keep them short."""
        with self._cv:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._cv, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def _set_status(
        self, job_id: str, status: str, expected: dict | None = None, result_note: str | None = None, **fields: Any
    ) -> Job:
        job = self.store.update_if(job_id, expected, status=status, **fields)
        if job is None:
            return self.store.get(job_id)
        if result_note:
            job = self.store.merge_result(job_id, scheduler_note=result_note)
        event = {
            "event": "status",
            "time": round(time.time(), 3),
            "job": job_id,
            "status": status,
            "returncode": job.returncode,
        }
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not stop the scheduler
                log.exception("studio: status listener failed")
        return job

    # --- dispatching -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        with self._cv:
            while not self._stopping:
                self._start_ready()
                self._cv.wait(1.0)

    def _start_ready(self) -> None:
        busy = {r.resource for r in self._running.values() if r.resource not in (None, "cuda")}
        unbound = sum(1 for r in self._running.values() if r.resource is None)
        allotment = Allotment(self.free_gpus())
        for job_id in list(self._queue):
            try:
                job = self.store.get(job_id)
            except KeyError:  # deleted while waiting
                self._queue.remove(job_id)
                continue
            gpus: list[int] = []
            if job.resource is None:
                if unbound >= self.max_parallel:
                    continue
                unbound += 1
            elif job.resource == "cuda":
                taken = allotment.take(job.gpu_request)  # type: ignore[arg-type]
                if taken is None:
                    continue
                gpus = taken
            elif job.resource in busy:
                continue
            else:
                busy.add(job.resource)
            self._queue.remove(job_id)
            self._launch(job, gpus)

    def _launch(self, job: Job, gpus: list[int]) -> None:
        job_dir = self.store.job_dir(job.id)
        assert job.argv
        argv = [*job.argv, gpu_flag(gpus)] if gpus else job.argv
        try:
            with open(job_dir / "log.txt", "ab") as logf:
                logf.write(f"[studio] {time.strftime('%Y-%m-%d %H:%M:%S')} run: {display_argv(argv)}\n".encode())
                logf.flush()
                proc = subprocess.Popen(
                    argv,
                    cwd=job_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())},
                    start_new_session=True,
                )
        except OSError as e:
            log.error("Job %s: cannot start %s: %s", job.id, job.argv[0], e)
            self._set_status(job.id, "Error", result_note=f"cannot start {job.argv[0]}: {e}")
            self._cv.notify_all()
            return
        r = _Running(job.id, proc, job.resource, gpus, job_dir)
        self._running[job.id] = r
        self._set_status(job.id, "Running", pid=proc.pid, argv=argv, gpus=gpus or None)
        threading.Thread(target=self._watch, args=(r,), name=f"job-{job.id}", daemon=True).start()

    def _watch(self, r: _Running) -> None:
        rc = r.proc.wait()
        _end_group(r.proc.pid, self.kill_grace)  # what the job started must not outlive it
        with self._cv:
            status = r.end_status or ("Done" if rc == 0 else "Error")
            # compare-and-set: a newer scheduler (restart) may already have marked this job Interrupted
            with contextlib.suppress(KeyError):  # or it was deleted
                self._set_status(
                    r.job_id, status, expected={"status": "Running", "pid": r.proc.pid}, returncode=rc, pid=None
                )
            # logged before the job leaves _running: stop() returns only once its outcome has been said
            log.info("Job %s: %s (exit status %d)%s", r.job_id, status, rc, _snapshot_note(r))
            self._running.pop(r.job_id, None)
            self._cv.notify_all()


def _snapshot_note(r: _Running) -> str:
    """For a training that was stopped: the snapshot it left (its last run's), or that it left none."""
    if r.stop_at is None:
        return ""
    pace = training_pace(r.job_dir / "events.jsonl")
    if pace is None:
        return ""
    if pace.snapshot is None:
        return "; it left no snapshot in this run"
    return f"; its snapshot: iteration {pace.snapshot[0]} ({Path(pace.snapshot[1]).name})"


__all__ = [
    "FINISHED",
    "Pace",
    "Scheduler",
    "caffe_argv",
    "display_argv",
    "python_module_argv",
    "stop_wait",
    "training_pace",
]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
