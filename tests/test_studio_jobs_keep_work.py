"""The studio keeps work and says why (issue 16): a server stopped during a slow training iteration waits for
the snapshot of that iteration and the job resumes from it to the weights of an uninterrupted run; a training
stopped before any snapshot offers Restart, never Resume; a failed job leads with its error and offers
Clone and edit, not Resume; a dataset or pretrained model that models use is not deleted without them."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from google.protobuf import text_format
from test_studio_models import LENET, learned_blobs, make_images

from caffe.proto import caffe_pb2 as pb
from caffe.protoio import to_text
from caffe.studio import datasets
from caffe.studio.app import create_app
from caffe.studio.failure import failure_in
from caffe.studio.networks import standard_network
from caffe.studio.scheduler import Pace, Scheduler, caffe_argv, stop_wait, training_pace
from caffe.studio.store import JobStore

HTML = {"Accept": "text/html"}
SLEEP_S = 5.0  # one training iteration: longer than the old fixed 3 s from SIGINT to SIGTERM

# an in-place Python layer of the training net that makes every iteration take param_str seconds
SLEEPY_LAYER = """
import time
import caffe

class Sleepy(caffe.Layer):
    def setup(self, bottom, top):
        self.seconds = float(self.param_str)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        time.sleep(self.seconds)

    def backward(self, top, propagate_down, bottom):
        pass
"""


def wait_for(condition, timeout: float = 240.0, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def sleepy_lenet(seconds: float) -> str:
    """LeNet whose training net sleeps ``seconds`` in each forward pass (a Python layer on the data, in place,
    after the two data layers)."""
    net = text_format.Parse(standard_network("lenet"), pb.NetParameter())
    sleepy = pb.LayerParameter(name="sleepy", type="Python", bottom=["data"], top=["data"])
    sleepy.include.add(phase=pb.TRAIN)
    sleepy.python_param.module, sleepy.python_param.layer = "sleepy_layer", "Sleepy"
    sleepy.python_param.param_str = str(seconds)
    layers = list(net.layer)
    del net.layer[:]
    net.layer.extend([*layers[:2], sleepy, *layers[2:]])
    return to_text(net)


@pytest.fixture
def app_client(tmp_path):
    """A studio app on a fresh jobs folder (CPU only) and its test client: ``(client, app.state.studio)``."""
    app = create_app({"jobs_dir": tmp_path / "jobs", "devices": ["cpu"]})
    with TestClient(app) as client:
        yield client, app.state.studio


def add_dataset(store: JobStore, images: Path) -> str:
    job = store.create("dataset", "tiny", {})
    params = datasets.DatasetParams.from_dict(
        {"folder_train": str(make_images(images)), "resize_channels": 1, "resize_width": 28, "resize_height": 28}
    )
    store.update(job.id, status="Done", result=datasets.create_dataset(store.job_dir(job.id), params))
    return job.id


def train_events(job_dir: Path) -> list[dict]:
    path = job_dir / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, filter(None, lines)) if e["event"] == "train"]


# ---------------------------------------------------------------------------------------------- item 1
def test_a_slow_iteration_is_snapshotted_at_shutdown_and_resumes_to_the_straight_weights(tmp_path, monkeypatch, caplog):
    """Acceptance: each iteration sleeps 5 s; the server stops just after iteration 0 (iteration 1 has just
    begun, longer from SIGINT than the old 3 s grace). It waits for iteration 1 to end and be snapshotted
    (snapshot_iter_2), the job resumes from it, and ends with the weights of an uninterrupted run."""
    (tmp_path / "layers").mkdir()
    (tmp_path / "layers" / "sleepy_layer.py").write_text(SLEEPY_LAYER)
    paths = [str(tmp_path / "layers"), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))  # the trainings import the layer from there
    config = {"jobs_dir": tmp_path / "jobs", "devices": ["cpu"], "allow_python_layers": True, "stop_grace": 3.0}
    app = create_app(config)
    store = app.state.studio.store
    dataset = add_dataset(store, tmp_path / "images")
    # 24 images in batches of 8: 3 iterations, snapshotted only at the end (or when stopped)
    form = {
        **LENET,
        "dataset": dataset,
        "method": "custom",
        "custom_network": sleepy_lenet(SLEEP_S),
        "train_epochs": "1",
        "snapshot_interval": "1",
        "val_interval": "1",
    }
    with caplog.at_level(logging.INFO, logger="caffe"), TestClient(app) as client:
        r = client.post("/models/images/classification.json", data=form)
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]
        job_dir = store.job_dir(job_id)
        wait_for(lambda: train_events(job_dir) or not store.get(job_id).active, what="iteration 0")
        assert train_events(job_dir), (job_dir / "log.txt").read_text()[-3000:]
    # the lifespan's end stopped the server: it waited for the iteration in progress and its snapshot
    assert store.get(job_id).status == "Interrupted"
    assert (job_dir / "snapshot_iter_2.solverstate").is_file(), (job_dir / "log.txt").read_text()[-3000:]
    assert "waiting up to" in caplog.text and f"for job {job_id} to snapshot iteration 2" in caplog.text
    assert "snapshot: iteration 2 (snapshot_iter_2.caffemodel)" in caplog.text

    app = create_app(config)  # the server started again
    with TestClient(app) as client:
        summary = client.get(f"/models/{job_id}.json").json()
        assert summary["can_resume"] and not summary["no_snapshot"]
        assert summary["resume_from"] == {
            "iter": 2,
            "epoch": pytest.approx(2 / 3, abs=1e-3),
            "file": "snapshot_iter_2.solverstate",
        }
        page = client.get(f"/models/{job_id}").text
        assert (
            'id="model-resume"' in page and "Resume from iteration 2" in page and "snapshot_iter_2.solverstate" in page
        )
        assert 'id="model-restart"' not in page
        r = client.post(f"/jobs/{job_id}/resume")
        assert r.status_code == 200 and r.json()["resumed_from"]["iter"] == 2
        assert f"--snapshot={job_dir / 'snapshot_iter_2.solverstate'}" in r.json()["argv"]
        scheduler = app.state.studio.scheduler
        assert scheduler.wait(job_id, 300).status == "Done", (job_dir / "log.txt").read_text()[-3000:]
        # the uninterrupted run: the same net with a layer that sleeps 0 s (sleeping changes no number)
        plain = {**form, "custom_network": sleepy_lenet(0.0)}
        straight = client.post("/models/images/classification.json", data=plain).json()["job_id"]
        assert scheduler.wait(straight, 300).status == "Done"
    resumed = learned_blobs(job_dir / "snapshot_iter_3.caffemodel")
    expected = learned_blobs(store.job_dir(straight) / "snapshot_iter_3.caffemodel")
    assert resumed.keys() == expected.keys() and len(expected) == 8
    for name, blob in expected.items():
        np.testing.assert_array_equal(resumed[name], blob, err_msg=name)


def test_the_stop_wait_follows_the_measured_iteration_time(tmp_path):
    events = tmp_path / "events.jsonl"
    assert training_pace(events) is None  # not started: the plain grace, no iteration to name
    assert stop_wait(None, 3.0, 600.0) == (3.0, None)
    lines = [
        {"event": "start", "time": 100.0, "iter": 10, "max_iter": 50},
        {"event": "train", "time": 145.0, "iter": 10, "iter_per_s": 0.0},  # Caffe's first display: 0 iter/s
    ]
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    pace = training_pace(events)
    assert pace == Pace(done=11, at=145.0, seconds=45.0)  # measured from the start event instead
    assert stop_wait(pace, 3.0, 600.0, now=150.0) == (93.0, 12)  # two iterations and the grace; the 12th
    assert stop_wait(pace, 3.0, 60.0, now=150.0) == (60.0, 12)  # bounded
    lines.append({"event": "train", "time": 190.0, "iter": 11, "iter_per_s": 0.05})
    lines.append({"event": "snapshot", "time": 191.0, "iter": 12, "model": "/j/snapshot_iter_12.caffemodel"})
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    pace = training_pace(events)
    assert (pace.done, pace.seconds, pace.snapshot) == (12, 20.0, (12, "/j/snapshot_iter_12.caffemodel"))
    assert stop_wait(pace, 3.0, 600.0, now=250.0) == (43.0, 16)  # 3 more iterations done since the last event


# a stand-in training: it has written that its iterations take 300 s, and ignores SIGINT
SLOW_STANDIN = (
    "import json, signal, time\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "t = time.time()\n"
    "with open('events.jsonl', 'w') as f:\n"
    "    f.write(json.dumps({'event': 'start', 'time': t - 300, 'iter': 0}) + '\\n')\n"
    "    f.write(json.dumps({'event': 'train', 'time': t, 'iter': 0, 'iter_per_s': 1 / 300}) + '\\n')\n"
    "print('ready', flush=True)\n"
    "time.sleep(900)\n"
)


def test_stop_waits_for_a_slow_training_and_a_second_stop_forces_it(tmp_path, caplog):
    store = JobStore(tmp_path / "jobs")
    sched = Scheduler(store, ["cpu"], stop_grace=1.0, kill_grace=1.0).start()
    job = store.create("model", "slow")
    sched.submit(job.id, [sys.executable, "-c", SLOW_STANDIN], "cpu")
    log = store.job_dir(job.id) / "log.txt"
    wait_for(lambda: log.exists() and "\nready\n" in log.read_text(), 60, "the stand-in")  # (not its argv)
    with caplog.at_level(logging.INFO, logger="caffe"):
        stopper = threading.Thread(target=sched.stop)
        stopper.start()
        wait_for(lambda: "waiting up to" in caplog.text, 60, "the wait to be logged")
        assert f"waiting up to 600 s for job {job.id} to snapshot iteration 2" in caplog.text  # 601 s, bounded
        stopper.join(3.0)
        assert stopper.is_alive() and sched.is_running(job.id)  # it waits for the snapshot
        sched.force_stop()  # the second Ctrl-C
        stopper.join(120)
    assert not stopper.is_alive() and store.get(job.id).status == "Interrupted"
    assert "left no snapshot" in caplog.text


def stopped_model(store: JobStore, status: str = "Interrupted") -> str:
    job = store.create("model", "stopped early", {"device": "cpu"})
    store.update(job.id, status=status, returncode=0, resource="cpu")
    return job.id


def test_a_training_stopped_before_any_snapshot_offers_restart_not_resume(app_client):
    client, studio = app_client
    store = studio.store
    job_id = stopped_model(store)
    summary = client.get(f"/models/{job_id}.json").json()
    assert summary["no_snapshot"] and not summary["can_resume"] and summary["resume_from"] is None
    page = client.get(f"/models/{job_id}").text
    assert 'id="model-restart"' in page and "Restart from iteration 0" in page
    assert 'id="model-resume"' not in page and "Resume" not in page
    refused = client.post(f"/jobs/{job_id}/resume")
    assert refused.status_code == 409 and "restart from iteration 0" in refused.json()["errors"][0]
    r = client.post(f"/jobs/{job_id}/restart")
    assert r.status_code == 200 and r.json()["resumed_from"] is None
    assert not any(a.startswith("--snapshot") for a in r.json()["argv"])
    studio.scheduler.wait(job_id, 120)  # (it has no files: it fails at once)


# ---------------------------------------------------------------------------------------------- item 2
MISSPELLED_NET = """name: "bad"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "ip" type: "InnerProdcut" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
"""


def test_a_failed_training_leads_with_its_error_and_offers_clone_not_resume(app_client):
    client, studio = app_client
    job = studio.store.create("model", "misspelled", {"model_name": "misspelled", "learning_rate": 0.01})
    job_dir = studio.store.job_dir(job.id)
    (job_dir / "net.prototxt").write_text(MISSPELLED_NET)
    (job_dir / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.01\nmax_iter: 2\nlr_policy: "fixed"\n')
    (job_dir / "snapshot_iter_1.solverstate").write_bytes(b"")  # even with a snapshot: no Resume
    argv = caffe_argv("train", f"--solver={job_dir / 'solver.prototxt'}", f"--events={job_dir / 'events.jsonl'}")
    studio.scheduler.submit(job.id, argv, "cpu")
    assert studio.scheduler.wait(job.id, 120).status == "Error"

    summary = client.get(f"/models/{job.id}.json").json()
    assert "unknown type 'InnerProdcut'; did you mean 'InnerProduct'?" in summary["error"]["message"]
    assert not summary["can_resume"] and not summary["has_data"]
    page = client.get(f"/models/{job.id}").text
    error = page.index('id="job-error"')
    assert error < page.index('id="job-actions"') < page.index('id="model-log"')  # first thing under the title
    assert "did you mean &#39;InnerProduct&#39;?" in page[error : page.index('id="job-actions"')]
    assert f'id="job-error-edit" href="/models/images/classification/new?clone={job.id}"' in page
    assert 'id="model-resume"' not in page and 'id="model-restart"' not in page
    assert 'id="model-chart"' not in page  # no empty charts
    refused = client.post(f"/jobs/{job.id}/resume")
    assert refused.status_code == 409 and "Clone" in refused.json()["errors"][0]


def test_a_waiting_job_has_no_chart_until_it_has_data(app_client):
    client, studio = app_client
    store = studio.store
    job = store.create("model", "waits", {})
    store.update(job.id, status="Waiting")
    page = client.get(f"/models/{job.id}").text
    assert '<section id="model-charts" hidden>' in page  # drawn by the page's script with the first data


def test_the_error_of_a_log_with_a_traceback_names_the_file_and_line():
    log = (
        "[studio] 2024-01-01 00:00:00 run: caffe train --solver=s\n"
        "I0101 00:00:01.000000 42 solver.py:10] Solving\n"
        "Traceback (most recent call last):\n"
        '  File "/x/caffe/net.py", line 80, in forward\n'
        "    top = layer.forward(bottom)\n"
        '  File "/jobs/1/my_layer.py", line 12, in forward\n'
        "    raise ValueError('labels must be below 10')\n"
        "ValueError: labels must be below 10\n"
    )
    found = failure_in("E0101 00:00:00.000000 42 cli.py:102] an earlier run's error\n" + log)
    assert (found.message, found.where) == ("ValueError: labels must be below 10", "/jobs/1/my_layer.py:12")
    found = failure_in(log + "E0101 00:00:02.000000 42 cli.py:102] train_val.prototxt:7: bad bottom 'conv_2'\n")
    assert (found.message, found.where) == ("train_val.prototxt:7: bad bottom 'conv_2'", "train_val.prototxt:7")


# ---------------------------------------------------------------------------------------------- item 4
def test_a_dataset_in_use_is_not_deleted_without_its_models(app_client):
    client, studio = app_client
    store = studio.store
    dataset = store.create("dataset", "flowers", {})
    store.update(dataset.id, status="Done")
    done = store.create("model", "first try", {"dataset": dataset.id}, parent=dataset.id)
    store.update(done.id, status="Done")
    running = store.create("model", "second try", {"dataset": dataset.id}, parent=dataset.id)
    studio.scheduler.submit(running.id, [sys.executable, "-c", "import time; time.sleep(600)"], "cpu")
    wait_for(lambda: store.get(running.id).status == "Running", 60, "the training")
    other = store.create("dataset", "unused", {})

    refused = client.delete(f"/jobs/{dataset.id}")
    assert refused.status_code == 409
    body = refused.json()
    assert {m["id"]: (m["name"], m["url"]) for m in body["models"]} == {
        done.id: ("first try", f"/models/{done.id}"),
        running.id: ("second try", f"/models/{running.id}"),
    }
    assert "with_models=1" in body["detail"] and "'first try'" in body["detail"]
    page = client.post(f"/jobs/{dataset.id}/delete", headers=HTML)
    assert page.status_code == 409
    assert f'<a href="/models/{done.id}">first try</a>' in page.text
    assert 'name="with_models"' in page.text and f'action="/jobs/{dataset.id}/delete"' in page.text
    assert {j.id for j in store.list()} == {dataset.id, done.id, running.id, other.id}  # nothing deleted

    assert client.delete(f"/jobs/{other.id}").json() == {"job_id": other.id, "deleted": True}  # unused: goes
    r = client.post(f"/jobs/{dataset.id}/delete", data={"with_models": "1"}, headers=HTML, follow_redirects=False)
    assert r.status_code == 303
    assert store.list() == [] and not store.job_dir(dataset.id).exists()
    assert not studio.scheduler.is_running(running.id)


def test_a_pretrained_model_in_use_is_not_deleted_without_its_models(app_client):
    client, studio = app_client
    store = studio.store
    pretrained = store.create("pretrained", "imagenet alexnet", {})
    store.update(pretrained.id, status="Done")
    params = {"method": "pretrained", "pretrained_networks": pretrained.id}
    tuned = store.create("model", "fine-tuned", params)
    store.update(tuned.id, status="Done")
    refused = client.delete(f"/pretrained_models/{pretrained.id}")
    assert refused.status_code == 409 and [m["id"] for m in refused.json()["models"]] == [tuned.id]
    page = client.post(f"/pretrained_models/{pretrained.id}/delete", headers=HTML)
    assert page.status_code == 409 and f'<a href="/models/{tuned.id}">fine-tuned</a>' in page.text
    assert client.delete(f"/jobs/{pretrained.id}").status_code == 409  # the generic route too
    r = client.delete(f"/pretrained_models/{pretrained.id}", params={"with_models": "1"})
    assert r.json() == {"job_id": pretrained.id, "deleted": True} and store.list() == []
