"""The studio's web app: ``create_app(config)`` builds the FastAPI application ``caffe studio`` serves.

It holds the shared state (``app.state.studio``: config, store, scheduler, templates), protects every
route when a token is configured (login cookie, ``Authorization: Bearer``, or ``?token=``), answers
413 to bodies over ``max_upload_bytes``, serves static files (plotly.js from the installed ``plotly``
package) and the job-generic pages and routes: the home page, ``/index.json``, a job's log, its events
as server-sent events, abort, delete and clone. The dataset, model, pretrained-model and inference pages
come from ``routes_datasets.router``, ``routes_models.router`` and ``routes_inference.router``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, fields
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from caffe.errors import CaffeError
from caffe.studio.csrf import CrossSiteMiddleware, csrf_input, csrf_token, require_csrf_token, server_names
from caffe.studio.dependents import InUse, delete_job
from caffe.studio.failure import job_failure
from caffe.studio.gpus import job_hardware
from caffe.studio.paths import safe_join
from caffe.studio.scheduler import Scheduler, display_argv
from caffe.studio.store import Job, JobNotFound, JobStore
from caffe.studio.web import error_response, in_use_response, json_safe, studio_of, wants_html, with_models_flag
from caffe.util.http import bind_socket, is_loopback, url_host, uvicorn_server

HERE = Path(__file__).resolve().parent
MiB = 1 << 20
COOKIE = "caffe_studio_session"
# the page of each kind of job (served by routes_datasets / routes_models)
KIND_PAGES = {"dataset": "/datasets/{id}", "model": "/models/{id}", "pretrained": "/pretrained_models/{id}"}
_OPEN_PATHS = ("/login", "/logout", "/static/")
GRACEFUL_SHUTDOWN_S = 3  # seconds open connections get when the server stops
log = logging.getLogger("caffe")


def default_jobs_dir() -> Path:
    return Path(os.environ.get("CAFFE_STUDIO_JOBS") or "~/.neocaffe/studio").expanduser()


@dataclass
class StudioConfig:
    jobs_dir: Path = field(default_factory=default_jobs_dir)
    token: str | None = None  # password/token protecting every page and route; None: no authentication
    max_upload_bytes: int = 512 * MiB  # largest request body (pretrained weights are the big ones)
    max_image_bytes: int = 32 * MiB  # largest single image a form may upload (checked by the routes)
    devices: list[str] | None = None  # "cpu", "cuda:0", ...; None: cpu plus every CUDA device
    host: str = "127.0.0.1"
    port: int = 5000
    unsafe_no_auth: bool = False  # allow a non-loopback host without a token
    # server folders requests may name, symlinks followed (None: the default, the working directory, see
    # caffe.studio.paths.default_data_roots; [Path("/")]: every folder this process can read; []: none)
    data_roots: list[Path] | None = None
    abort_grace: float = 30.0  # seconds from SIGINT to SIGTERM on abort
    # dotted names the Host header may carry besides IP addresses, localhost and --host (see csrf.py);
    # None: $CAFFE_STUDIO_ALLOWED_HOSTS (separated by ',')
    allowed_hosts: list[str] | None = None
    # the jobs running when the server stops get SIGINT, then SIGTERM once a training has had two of its measured
    # iterations plus stop_grace seconds to snapshot (at most stop_wait_max; other jobs: stop_grace)
    stop_grace: float = 3.0
    stop_wait_max: float = 600.0
    allow_python_layers: bool = False  # run networks' Python layers (in worker processes, never in the server)

    @classmethod
    def of(cls, config: StudioConfig | Mapping[str, Any]) -> StudioConfig:
        if isinstance(config, StudioConfig):
            return config
        names = {f.name for f in fields(cls)}
        unknown = set(config) - names
        if unknown:
            raise CaffeError(f"unknown studio setting(s): {', '.join(sorted(unknown))}")
        return cls(**config)


@dataclass
class Studio:
    """Shared state of the app, at ``request.app.state.studio``."""

    config: StudioConfig
    store: JobStore
    scheduler: Scheduler
    templates: Jinja2Templates
    csrf_token: str = ""  # the token the pages carry (see csrf.py)
    login_limiter: LoginLimiter = field(default_factory=lambda: LoginLimiter())


def detect_devices() -> list[str]:
    import torch

    return ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]


# ---------------------------------------------------------------------------------------------
# authentication


def session_value(token: str) -> str:
    """The cookie value for a token (an HMAC, so the cookie never holds the token itself)."""
    return hmac.new(token.encode(), b"caffe-studio-session", hashlib.sha256).hexdigest()


class LoginLimiter:
    """Failed logins per client: after ``free`` failures in a row, each further try waits ``base * 2**k``
    seconds (k: the failures past ``free``, the wait at most ``max_wait``); a success, or ``forget_s``
    without a failure, forgets the client. At most ``capacity`` clients are kept (the least recent go)."""

    def __init__(
        self,
        free: int = 5,
        base: float = 1.0,
        max_wait: float = 900.0,
        forget_s: float = 3600.0,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.base, self.max_wait, self.forget_s = free, base, max_wait, forget_s
        self.capacity = capacity
        self.clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # client -> (count, last)
        self._lock = threading.Lock()

    def _delay(self, count: int) -> float:
        return 0.0 if count < self.free else min(self.max_wait, self.base * 2.0 ** (count - self.free))

    def _entry(self, client: str) -> tuple[int, float]:
        count, last = self._failures.get(client, (0, 0.0))
        if count and self.clock() - last > max(self.forget_s, self._delay(count)):
            del self._failures[client]
            return 0, 0.0
        return count, last

    def wait(self, client: str) -> float:
        """Seconds before ``client`` may try again (0: now)."""
        with self._lock:
            count, last = self._entry(client)
            return max(0.0, last + self._delay(count) - self.clock()) if count else 0.0

    def failed(self, client: str) -> None:
        """Count a failed attempt of ``client`` (and log it)."""
        with self._lock:
            count = self._entry(client)[0] + 1
            self._failures[client] = (count, self.clock())
            self._failures.move_to_end(client)
            while len(self._failures) > self.capacity:
                self._failures.popitem(last=False)
        delay = self._delay(count)
        log.warning(
            "Studio: failed login from %s (%d in a row)%s", client, count, f"; next try in {delay:g} s" if delay else ""
        )

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def __len__(self) -> int:
        return len(self._failures)

    def __contains__(self, client: object) -> bool:
        """Whether failures of ``client`` are on record."""
        return client in self._failures


def client_of(scope: Mapping[str, Any]) -> str:
    """The client's address (the key of the login limits)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def too_many_attempts(wait: float) -> tuple[str, dict[str, str]]:
    """The message and headers of a 429 to a client that must wait ``wait`` seconds."""
    seconds = max(1, math.ceil(wait))
    return f"Too many failed login attempts: try again in {seconds} s.", {"Retry-After": str(seconds)}


class AuthMiddleware:
    """ASGI middleware: without a valid cookie, bearer token or ``?token=``, pages redirect to /login
    and everything else gets 401. A valid ``?token=`` also sets the cookie. A wrong bearer token or
    ``?token=`` counts as a failed login in ``limiter``; a client it locks out gets 429 unchecked."""

    def __init__(self, app: Any, token: str, limiter: LoginLimiter) -> None:
        self.app = app
        self.token = token
        self.cookie = session_value(token)
        self.limiter = limiter

    def _check(self, scope: dict[str, Any]) -> str | None:
        """'cookie' / 'bearer' / 'query' when authenticated, else None."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        cookie = SimpleCookie()
        with contextlib.suppress(Exception):
            cookie.load(headers.get("cookie", ""))
        if COOKIE in cookie and hmac.compare_digest(cookie[COOKIE].value, self.cookie):
            return "cookie"
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return "bearer"
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if any(hmac.compare_digest(t.encode(), self.token.encode()) for t in query.get("token", ())):
            return "query"
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        presented = _presents_token(scope)
        wait = self.limiter.wait(client_of(scope)) if presented else 0.0
        if wait:
            message, headers = too_many_attempts(wait)
            await JSONResponse({"detail": message, "errors": [message]}, 429, headers)(scope, receive, send)
            return
        how = self._check(scope)
        if how is None:
            if presented:
                self.limiter.failed(client_of(scope))
            await self._refuse(scope, receive, send)
            return
        if presented and how != "cookie":
            self.limiter.succeeded(client_of(scope))
        if how != "query":
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"set-cookie", _cookie_header(self.cookie).encode())]
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    async def _refuse(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        if request.method == "GET" and wants_html(request):
            target = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
            response: Response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        else:
            response = JSONResponse(
                {"detail": "authentication required: log in, or send 'Authorization: Bearer TOKEN' or ?token=TOKEN"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        await response(scope, receive, send)


def _presents_token(scope: Mapping[str, Any]) -> bool:
    """Whether a request offers a token (a bearer header or ``?token=``), not just a cookie."""
    bearer = any(k.lower() == b"authorization" and v[:7].lower() == b"bearer " for k, v in scope.get("headers", ()))
    return bearer or "token" in parse_qs(scope.get("query_string", b"").decode("latin-1"))


def _cookie_header(value: str, max_age: int = 30 * 24 * 3600) -> str:
    return f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax"


def _safe_next(target: str | None) -> str:
    """A local redirect target only (no scheme, no //host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


# ---------------------------------------------------------------------------------------------
# events (server-sent events)


def _sse(data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {json.dumps(json_safe(data), allow_nan=False)}\n\n".encode()


class _EventFile:
    """Reads the complete lines added to a JSON-lines file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.count = 0  # lines read so far (the SSE id of the last one)

    def new_events(self) -> list[tuple[int, dict[str, Any]]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for its newline
        self.offset += end
        out = []
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            self.count += 1
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    out.append((self.count, event))
        return out


def follow_job(studio: Studio, job_id: str, last_id: int = 0, poll: float = 0.25) -> AsyncIterator[bytes]:
    """SSE stream of a job: its status, events.jsonl replayed (lines after ``last_id``), then new lines and
    status changes as they come; ends with ``{"event": "end", "status": ...}`` once the job is not active.
    The job and its file are checked now (JobNotFound, UnsafePathError), before a response starts."""
    studio.store.get(job_id)
    return _follow(studio, job_id, _EventFile(safe_join(studio.store.job_dir(job_id), "events.jsonl")), last_id, poll)


async def _follow(studio: Studio, job_id: str, events: _EventFile, last_id: int, poll: float) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_status(event: dict[str, Any]) -> None:
        if event.get("job") == job_id:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the stream has ended
                loop.call_soon_threadsafe(changes.put_nowait, event)

    unsubscribe = studio.scheduler.subscribe(on_status)
    try:
        job = studio.store.get(job_id)
        yield _sse(
            {
                "event": "status",
                "time": round(time.time(), 3),
                "job": job_id,
                "status": job.status,
                "returncode": job.returncode,
            }
        )
        last_beat = time.monotonic()
        held: list[dict[str, Any]] = []  # a status change caught while waiting (sent after the file's lines)
        while True:
            for n, event in events.new_events():
                if n > last_id:
                    yield _sse(event, n)
            for event in held:
                yield _sse(event)
            held.clear()
            while not changes.empty():
                yield _sse(changes.get_nowait())
            # checked before the job is read: a job no longer running has its final status stored
            leaving = studio.scheduler.stopping and not studio.scheduler.is_running(job_id)
            try:
                job = studio.store.get(job_id)
            except JobNotFound:
                yield _sse({"event": "end", "status": "Deleted"})
                return
            if not job.active:
                for n, event in events.new_events():
                    if n > last_id:
                        yield _sse(event, n)
                yield _sse(
                    {"event": "end", "time": round(time.time(), 3), "status": job.status, "returncode": job.returncode}
                )
                return
            if leaving:
                return  # the server is stopping and this waiting job will not start here
            if time.monotonic() - last_beat > 15:
                last_beat = time.monotonic()
                yield b": keep-alive\n\n"
            with contextlib.suppress(asyncio.TimeoutError):
                held.append(await asyncio.wait_for(changes.get(), poll))
    finally:
        unsubscribe()


# ---------------------------------------------------------------------------------------------
# the app


def _failure(store: JobStore, job: Job | Mapping[str, Any]) -> dict[str, Any] | None:
    """Why a failed job (a Job, or a page's dict of its fields) failed, as ``failure.Failure``'s dict; None
    for the others."""
    fields = job if isinstance(job, Mapping) else job.to_dict()
    if fields.get("status") != "Error":
        return None
    return job_failure(store.job_dir(fields["id"]), fields.get("result") or {}, fields.get("returncode")).to_dict()


def _model_progress(store: JobStore, job: Job) -> dict[str, Any]:
    """A model's progress for the home list: ``{fraction, eta_seconds, text}`` ("42 %, about 3m 05s left")."""
    from caffe.studio.models import training_progress

    p = training_progress(store.job_dir(job.id))
    fraction = 1.0 if job.status == "Done" else p["progress"]
    eta = p["eta_seconds"] if job.status == "Running" else None
    text = f"{round(100 * fraction)} %" + (f", about {_duration(eta)} left" if eta else "")
    return {"fraction": fraction, "eta_seconds": eta, "text": text}


def _duration(seconds: float) -> str:
    """ "1h 02m", "3m 05s", "12s" (as the pages' studio.duration)."""
    s = round(seconds)
    h, m, r = s // 3600, s % 3600 // 60, s % 60
    return f"{h}h {m:02d}m" if h else f"{m}m {r:02d}s" if m else f"{r}s"


def _job_summary(job: Job, store: JobStore | None = None) -> dict[str, Any]:
    extra = {"progress": _model_progress(store, job)} if store is not None and job.kind == "model" else {}
    return {
        **extra,
        "id": job.id,
        "name": job.name,
        "kind": job.kind,
        "status": job.status,
        "created": job.created,
        "updated": job.updated,
        "parent": job.parent,
        "result": job.result,
        "gpus": job.gpus,
        "gpu_request": job.gpu_request,
        "hardware": job_hardware(job),
    }


def _gpu_state(scheduler: Scheduler) -> dict[str, Any]:
    """The GPU pool: every GPU, the free ones, and which job holds each of the others."""
    held = scheduler.held_gpus()
    return {
        "all": scheduler.gpus,
        "free": [g for g in scheduler.gpus if g not in held],
        "held": {str(g): job for g, job in held.items()},
    }


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters["datetime"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""
    env.filters["status_class"] = lambda s: f"status-{str(s).lower()}"
    env.filters["command"] = display_argv
    env.globals["job_page"] = lambda job: KIND_PAGES[job.kind].format(id=job.id)
    env.globals["hardware"] = job_hardware
    from caffe import __version__

    env.globals["version"] = __version__
    return templates


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _error(request: Request, status: int, message: str) -> Response:
    return error_response(request, status, message, wants_html(request))


def _include_kind_routers(app: FastAPI) -> None:
    from caffe.studio import routes_datasets, routes_inference, routes_models

    for module in (routes_datasets, routes_models, routes_inference):
        app.include_router(module.router)


def _host_names(config: StudioConfig) -> frozenset[str]:
    extra = config.allowed_hosts
    if extra is None:
        extra = [h.strip() for h in os.environ.get("CAFFE_STUDIO_ALLOWED_HOSTS", "").split(",") if h.strip()]
    return server_names(config.host, extra)


def create_app(config: StudioConfig | Mapping[str, Any]) -> FastAPI:
    """The studio app for ``config`` (a StudioConfig or a dict of its fields); its scheduler starts now
    (recovering interrupted jobs) and stops with the app's lifespan."""
    from caffe.util.http import BodyLimitMiddleware

    config = StudioConfig.of(config)
    if not config.token and not is_loopback(config.host) and not config.unsafe_no_auth:
        raise CaffeError(
            f"refusing to serve on {config.host} without authentication: give --token (anyone who can reach "
            "this address could run jobs and read files), or --unsafe_no_auth on a trusted network"
        )
    config.jobs_dir = Path(config.jobs_dir).expanduser().resolve()
    if config.devices is None:
        config.devices = detect_devices()
    store = JobStore(config.jobs_dir)
    graces = {"abort_grace": config.abort_grace, "stop_grace": config.stop_grace}
    scheduler = Scheduler(store, config.devices, **graces, stop_wait_max=config.stop_wait_max).start()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(scheduler.stop)

    from caffe import __version__

    app = FastAPI(
        title="neocaffe studio",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(require_csrf_token)],
    )
    templates = _templates()
    templates.env.globals["auth_enabled"] = bool(config.token)
    # with a token, pages opened before a restart keep working; without one, a secret of this process
    token = csrf_token(session_value(config.token).encode() if config.token else secrets.token_bytes(32))
    templates.env.globals["csrf_token"] = token
    templates.env.globals["csrf_input"] = lambda: csrf_input(token)
    templates.env.globals["job_failure"] = lambda job: _failure(store, job)
    app.state.studio = studio = Studio(config, store, scheduler, templates, token)

    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_upload_bytes)
    if config.token:
        app.add_middleware(AuthMiddleware, token=config.token, limiter=studio.login_limiter)
    app.add_middleware(CrossSiteMiddleware, names=_host_names(config), check_host=not config.token)

    @app.exception_handler(JobNotFound)
    async def _not_found(request: Request, e: JobNotFound) -> Response:
        return _error(request, 404, str(e))

    @app.exception_handler(CaffeError)
    async def _bad_input(request: Request, e: CaffeError) -> Response:  # UnsafePathError among them
        return _error(request, 400, str(e))

    _add_routes(app)
    _include_kind_routers(app)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_js() -> FileResponse:
        return FileResponse(_plotly_js(), media_type="text/javascript")

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/") -> Response:
        return studio_of(request).templates.TemplateResponse(request, "login.html", {"next": _safe_next(next)})

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        studio = studio_of(request)
        form = await request.form()
        target = _safe_next(str(form.get("next") or "/"))
        token = studio.config.token
        if token:
            client, limiter = client_of(request.scope), studio.login_limiter
            wait = limiter.wait(client)
            if wait:  # the password is not even looked at
                message, headers = too_many_attempts(wait)
                return studio.templates.TemplateResponse(
                    request, "login.html", {"next": target, "error": message}, status_code=429, headers=headers
                )
            if not hmac.compare_digest(str(form.get("password") or "").encode(), token.encode()):
                limiter.failed(client)
                return studio.templates.TemplateResponse(
                    request, "login.html", {"next": target, "error": "Wrong password."}, status_code=401
                )
            limiter.succeeded(client)
        response = RedirectResponse(target, status_code=303)
        if token:
            response.headers["set-cookie"] = _cookie_header(session_value(token))
        return response

    @app.get("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.headers["set-cookie"] = _cookie_header("", max_age=0)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request) -> Response:
        studio = studio_of(request)
        jobs = studio.store.list()
        names = {j.id: j.name for j in jobs}
        by_kind = {k: [j for j in jobs if j.kind == k] for k in ("dataset", "model", "pretrained")}
        return studio.templates.TemplateResponse(
            request,
            "home.html",
            {
                "datasets": by_kind["dataset"],
                "models": by_kind["model"],
                "pretrained": by_kind["pretrained"],
                "names": names,
                "progress": {j.id: _model_progress(studio.store, j) for j in by_kind["model"]},
                "gpus": _gpu_state(studio.scheduler),
            },
        )

    @app.get("/index.json", summary="All jobs: datasets, models and pretrained models")
    def index_json(request: Request) -> dict[str, Any]:
        studio = studio_of(request)
        from caffe import __version__

        jobs = studio.store.list()
        return {
            "version": __version__,
            "jobs_dir": str(studio.config.jobs_dir),
            "devices": studio.config.devices,
            "gpus": _gpu_state(studio.scheduler),
            "datasets": [_job_summary(j) for j in jobs if j.kind == "dataset"],
            "models": [_job_summary(j, studio.store) for j in jobs if j.kind == "model"],
            "pretrained_models": [_job_summary(j) for j in jobs if j.kind == "pretrained"],
        }

    @app.get("/jobs/{job_id}", summary="Redirect to the job's page")
    def job_page(request: Request, job_id: str) -> RedirectResponse:
        job = studio_of(request).store.get(job_id)
        return RedirectResponse(KIND_PAGES[job.kind].format(id=job.id), status_code=303)

    @app.get("/jobs/{job_id}/status", summary="A job's status")
    def job_status(request: Request, job_id: str) -> dict[str, Any]:
        return _job_summary(studio_of(request).store.get(job_id))

    @app.get("/jobs/{job_id}/log", response_class=HTMLResponse, summary="A job's log page")
    def job_log_page(request: Request, job_id: str) -> Response:
        studio = studio_of(request)
        job = studio.store.get(job_id)
        text, _ = _read_log(studio, job_id, 0)
        return studio.templates.TemplateResponse(request, "job_log.html", {"job": job, "log": text})

    @app.get("/jobs/{job_id}/log.txt", response_class=PlainTextResponse, summary="A job's log (from a byte offset)")
    def job_log(request: Request, job_id: str, offset: int = 0) -> Response:
        studio = studio_of(request)
        job = studio.store.get(job_id)
        text, end = _read_log(studio, job_id, max(0, offset))
        return PlainTextResponse(text, headers={"X-Log-Offset": str(end), "X-Job-Status": job.status})

    @app.get("/jobs/{job_id}/events", summary="A job's events as server-sent events (replay, then follow)")
    def job_events(request: Request, job_id: str) -> StreamingResponse:
        studio = studio_of(request)
        last = request.headers.get("last-event-id", "")
        stream = follow_job(studio, job_id, int(last) if last.isdigit() else 0)
        return StreamingResponse(
            stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    @app.post("/jobs/{job_id}/abort", summary="Abort a waiting or running job")
    def job_abort(request: Request, job_id: str) -> Response:
        studio = studio_of(request)
        studio.store.get(job_id)
        aborted = studio.scheduler.abort(job_id)
        if wants_html(request):
            return RedirectResponse(f"/jobs/{job_id}", status_code=303)
        return JSONResponse({"job_id": job_id, "aborted": aborted, "status": studio.store.get(job_id).status})

    async def delete(request: Request, job_id: str) -> Response | None:
        """Delete the job (None), or the 409 answer when models use it and ``with_models`` was not given."""
        studio = studio_of(request)
        with_models = await with_models_flag(request)
        try:
            await run_in_threadpool(delete_job, studio.store, studio.scheduler, job_id, with_models)
        except InUse as e:
            return in_use_response(request, e, f"/jobs/{job_id}/delete", wants_html(request))
        return None

    @app.delete("/jobs/{job_id}", summary="Delete a job (ended first if it runs; ?with_models=1: with its models)")
    async def job_delete(request: Request, job_id: str) -> Response:
        """A dataset or pretrained model that models use: 409 listing them, unless ``?with_models=1``."""
        refused = await delete(request, job_id)
        return refused or JSONResponse({"job_id": job_id, "deleted": True})

    @app.post("/jobs/{job_id}/delete", include_in_schema=False)
    async def job_delete_form(request: Request, job_id: str) -> Response:
        refused = await delete(request, job_id)
        if refused is not None:
            return refused
        if wants_html(request):
            return RedirectResponse("/", status_code=303)
        return JSONResponse({"job_id": job_id, "deleted": True})

    @app.post("/jobs/{job_id}/clone", summary="A new job with the same parameters (not run)")
    def job_clone(request: Request, job_id: str) -> Response:
        job = studio_of(request).scheduler.clone(job_id)
        if wants_html(request):
            return RedirectResponse(f"/jobs/{job.id}", status_code=303)
        return JSONResponse({"job_id": job.id, "name": job.name, "status": job.status}, status_code=201)


def _read_log(studio: Studio, job_id: str, offset: int, limit: int = 4 * MiB) -> tuple[str, int]:
    """The log's text from byte ``offset`` (at most ``limit`` bytes, the last ones) and the end offset."""
    path = safe_join(studio.store.job_dir(job_id), "log.txt")  # a symlink out of the folder is refused
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(offset, size - limit) if offset < size else size
            f.seek(start)
            data = f.read(size - start)
    except FileNotFoundError:
        return "", 0
    return data.decode("utf-8", errors="replace"), start + len(data)


# ---------------------------------------------------------------------------------------------
# running it


def serve(
    config: StudioConfig | Mapping[str, Any], access_log: bool = False, on_ready: Callable[[str], None] | None = None
) -> None:
    """Run the studio in this thread until interrupted (what ``caffe studio`` does)."""
    config = StudioConfig.of(config)
    app = create_app(config)
    sock = bind_socket(config.host, config.port)
    port = sock.getsockname()[1]
    if on_ready:
        on_ready(f"http://{url_host(config.host)}:{port}")
    server = uvicorn_server(app, access_log, GRACEFUL_SHUTDOWN_S)
    scheduler = app.state.studio.scheduler
    handle_exit = server.handle_exit  # uvicorn's SIGINT / SIGTERM handler

    signals = [0]

    def on_exit_signal(sig: int, frame: Any) -> None:
        # the jobs start stopping now, while open connections drain (not in a handler: it takes a lock); a second
        # Ctrl-C ends them at once, without waiting for their snapshots
        signals[0] += 1
        if signals[0] == 2:
            log.warning("studio: second stop signal: ending the running jobs now")
        stopper = scheduler.request_stop if signals[0] == 1 else scheduler.force_stop
        threading.Thread(target=stopper, name="studio-stop", daemon=True).start()
        handle_exit(sig, frame)

    server.handle_exit = on_exit_signal
    try:
        server.run(sockets=[sock])
    finally:  # done by the lifespan already, unless a second Ctrl-C made uvicorn skip it
        scheduler.stop()


def serve_in_thread(
    config: StudioConfig | Mapping[str, Any], app: FastAPI | None = None
) -> tuple[str, Callable[[], None]]:
    """Serve the studio (``app``, or a new one for ``config``) from a background thread on a free port
    of ``config.host``: returns ``(base_url, stop)`` (for tests)."""
    config = StudioConfig.of(config)
    app = app or create_app(config)
    sock = bind_socket(config.host, 0)
    server = uvicorn_server(app, graceful_shutdown_s=GRACEFUL_SHUTDOWN_S)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="studio-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the studio server did not start")
        time.sleep(0.02)

    scheduler = app.state.studio.scheduler

    def stop() -> None:
        scheduler.request_stop()  # the jobs stop while connections drain
        server.should_exit = True
        thread.join(scheduler.stop_time_left() + scheduler.kill_grace + GRACEFUL_SHUTDOWN_S + 5)
        sock.close()
        scheduler.stop()  # done by the lifespan already, unless the server thread is stuck

    return f"http://{url_host(config.host)}:{sock.getsockname()[1]}", stop
