"""Studio app: home page, /index.json, job routes, SSE, auth, body limit, path traversal, `caffe studio`."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import httpx
import plotly
import pytest
from fastapi.testclient import TestClient

from caffe.errors import CaffeError
from caffe.studio.app import COOKIE, create_app, serve_in_thread, session_value
from caffe.tools.cli import main as caffe_main

# writes a progress event, waits for the test's "go" file, writes a NaN event, ends
STEPPED = (
    "import json, os, time\n"
    "def ev(**kw):\n"
    "    with open('events.jsonl', 'a') as f: f.write(json.dumps(kw) + '\\n')\n"
    "ev(event='progress', done=1, total=2)\n"
    "t = time.time()\n"
    "while not os.path.exists('go') and time.time() - t < 20: time.sleep(0.02)\n"
    "ev(event='train', iter=2, loss=float('nan'))\n"
)
SLEEPS = "import time; print('sleeping', flush=True); time.sleep(60)"


def config(tmp_path: Path, **kw) -> dict:
    return {"jobs_dir": tmp_path / "jobs", "devices": ["cpu"], "abort_grace": 2.0, **kw}


@pytest.fixture
def app(tmp_path):
    return create_app(config(tmp_path))


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


def studio(app):
    return app.state.studio


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def sse_events(text: str) -> list[dict]:
    """The data of each server-sent event (with its id, when it has one, as "_id")."""
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in fields:
            out.append({**json.loads(fields["data"]), **({"_id": int(fields["id"])} if "id" in fields else {})})
    return out


HTML = {"Accept": "text/html"}


# --- home, index, job routes -------------------------------------------------------------------


def test_home_page_lists_jobs_by_kind(app, client):
    store = studio(app).store
    ds = store.create("dataset", "dolphins-and-seahorses")
    store.update(ds.id, status="Done")
    model = store.create("model", "alexnet-from-scratch", parent=ds.id)
    store.update(model.id, status="Running")
    store.create("pretrained", "squeezenet-imagenet")
    page = client.get("/", headers=HTML)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for needle in (
        'id="new-dataset"',
        'id="new-model"',
        'id="new-pretrained"',
        'id="tab-datasets"',
        'id="tab-models"',
        'id="tab-pretrained"',
        'id="datasets-table"',
        'id="models-table"',
        'id="pretrained-table"',
        "Pretrained Models (1)",
        f'href="/datasets/{ds.id}"',
        f'href="/models/{model.id}"',
        'href="/pretrained_models/',
        "/static/studio.js",
    ):
        assert needle in html, needle
    row = html[html.index(f'id="job-{model.id}"') :]
    row = row[: row.index("</tr>")]
    assert "alexnet-from-scratch" in row and "dolphins-and-seahorses" in row and "Running" in row
    assert 'data-status="Done"' in html


def test_empty_home_page_explains_what_to_do(client):
    html = client.get("/").text
    assert 'id="datasets-table-empty"' in html and "folder of images" in html


def test_index_json(app, client):
    store = studio(app).store
    ds = store.create("dataset", "d")
    model = store.create("model", "m", {"epochs": 3}, parent=ds.id)
    index = client.get("/index.json").json()
    assert index["jobs_dir"] == str(store.jobs_dir) and index["devices"] == ["cpu"]
    assert [(j["id"], j["name"], j["status"]) for j in index["datasets"]] == [(ds.id, "d", "Initialized")]
    assert [(j["id"], j["parent"]) for j in index["models"]] == [(model.id, ds.id)]
    assert index["pretrained_models"] == []
    assert "/index.json" in client.get("/openapi.json").json()["paths"]


def test_job_redirects_to_its_kind_page(app, client):
    store = studio(app).store
    for kind, prefix in (("dataset", "/datasets/"), ("model", "/models/"), ("pretrained", "/pretrained_models/")):
        job = store.create(kind, kind)
        r = client.get(f"/jobs/{job.id}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == prefix + job.id
    assert client.get("/jobs/20200101-000000-abcd").status_code == 404
    page = client.get("/jobs/20200101-000000-abcd", headers=HTML)
    assert page.status_code == 404 and 'id="error-message"' in page.text


def test_log_routes(app, client):
    s = studio(app)
    job = s.store.create("dataset", "d")
    s.scheduler.submit(job.id, py("print('line one'); print('<b>two</b>')"))
    s.scheduler.wait(job.id, 20)
    full = client.get(f"/jobs/{job.id}/log.txt")
    assert "line one\n<b>two</b>\n" in full.text and full.headers["x-job-status"] == "Done"
    end = int(full.headers["x-log-offset"])
    assert end == (s.store.job_dir(job.id) / "log.txt").stat().st_size
    assert client.get(f"/jobs/{job.id}/log.txt?offset={end}").text == ""
    assert client.get(f"/jobs/{job.id}/log.txt?offset={end - 11}").text == "<b>two</b>\n"
    page = client.get(f"/jobs/{job.id}/log", headers=HTML).text
    assert "&lt;b&gt;two&lt;/b&gt;" in page and 'id="job-log-text"' in page


def test_abort_delete_clone_routes(app, client):
    s = studio(app)
    job = s.store.create("model", "m", {"base_lr": 0.01})
    s.scheduler.submit(job.id, py(SLEEPS), "cpu")
    other = s.store.create("model", "waits")
    s.scheduler.submit(other.id, py("pass"), "cpu")

    r = client.post(f"/jobs/{other.id}/abort", headers=HTML, follow_redirects=False)  # the form button
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{other.id}"
    assert s.store.get(other.id).status == "Aborted"
    r = client.post(f"/jobs/{job.id}/abort")
    assert r.json()["aborted"] is True
    assert s.scheduler.wait(job.id, 20).status == "Aborted"
    assert client.post(f"/jobs/{job.id}/abort").json()["aborted"] is False

    r = client.post(f"/jobs/{job.id}/clone")
    assert r.status_code == 201
    clone = s.store.get(r.json()["job_id"])
    assert clone.params == {"base_lr": 0.01} and clone.status == "Initialized"

    assert client.delete(f"/jobs/{job.id}").json() == {"job_id": job.id, "deleted": True}
    assert not s.store.job_dir(job.id).exists()
    r = client.post(f"/jobs/{clone.id}/delete", headers=HTML, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert client.delete(f"/jobs/{clone.id}").status_code == 404
    assert [j.id for j in s.store.list()] == [other.id]


def test_static_files_and_plotly_from_the_package(client):
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert js.content == (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    assert "function followJob" in client.get("/static/studio.js").text
    assert client.get("/static/studio.css").status_code == 200


# --- server-sent events ------------------------------------------------------------------------


def test_events_replay_a_finished_job(app, client):
    s = studio(app)
    job = s.store.create("dataset", "d")
    (s.store.job_dir(job.id) / "events.jsonl").write_text(
        '{"event": "progress", "done": 1}\n\n{"event": "done", "counts": {"train": 3}}\n{"event": "trunc'
    )
    s.store.update(job.id, status="Done", returncode=0)
    r = client.get(f"/jobs/{job.id}/events")
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[0]["event"] == "status" and events[0]["status"] == "Done"
    assert events[1:] == [
        {"event": "progress", "done": 1, "_id": 1},
        {"event": "done", "counts": {"train": 3}, "_id": 2},
        {"event": "end", "status": "Done", "returncode": 0, "time": events[-1]["time"]},
    ]
    # a reconnecting browser sends the last id it saw: only what follows is replayed
    again = sse_events(client.get(f"/jobs/{job.id}/events", headers={"Last-Event-ID": "1"}).text)
    assert [e["event"] for e in again] == ["status", "done", "end"]


def test_events_follow_a_running_job_until_it_ends(tmp_path):
    app = create_app(config(tmp_path))
    s = studio(app)
    base, stop = serve_in_thread(config(tmp_path), app)
    try:
        job = s.store.create("model", "m")
        s.scheduler.submit(job.id, py(STEPPED), "cpu")
        seen: list[dict] = []
        with httpx.stream("GET", f"{base}/jobs/{job.id}/events", timeout=30) as r:
            buffer = ""
            for chunk in r.iter_text():
                buffer += chunk
                *blocks, buffer = buffer.split("\n\n")
                for event in sse_events("\n\n".join(blocks)):
                    seen.append(event)
                    if event.get("event") == "progress":
                        # the job is blocked until now: what follows can only come by following
                        assert s.store.get(job.id).status == "Running"
                        (s.store.job_dir(job.id) / "go").touch()
        kinds = [e["event"] for e in seen]
        assert kinds[-1] == "end" and seen[-1]["status"] == "Done"
        assert kinds.index("progress") < kinds.index("train") < len(kinds) - 1
        train = seen[kinds.index("train")]
        assert train["loss"] == "NaN" and train["_id"] == 2  # NaN is not JSON: sent as a string
        statuses = [e["status"] for e in seen if e["event"] == "status"]
        assert statuses[-1] == "Done" and "Running" in statuses
    finally:
        stop()


def test_events_of_unknown_job_is_404(client):
    assert client.get("/jobs/20200101-000000-abcd/events").status_code == 404


# --- path traversal ----------------------------------------------------------------------------


TRAVERSALS = [
    "/jobs/..%2F..%2Fetc%2Fpasswd",
    "/jobs/..%2F..%2Fetc/log.txt",
    "/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd/log",
    "/jobs/%2e%2e/events",
    "/jobs/....%2F%2F....%2F%2Fetc/status",
    "/static/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_path_traversal_in_urls_is_refused(client, url):
    for method in ("GET", "POST", "DELETE"):
        r = client.request(method, url)
        assert r.status_code in (400, 404, 405), (method, url, r.status_code)
        assert "root:" not in r.text


def test_raw_dot_segments_do_not_escape(tmp_path):
    """Without a client normalizing the URL: ``..`` segments sent as they are."""
    base, stop = serve_in_thread(config(tmp_path))
    try:
        host, port = base.removeprefix("http://").split(":")
        raw_paths = ("/static/../../../../../etc/passwd", "/jobs/../../../etc/passwd", "/static/..%2f..%2fetc/passwd")
        for path in raw_paths:
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                reply = b""
                while chunk := sock.recv(65536):
                    reply += chunk
            assert reply.split(b" ")[1] in (b"400", b"404"), (path, reply[:100])
            assert b"root:" not in reply
    finally:
        stop()


def test_a_symlink_out_of_a_job_folder_is_not_followed(app, client):
    s = studio(app)
    job = s.store.create("dataset", "d")
    os.symlink("/etc/passwd", s.store.job_dir(job.id) / "log.txt")
    os.symlink("/etc/passwd", s.store.job_dir(job.id) / "events.jsonl")
    for url in (f"/jobs/{job.id}/log.txt", f"/jobs/{job.id}/log", f"/jobs/{job.id}/events"):
        r = client.get(url)
        assert r.status_code == 400 and "root:" not in r.text


# --- limits and authentication -----------------------------------------------------------------


def test_body_over_the_limit_is_413(tmp_path):
    app = create_app(config(tmp_path, max_upload_bytes=1000))
    job = studio(app).store.create("model", "m")
    with TestClient(app) as client:
        r = client.post(f"/jobs/{job.id}/clone", content=b"x" * 1001)
        assert r.status_code == 413 and "1000" in r.json()["detail"]
        r = client.post(f"/jobs/{job.id}/clone", files={"weights": ("w.caffemodel", b"\0" * 5000)})
        assert r.status_code == 413
        assert len(studio(app).store.list()) == 1  # nothing was cloned
        assert client.post(f"/jobs/{job.id}/clone", content=b"x" * 1000).status_code == 201


def test_without_token_everything_is_open_on_loopback(client):
    assert client.get("/index.json").status_code == 200
    assert "nav-logout" not in client.get("/").text


def test_token_protects_every_route(tmp_path):
    app = create_app(config(tmp_path, token="s3cret"))
    job = studio(app).store.create("dataset", "d")
    with TestClient(app) as c:
        r = c.get("/", headers=HTML, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F"
        protected = (
            ("GET", "/index.json"),
            ("GET", f"/jobs/{job.id}/log.txt"),
            ("POST", f"/jobs/{job.id}/clone"),
            ("DELETE", f"/jobs/{job.id}"),
            ("GET", f"/jobs/{job.id}/events"),
            ("GET", "/openapi.json"),
        )
        for method, url in protected:
            r = c.request(method, url)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", url
        assert c.get("/index.json", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/index.json?token=wrong").status_code == 401
        assert c.get("/static/studio.css").status_code == 200  # the login page needs its style
        assert 'id="login-password"' in c.get("/login").text

        assert c.get("/index.json", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert studio(app).store.get(job.id)  # nothing was deleted above
        r = c.get("/index.json?token=s3cret")  # a shared link: sets the cookie for the pages that follow
        assert r.status_code == 200 and r.cookies.get(COOKIE) == session_value("s3cret")
        assert c.get("/index.json").status_code == 200  # the cookie now does it
        assert "s3cret" not in r.headers["set-cookie"]  # the cookie is an HMAC, not the token


def test_login_page_sets_the_cookie(tmp_path):
    app = create_app(config(tmp_path, token="s3cret"))
    with TestClient(app) as c:
        r = c.post("/login", data={"password": "nope", "next": "/index.json"})
        assert r.status_code == 401 and 'id="login-error"' in r.text
        assert c.get("/index.json").status_code == 401
        r = c.post("/login", data={"password": "s3cret", "next": "/index.json"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/index.json"
        assert c.get("/index.json").status_code == 200
        assert 'id="nav-logout"' in c.get("/").text
        r = c.post("/login", data={"password": "s3cret", "next": "//evil.example/"}, follow_redirects=False)
        assert r.headers["location"] == "/"  # no open redirect
        c.get("/logout")
        assert c.get("/index.json").status_code == 401


def test_non_loopback_host_needs_a_token(tmp_path):
    with pytest.raises(CaffeError, match="--token"):
        create_app(config(tmp_path, host="0.0.0.0"))
    create_app(config(tmp_path, host="0.0.0.0", token="t"))
    create_app(config(tmp_path, host="0.0.0.0", unsafe_no_auth=True))
    create_app(config(tmp_path, host="::1"))
    with pytest.raises(CaffeError, match="unknown studio setting"):
        create_app({**config(tmp_path), "jobsdir": "x"})


def test_caffe_studio_command_refuses_open_bind(tmp_path, capsys):
    assert caffe_main(["studio", "--host", "0.0.0.0", "--jobs-dir", str(tmp_path), "--devices", "cpu"]) == 1
    assert caffe_main(["studio", "--devices", "tpu", "--jobs_dir", str(tmp_path)]) == 1
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert caffe_main(["studio", "--port", "70000"]) == 1
    assert caffe_main(["studio", "--stop_grace", "-1", "--jobs-dir", str(tmp_path)]) == 1
    assert "--stop_grace must be a number of seconds >= 0" in capsys.readouterr().err


def test_serve_in_thread_serves_and_stops(tmp_path):
    base, stop = serve_in_thread(config(tmp_path))
    assert httpx.get(f"{base}/index.json").json()["datasets"] == []
    stop()
    time.sleep(0.1)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/index.json", timeout=2)
