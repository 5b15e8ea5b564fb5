"""Issue 12's browser test: a page served from another origin (``localhost:<port>``, a different site, and
``127.0.0.1:<port>``, the same site on another port) posts forms, fetch()es and submits from a sandboxed
iframe to the studio on 127.0.0.1 to create, clone, abort and delete jobs, in the system Chromium driven by
Playwright. Every such request reaches the studio and is refused; the store is left as it was. The same
actions from the studio's own pages still work."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from studio_e2e_helpers import artifacts_dir, browser_page

from caffe.studio.app import create_app, serve_in_thread

WRITES = {"POST", "PUT", "PATCH", "DELETE"}

ATTACK = """<!doctype html>
<html><head><title>cute cats</title></head><body>
<script>
const S = STUDIO, J = JOBS;
window.results = [];  // what each attempt ended with (for a failing test's message)
const done = (what) => { window.results.push(what); return what; };
function iframe(name) {
  const frame = document.createElement("iframe");
  frame.name = name;
  document.body.appendChild(frame);
  return frame;
}
function post(action, fields, enctype) {  // a form submitted into a hidden frame: a simple request
  return new Promise((resolve) => {
    const name = "f" + Math.random().toString(36).slice(2);
    iframe(name).onload = () => resolve(done(action));
    const form = document.createElement("form");
    Object.assign(form, {method: "post", action: S + action, target: name});
    if (enctype) form.enctype = enctype;
    for (const [k, v] of Object.entries(fields)) {
      const input = document.createElement("input");
      Object.assign(input, {type: "hidden", name: k, value: v});
      form.appendChild(input);
    }
    document.body.appendChild(form);
    form.submit();
  });
}
function sandboxed(action) {  // a sandboxed frame's requests carry "Origin: null"; loads twice
  return new Promise((resolve) => {
    const frame = document.createElement("iframe");
    frame.sandbox = "allow-forms allow-scripts";
    let loads = 0;
    frame.onload = () => { if (++loads === 2) resolve(done("sandboxed " + action)); };
    frame.srcdoc = `<form method="post" action="${S + action}"></form>` +
                   "<scr" + "ipt>onload = () => document.forms[0].submit()</scr" + "ipt>";
    document.body.appendChild(frame);
  });
}
const settle = (p) => p.then((r) => done("answered " + r.status), (e) => done("failed " + e));
Promise.all([
  post("/datasets/images/classification", {dataset_name: "evil", folder_train: "/tmp", csrf_token: "guess"},
       "multipart/form-data"),
  post("/datasets/images/classification.json", {dataset_name: "evil"}),
  post("/pretrained_models", {job_name: "evil"}, "multipart/form-data"),
  post("/models/images/classification", {model_name: "evil", dataset: J.dataset}),
  post(`/jobs/${J.model}/clone`, {}),
  post(`/jobs/${J.model}/abort`, {}),
  post(`/jobs/${J.dataset}/delete`, {}),
  post(`/pretrained_models/${J.pretrained}/delete`, {}),
  sandboxed(`/jobs/${J.model}/clone`),
  sandboxed(`/jobs/${J.dataset}/delete`),
  settle(fetch(S + `/jobs/${J.model}/clone`, {method: "POST", mode: "no-cors", credentials: "include"})),
  settle(fetch(S + "/datasets/images/classification.json", {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "text/plain"}, body: JSON.stringify({dataset_name: "evil"})})),
  settle(fetch(S + `/jobs/${J.dataset}`, {method: "DELETE", credentials: "include"})),  // preflighted
  settle(fetch(S + `/jobs/${J.model}/clone`, {method: "POST", headers: {"X-CSRF-Token": "guess"}})),
]).then(() => { document.title = "done"; });
</script>
</body></html>
"""


class Recorder:
    """ASGI middleware keeping (method, path, status, origin) of each request the studio answers."""

    def __init__(self, app: Any, log: list[tuple[str, str, int, str]]) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = dict(scope["headers"]).get(b"origin", b"").decode("latin-1")

        async def recording_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.log.append((scope["method"], scope["path"], message["status"], origin))
            await send(message)

        await self.app(scope, receive, recording_send)


@pytest.fixture
def studio(tmp_path) -> Iterator[tuple[str, Any, list[tuple[str, str, int, str]]]]:
    app = create_app({"jobs_dir": tmp_path / "jobs", "devices": ["cpu"]})
    log: list[tuple[str, str, int, str]] = []
    app.add_middleware(Recorder, log=log)
    url, stop = serve_in_thread(app.state.studio.config, app)
    try:
        yield url, app, log
    finally:
        stop()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def attacker(tmp_path) -> Iterator[tuple[Path, int]]:
    """A plain web server on another port of this machine: (its folder, its port)."""
    folder = tmp_path / "attacker"
    folder.mkdir()
    handler = partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="attacker", daemon=True)
    thread.start()
    try:
        yield folder, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def snapshot(app: Any) -> list[tuple[str, str, str]]:
    return sorted((j.id, j.kind, j.status) for j in app.state.studio.store.list())


@pytest.mark.slow
def test_another_origin_cannot_change_anything_but_the_studios_pages_can(studio, attacker):
    url, app, log = studio
    store = app.state.studio.store
    jobs = {kind: store.create(kind, f"my {kind}").id for kind in ("dataset", "model", "pretrained")}
    folder, port = attacker
    before, files_before = snapshot(app), sorted(p.name for p in store.jobs_dir.iterdir())
    page_html = ATTACK.replace("STUDIO", json.dumps(url)).replace("JOBS", json.dumps(jobs))
    (folder / "attack.html").write_text(page_html)

    with browser_page(artifacts_dir()) as (page, errors):
        for evil in (f"http://localhost:{port}", f"http://127.0.0.1:{port}"):
            log.clear()
            page.goto(f"{evil}/attack.html")
            try:
                page.wait_for_function("document.title === 'done'")
            except Exception as e:
                raise AssertionError(f"{page.evaluate('window.results')} {log}") from e
            writes = [entry for entry in log if entry[0] in WRITES]
            assert len(writes) >= 12, (evil, log, page.evaluate("window.results"))  # they did reach the studio
            assert all(status == 403 for _, _, status, _ in writes), (evil, writes)
            assert {origin for *_, origin in writes} == {evil, "null"}, writes
            assert snapshot(app) == before, evil
            assert sorted(p.name for p in store.jobs_dir.iterdir()) == files_before

        # the studio's own pages: a form (the delete button of a job page) and fetch() through studio.js
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(f"{url}/datasets/{jobs['dataset']}")
        page.click("#job-delete")
        page.wait_for_url(f"{url}/")
        clone = page.evaluate(f"studio.fetchJSON('/jobs/{jobs['model']}/clone', {{method: 'POST'}})")
        deleted = page.evaluate(f"studio.fetchJSON('/jobs/{jobs['pretrained']}', {{method: 'DELETE'}})")
        assert deleted["deleted"] is True
        assert errors == []
    ids = {j.id for j in store.list()}
    assert ids == {jobs["model"], clone["job_id"]}
