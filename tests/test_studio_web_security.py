"""Studio web security (issue 12, items 2, 4 and 7): no cross-site changes (Origin / Referer /
Sec-Fetch-Site, DNS rebinding, CSRF token), 413 for chunked over-limit bodies, login attempt limits."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from caffe.studio.app import COOKIE, LoginLimiter, create_app
from caffe.studio.csrf import host_allowed, server_names

OWN = "http://127.0.0.1:5000"
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def config(tmp_path: Path, **kw) -> dict:
    return {"jobs_dir": tmp_path / "jobs", "devices": ["cpu"], "abort_grace": 2.0, **kw}


def snapshot(app) -> list[tuple[str, str, str]]:
    """The store's jobs (id, kind, status): what a refused request must leave as it was."""
    return sorted((j.id, j.kind, j.status) for j in app.state.studio.store.list())


def with_jobs(app) -> dict[str, str]:
    """One job of each kind: {kind: id}."""
    store = app.state.studio.store
    return {kind: store.create(kind, f"a {kind}").id for kind in ("dataset", "model", "pretrained")}


def state_changing_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every state-changing route of the app, path parameters filled with a job id."""
    job = app.state.studio.store.list()[0].id
    out = []

    def walk(routes) -> None:
        for route in routes:
            if isinstance(route, APIRoute):
                out.extend((m, re.sub(r"\{[^}]+\}", job, route.path)) for m in sorted(route.methods & WRITES))
            elif hasattr(route, "original_router"):  # an included router (the routes_* modules)
                walk(route.original_router.routes)

    walk(app.routes)
    return out


@pytest.fixture
def app(tmp_path):
    app = create_app(config(tmp_path))
    with_jobs(app)
    return app


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app, base_url=OWN) as c:
        yield c


# --- item 2: cross-site requests -------------------------------------------------------------------


CROSS_SITE = [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},  # sandboxed iframes, file:// pages
    {"Origin": "http://127.0.0.1:8000"},  # another port is another origin
    {"Origin": "https://127.0.0.1:5000"},  # and another scheme
    {"Referer": "http://evil.example/attack.html"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site", "Origin": OWN},
]


@pytest.mark.parametrize("headers", CROSS_SITE, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_every_state_changing_route_refuses_another_origin(app, client, headers):
    routes = state_changing_routes(app)
    assert len(routes) >= 15  # forms and JSON routes of every kind of job, and /login
    before = snapshot(app)
    for method, path in routes:
        r = client.request(
            method,
            path,
            headers={**headers, "Accept": "application/json"},
            data={"dataset_name": "x", "job_name": "x", "csrf_token": "guessed"},
        )
        assert r.status_code == 403, (method, path, r.status_code)
        assert "cross-site" in r.json()["detail"]
    assert snapshot(app) == before


def test_every_state_changing_route_needs_the_token_from_a_browser(app, client):
    before = snapshot(app)
    for method, path in state_changing_routes(app):
        if path == "/login":
            continue  # acts with no session's authority (its Origin is checked)
        r = client.request(
            method,
            path,
            headers={"Origin": OWN, "Accept": "application/json"},
            data={"dataset_name": "x", "job_name": "x"},
        )
        assert r.status_code == 403 and "CSRF token" in r.json()["detail"], (method, path, r.status_code)
    assert snapshot(app) == before


def test_cross_origin_form_posts_create_and_delete_nothing(app, client, tmp_path):
    jobs = with_jobs(app)
    before = snapshot(app)
    evil = {"Origin": "http://evil.example", "Accept": "text/html"}
    posts = [
        ("/datasets/images/classification", {"dataset_name": "evil", "folder_train": str(tmp_path)}),
        ("/pretrained_models", {"job_name": "evil"}),
        (f"/jobs/{jobs['model']}/clone", {}),
        (f"/jobs/{jobs['dataset']}/delete", {}),
        (f"/jobs/{jobs['model']}/abort", {}),
        (f"/pretrained_models/{jobs['pretrained']}/delete", {}),
    ]
    for path, data in posts:
        r = client.post(path, data=data, headers=evil, follow_redirects=False)
        assert r.status_code == 403 and 'id="error-message"' in r.text, path
    assert client.delete(f"/jobs/{jobs['dataset']}", headers=evil).status_code == 403
    assert snapshot(app) == before


def test_scripts_without_origin_or_cookie_keep_working(app, client):
    """curl / httpx: no Origin, no Referer, no cookie, no token configured."""
    job = with_jobs(app)["model"]
    r = client.post(f"/jobs/{job}/clone", headers={"Accept": "application/json"})
    assert r.status_code == 201
    assert client.delete(f"/jobs/{r.json()['job_id']}").json()["deleted"] is True


def test_scripts_with_a_bearer_token_keep_working(tmp_path):
    app = create_app(config(tmp_path, token="s3cret"))
    job = with_jobs(app)["model"]
    with TestClient(app, base_url=OWN) as c:
        r = c.post(f"/jobs/{job}/clone", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 201


def test_same_origin_browser_requests_need_the_pages_token(app, client):
    job = with_jobs(app)["model"]
    token = app.state.studio.csrf_token
    own = {"Origin": OWN, "Accept": "application/json"}
    before = snapshot(app)
    assert client.post(f"/jobs/{job}/clone", headers=own).status_code == 403
    assert client.post(f"/jobs/{job}/clone", headers={**own, "X-CSRF-Token": "0" * 64}).status_code == 403
    assert client.post(f"/jobs/{job}/clone", headers=own, data={"csrf_token": "nope"}).status_code == 403
    assert snapshot(app) == before
    assert client.post(f"/jobs/{job}/clone", headers={**own, "X-CSRF-Token": token}).status_code == 201
    # the hidden field of a form, url-encoded or multipart; a Referer stands for a missing Origin
    assert client.post(f"/jobs/{job}/clone", headers=own, data={"csrf_token": token}).status_code == 201
    r = client.post(
        f"/jobs/{job}/clone",
        headers={"Referer": f"{OWN}/models/{job}", "Accept": "application/json"},
        data={"csrf_token": token},
        files={"unused": ("a.txt", b"a")},
    )
    assert r.status_code == 201


def test_cookie_authenticated_requests_need_the_token(tmp_path):
    app = create_app(config(tmp_path, token="s3cret"))
    job = with_jobs(app)["model"]
    with TestClient(app, base_url=OWN) as c:
        c.post("/login", data={"password": "s3cret"}, follow_redirects=False)
        assert COOKIE in c.cookies
        before = snapshot(app)
        assert c.post(f"/jobs/{job}/clone").status_code == 403  # no Origin, but the cookie speaks for it
        assert snapshot(app) == before
        token = app.state.studio.csrf_token
        assert c.post(f"/jobs/{job}/clone", headers={"X-CSRF-Token": token}).status_code == 201


def test_dns_rebinding_is_refused(app, tmp_path):
    """evil.example:5000 first resolves to the attacker, then to 127.0.0.1: Origin and Host agree."""
    job = with_jobs(app)["model"]
    before = snapshot(app)
    with TestClient(app, base_url="http://evil.example:5000") as c:
        rebound = {"Origin": "http://evil.example:5000"}
        assert c.post(f"/jobs/{job}/clone", headers=rebound).status_code == 421
        assert c.get("/index.json").status_code == 421  # nor may it read anything
        assert c.get("/").status_code == 421
    assert snapshot(app) == before
    named = create_app(config(tmp_path / "named", allowed_hosts=["studio.lab.example"]))
    with TestClient(named, base_url="http://studio.lab.example:5000") as c:
        assert c.get("/index.json").status_code == 200


def test_with_a_token_a_rebound_page_has_no_cookie(tmp_path):
    app = create_app(config(tmp_path, token="s3cret"))
    job = with_jobs(app)["model"]
    before = snapshot(app)
    with TestClient(app, base_url="http://studio.example.com") as c:  # behind a reverse proxy: any Host
        assert c.post(f"/jobs/{job}/clone", headers={"Origin": "http://studio.example.com"}).status_code == 401
    assert snapshot(app) == before


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:5000", True),
        ("[::1]:5000", True),
        ("localhost:5000", True),
        ("LOCALHOST", True),
        ("app.localhost:5000", True),
        ("192.168.1.20:5000", True),
        ("gpu-box:5000", True),
        ("testserver", True),
        ("evil.example:5000", False),
        ("127.0.0.1.evil.example", False),
        ("", False),
        ("evil.example.", False),
        ("studio.lab.example:5000", True),
        ("[bad", False),
    ],
)
def test_host_names(host, ok):
    assert host_allowed(host, server_names("127.0.0.1", ["studio.lab.example"])) is ok


def test_every_post_form_carries_the_token(app, client):
    jobs = with_jobs(app)
    token = app.state.studio.csrf_token
    pages = [
        "/datasets/images/classification/new",
        "/models/images/classification/new",
        "/pretrained_models/new",
        f"/datasets/{jobs['dataset']}",
        f"/models/{jobs['model']}",
        f"/pretrained_models/{jobs['pretrained']}",
        "/pretrained_models",
    ]
    html = {"Accept": "text/html"}
    forms = 0
    for page in pages:
        text = client.get(page, headers=html).text
        assert f'<meta name="csrf-token" content="{token}">' in text, page
        for form in re.findall(r'<form\b[^>]*method="post".*?</form>', text, flags=re.S):
            forms += 1
            assert f'<input type="hidden" name="csrf_token" value="{token}">' in form, (page, form[:200])
    assert forms >= 8


# --- item 4: chunked bodies over the limit -----------------------------------------------------------


def chunked_upload(field: str, size: int) -> Iterator[bytes]:
    """A multipart body sent in chunks, with no Content-Length (as a streaming client sends it)."""
    yield (
        f'--XX\r\nContent-Disposition: form-data; name="{field}"; filename="f.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    for _ in range(size // 500):
        yield b"\0" * 500
    yield b"\r\n--XX--\r\n"


@pytest.mark.parametrize(
    "path",
    [
        "/pretrained_models",
        "/pretrained_models.json",
        "/datasets/images/classification",
        "/models/images/classification",
        "/models/images/classification/classify_one",
    ],
)
def test_chunked_body_over_the_limit_is_413(tmp_path, path):
    app = create_app(config(tmp_path, max_upload_bytes=2000))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post(
            path,
            content=chunked_upload("weights_file", 5000),
            headers={"content-type": "multipart/form-data; boundary=XX"},
        )
        assert r.status_code == 413 and "2000-byte limit" in r.json()["detail"]
    assert snapshot(app) == []
    assert not [p for p in (tmp_path / "jobs").iterdir() if p.is_dir()]


def test_caffe_serve_answers_413_to_chunked_bodies_too():
    from caffe.serve import ServeOptions
    from caffe.serve import create_app as serve_app

    class Stub:  # the body is refused before a model is used
        name = "stub"
        max_batch = None

    app = serve_app([Stub()], ServeOptions(max_body_bytes=2000))  # type: ignore[list-item]
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post(
            "/models/stub/predict",
            content=chunked_upload("file", 5000),
            headers={"content-type": "multipart/form-data; boundary=XX"},
        )
        assert r.status_code == 413 and "2000-byte limit" in r.json()["detail"]


# --- item 7: login attempt limits ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_login_limiter_backs_off_exponentially_per_client():
    clock = Clock()
    limits = LoginLimiter(free=5, base=1.0, max_wait=60.0, clock=clock)
    for _ in range(4):
        limits.failed("a")
        assert limits.wait("a") == 0
    waits = []
    for _ in range(8):
        limits.failed("a")
        waits.append(limits.wait("a"))
        clock.now += waits[-1]
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]
    assert limits.wait("b") == 0  # per client
    limits.failed("a")
    limits.succeeded("a")
    assert limits.wait("a") == 0
    for _ in range(5):
        limits.failed("a")
    clock.now += 3601  # forgotten after an hour without failures
    limits.failed("a")
    assert limits.wait("a") == 0


def test_login_limiter_memory_is_bounded():
    limits = LoginLimiter(capacity=100, clock=Clock())
    for i in range(1000):
        limits.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limits) == 100
    assert "10.0.3.231" in limits and "10.0.0.0" not in limits  # the least recent went first


def test_login_is_locked_after_failures_without_checking_the_password(tmp_path, caplog):
    app = create_app(config(tmp_path, token="s3cret"))
    clock = Clock()
    app.state.studio.login_limiter.clock = clock
    with TestClient(app, base_url=OWN) as c, caplog.at_level(logging.WARNING, logger="caffe"):
        for _ in range(5):
            assert c.post("/login", data={"password": "guess"}).status_code == 401
        r = c.post("/login", data={"password": "s3cret"}, follow_redirects=False)
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and COOKIE not in r.cookies
        assert 'id="login-error"' in r.text and "try again in 1 s" in r.text
        assert "failed login from testclient (5 in a row)" in caplog.text
        clock.now += 1
        assert c.post("/login", data={"password": "guess"}).status_code == 401  # the 6th: 2 s now
        assert c.post("/login", data={"password": "s3cret"}).status_code == 429
        with TestClient(app, base_url=OWN, client=("10.1.2.3", 4000)) as other:  # another client is not locked
            assert other.post("/login", data={"password": "s3cret"}, follow_redirects=False).status_code == 303
        clock.now += 2
        r = c.post("/login", data={"password": "s3cret"}, follow_redirects=False)
        assert r.status_code == 303 and COOKIE in r.cookies
        assert c.post("/login", data={"password": "guess"}).status_code == 401  # counting starts again


def test_wrong_bearer_tokens_count_as_failed_logins(tmp_path):
    app = create_app(config(tmp_path, token="s3cret"))
    app.state.studio.login_limiter.clock = Clock()
    with TestClient(app, base_url=OWN) as c:
        for _ in range(3):
            assert c.get("/index.json", headers={"Authorization": "Bearer guess"}).status_code == 401
        for _ in range(2):
            assert c.get("/index.json?token=guess").status_code == 401
        assert c.get("/index.json").status_code == 401  # no token offered: not counted, not locked
        r = c.get("/index.json", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"


def test_caffe_studio_allowed_hosts_flag(tmp_path, monkeypatch):
    """caffe studio --allowed_hosts gives the names to the app; without it the environment's list is used."""
    from caffe.studio import app as app_module
    from caffe.tools.cli import main as caffe_main

    seen: list = []
    monkeypatch.setattr(app_module, "serve", lambda config, access_log=False, on_ready=None: seen.append(config))
    base = ["studio", "--jobs_dir", str(tmp_path / "jobs"), "--devices", "cpu", "--data_roots", str(tmp_path)]
    assert caffe_main([*base, "--allowed_hosts", "studio.lab.example, gpu.lab.example"]) == 0
    assert caffe_main(base) == 0
    assert seen[0].allowed_hosts == ["studio.lab.example", "gpu.lab.example"]
    assert seen[1].allowed_hosts is None  # the app then reads $CAFFE_STUDIO_ALLOWED_HOSTS
    named = create_app(config(tmp_path / "named", allowed_hosts=seen[0].allowed_hosts))
    with TestClient(named, base_url="http://gpu.lab.example:5000") as c:
        assert c.get("/index.json").status_code == 200


def test_json_nested_thousands_deep_is_a_400(client):
    """Found by scripts/fuzz.py: the JSON decoder's RecursionError was a 500."""
    body = b"[" * 100_000 + b"]" * 100_000
    r = client.post("/datasets/images/classification.json", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.text
