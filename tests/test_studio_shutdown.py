"""Studio shutdown with real processes: ``caffe studio`` stopped by SIGTERM while a real ``caffe train`` runs
(started through the REST API, with a Python layer that starts a helper process of its own), and a script
serving the studio from a thread stopped by Ctrl-C. Both must end within seconds and leave no process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from test_studio_models import LENET, make_images

from caffe.studio import datasets
from caffe.studio.networks import standard_network
from caffe.studio.scheduler import caffe_argv
from caffe.studio.store import JobStore

SHUTDOWN_LIMIT_S = 10.0

# a Python layer (identity) whose setup starts a helper process, as a user's layer might; the pids of the
# training and of its helpers are appended to the file named by param_str
HELPER_LAYER = """
import os, subprocess, sys
import caffe

class SpawnsHelper(caffe.Layer):
    def setup(self, bottom, top):
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(self.param_str, "a") as f:
            f.write(f"{os.getpid()} {helper.pid}\\n")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        pass
"""

# serves the studio from a thread, runs a stand-in job with a child of its own, waits for Ctrl-C, then stops
THREAD_SCRIPT = """
import sys, time
from caffe.studio.app import serve_in_thread, create_app
app = create_app({"jobs_dir": sys.argv[1], "devices": ["cpu"]})
url, stop = serve_in_thread(app.state.studio.config, app)
job = app.state.studio.store.create("dataset", "stand-in")
family = ("import subprocess, sys, time; "
          "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)")
app.state.studio.scheduler.submit(job.id, [sys.executable, "-c", family])
try:
    print(job.id, flush=True)
    time.sleep(120)
finally:
    stop()
"""


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie not yet reaped by its new parent counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def reap(*pids: int) -> None:
    """Kill what a failing test left behind."""
    for pid in pids:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """The processes under ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def make_dataset(jobs_dir: Path, images: Path) -> str:
    store = JobStore(jobs_dir)
    try:
        job = store.create("dataset", "tiny", {})
        params = datasets.DatasetParams.from_dict(
            {"folder_train": str(make_images(images)), "resize_channels": 1, "resize_width": 28, "resize_height": 28}
        )
        store.update(job.id, status="Done", result=datasets.create_dataset(store.job_dir(job.id), params))
        return job.id
    finally:
        store.close()


def helper_network(pids_file: Path) -> str:
    """LeNet with the helper-starting Python layer between the data and conv1."""
    conv1 = 'layer {\n  name: "conv1"\n  type: "Convolution"\n  bottom: "data"'
    text = standard_network("lenet")
    assert conv1 in text
    layer = (
        'layer { name: "helper" type: "Python" bottom: "data" top: "data_py" '
        f'python_param {{ module: "helper_layer" layer: "SpawnsHelper" param_str: "{pids_file}" }} }}\n'
    )
    return text.replace(conv1, layer + conv1[: -len('"data"')] + '"data_py"')


def start_server_with_training(tmp_path: Path) -> tuple[subprocess.Popen, Path, list[int]]:
    """``caffe studio`` (own log file) running a LeNet training whose Python layer started a helper process;
    returns the server, its log and the pids of the training and the helper."""
    jobs = tmp_path / "jobs"
    dataset = make_dataset(jobs, tmp_path / "images")
    (tmp_path / "layers").mkdir()
    (tmp_path / "layers" / "helper_layer.py").write_text(HELPER_LAYER)
    pids_file = tmp_path / "pids.txt"
    log_path = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "layers"), os.environ.get("PYTHONPATH", "")])}
    with open(log_path, "wb") as server_log:
        server = subprocess.Popen(
            caffe_argv(
                "studio",
                "--port",
                "0",
                "--jobs-dir",
                str(jobs),
                "--devices",
                "cpu",
                "--stop_grace",
                "2",
                "--allow_python_layers",
            ),  # the training's network has a Python layer
            stdout=server_log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for(lambda: "Application startup complete" in log_path.read_text(), 30, "the server to start")
        url = re.search(r"Studio at (http://\S+)/", log_path.read_text()).group(1)
        form = {
            **LENET,
            "dataset": dataset,
            "method": "custom",
            "train_epochs": "1000",
            "custom_network": helper_network(pids_file),
        }
        with urllib.request.urlopen(
            f"{url}/models/images/classification.json", urllib.parse.urlencode(form).encode(), timeout=30
        ) as r:
            assert r.status == 201
        # the submit built the nets in a layer worker (validation at submit: its lines come first), ended since
        validation = pids_file.read_text().splitlines() if pids_file.exists() else []
        wait_for(lambda: pids_file.read_text().count("\n") > len(validation), 30, "the training to start")
    except BaseException:
        server.kill()
        server.wait()
        raise
    lines = pids_file.read_text().splitlines()[len(validation) :]
    pids = sorted({int(p) for line in lines for p in line.split()})
    training = int(lines[0].split()[0])
    assert training in descendants(server.pid) and not any(gone(p) for p in pids)
    earlier = [int(p) for line in validation for p in line.split()]
    wait_for(lambda: all(gone(p) for p in earlier), 10, "the validation's worker and helpers to end")
    return server, log_path, pids


def stop_and_expect_gone(proc: subprocess.Popen, sig: int, pids: list[int], what: str) -> None:
    """Send ``sig`` to ``proc``; it must exit within SHUTDOWN_LIMIT_S and ``pids`` must be gone by then
    (whatever happens, nothing is left running)."""
    try:
        started = time.monotonic()
        proc.send_signal(sig)
        proc.wait(SHUTDOWN_LIMIT_S)
        print(f"{what} stopped {time.monotonic() - started:.2f}s after {signal.Signals(sig).name}")
        assert [p for p in pids if not gone(p)] == [], f"a process outlived {what}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reap(*pids)


def only_model_job(jobs: Path):
    store = JobStore(jobs)
    try:
        (job,) = store.list("model")
        return job, store.job_dir(job.id)
    finally:
        store.close()


def test_caffe_studio_on_sigterm_stops_the_training_and_its_children(tmp_path):
    server, log_path, pids = start_server_with_training(tmp_path)
    stop_and_expect_gone(server, signal.SIGTERM, pids, "caffe studio")  # the training and its helper included
    job, _ = only_model_job(tmp_path / "jobs")
    assert job.status == "Interrupted", log_path.read_text()[-3000:]


def test_a_killed_server_s_training_snapshots_and_stops_with_its_children(tmp_path):
    # SIGKILL: the server cannot stop its jobs; the training notices its parent is gone, stops as on SIGINT
    # (a snapshot), and ends the helper its Python layer started.
    server, _, pids = start_server_with_training(tmp_path)
    try:
        server.kill()
        server.wait()
        wait_for(lambda: all(gone(p) for p in pids), SHUTDOWN_LIMIT_S + 5, "the orphaned training and its helper")
    finally:
        reap(*pids)
    _, job_dir = only_model_job(tmp_path / "jobs")
    log_text = (job_dir / "log.txt").read_text()
    assert f"The studio server (pid {server.pid}) is gone: stopping this job" in log_text, log_text[-3000:]
    assert list(job_dir.glob("*.caffemodel")) and list(job_dir.glob("*.solverstate")), log_text[-3000:]


def test_a_script_serving_from_a_thread_stops_within_seconds_on_ctrl_c(tmp_path):
    script = subprocess.Popen(
        [sys.executable, "-c", THREAD_SCRIPT, str(tmp_path / "jobs")], stdout=subprocess.PIPE, text=True
    )
    left: list[int] = []
    try:
        job_id = script.stdout.readline().strip()
        assert job_id, "the script did not start"
        wait_for(lambda: len(descendants(script.pid)) >= 2, 20, "the job and its child")
        left = descendants(script.pid)
    except BaseException:
        left = descendants(script.pid)
        script.kill()
        script.wait()
        reap(*left)
        raise
    stop_and_expect_gone(script, signal.SIGINT, left, "the script")  # the job and its child included
    store = JobStore(tmp_path / "jobs")
    try:
        assert store.get(job_id).status == "Interrupted"
    finally:
        store.close()


IGNORING_LAUNCH = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a background command of a shell without job control gets
os.execv(sys.executable, [sys.executable, "-c", sys.argv[1]])  # SIG_IGN survives exec, as it does for a job
"""
STUDIO_JOB = """
import os, sys, time
os.environ["CAFFE_STUDIO_PID"] = str(os.getppid())
from caffe.util.parent_watch import stop_when_parent_exits
assert stop_when_parent_exits() is not None
print("ready", flush=True)
time.sleep(60)
"""


def test_a_studio_job_started_with_sigint_ignored_still_stops_on_sigint():
    """A server started in the background passes SIGINT on ignored: its jobs take SIGINT back (the studio
    stops them with it), so this one ends within seconds of a SIGINT instead of at the 60 s sleep's end."""
    job = subprocess.Popen(
        [sys.executable, "-c", IGNORING_LAUNCH, STUDIO_JOB], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert job.stdout.readline().strip() == "ready"
        job.send_signal(signal.SIGINT)
        assert job.wait(SHUTDOWN_LIMIT_S) != 0
        assert "KeyboardInterrupt" in job.stderr.read()
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
