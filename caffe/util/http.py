"""HTTP plumbing shared by ``caffe serve`` and ``caffe studio``: errors, URL fetching, uvicorn, body limits.

* :class:`RequestError`: a user error answered with a status and ``{"detail": message}``.
* :func:`fetch_url`: an http(s) URL's bytes, with a timeout and a size limit (redirects to http(s) only).
* :func:`bind_socket`, :func:`uvicorn_server`, :func:`run_app`: a server on ``host:port`` whose messages are
  glog lines through the ``caffe`` logger.
* :class:`BodyLimitMiddleware`: 413 for a request body over the limit, before the app reads it.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from caffe.errors import CaffeError
from caffe.util import glog


class RequestError(Exception):
    """A user error answered with ``status`` and a ``{"detail": message}`` body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# ---------------------------------------------------------------------------------------------
# fetching URLs


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only (urllib's default also follows ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise RequestError(400, f"url {req.full_url!r} redirects to {newurl!r}: only http(s) URLs are fetched")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def fetch_url(url: str, timeout: float, max_bytes: int) -> bytes:
    """The bytes at an http(s) ``url``: RequestError 400 for a malformed URL, 413 over ``max_bytes``, 400 when it
    cannot be fetched."""
    if not isinstance(url, str) or not url.strip():
        raise RequestError(400, "url must be a non-empty string")
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https"):
        raise RequestError(400, f"url {url!r}: only http:// and https:// URLs are fetched")
    try:
        parsed.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as e:
        raise RequestError(400, f"url {url!r}: {e}") from None
    if not parsed.hostname:
        raise RequestError(400, f"url {url!r}: no host")
    req = urllib.request.Request(url.strip(), headers={"User-Agent": "neocaffe-serve/1", "Accept": "image/*"})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise RequestError(413, f"url {url!r}: {int(length)} bytes, more than the {max_bytes}-byte limit")
            data = resp.read(max_bytes + 1)
    except RequestError:
        raise
    except urllib.error.HTTPError as e:
        raise RequestError(400, f"url {url!r}: the server answered HTTP {e.code} {e.reason}") from None
    except TimeoutError:
        raise RequestError(400, f"url {url!r}: no answer within {timeout:g} s") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise RequestError(400, f"url {url!r}: cannot fetch it ({reason})") from None
    if len(data) > max_bytes:
        raise RequestError(413, f"url {url!r}: more than the {max_bytes}-byte limit")
    return data


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    return host == "localhost"


# ---------------------------------------------------------------------------------------------
# running under uvicorn (``caffe serve`` and ``caffe studio``)


def url_host(host: str) -> str:
    """``host`` as it stands in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one), inheritable, for ``uvicorn.Server.run``;
    a CaffeError naming the address when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CaffeError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app: Any, access_log: bool = False, graceful_shutdown_s: int = 5) -> Any:
    """A ``uvicorn.Server`` for ``app`` that leaves logging to the caller (no uvicorn log config)."""
    import uvicorn

    config = uvicorn.Config(app, log_config=None, access_log=access_log, timeout_graceful_shutdown=graceful_shutdown_s)
    return uvicorn.Server(config)


def run_app(
    app: Any, host: str, port: int, access_log: bool = False, on_listening: Callable[[int], None] | None = None
) -> None:
    """Serve ``app`` on ``host:port`` under uvicorn until interrupted, its messages as glog lines;
    ``on_listening(port)`` once the socket is bound (port 0: the free port taken)."""
    glog.route("uvicorn", "uvicorn.error", "uvicorn.access")
    sock = bind_socket(host, port)
    server = uvicorn_server(app, access_log)
    if on_listening is not None:
        on_listening(sock.getsockname()[1])
    server.run(sockets=[sock])


# ---------------------------------------------------------------------------------------------
# body size limit (checked before the body is used)

#: A body over the limit is still read (and dropped) up to this size before the 413 goes out, so that the
#: client, still sending, reads the answer instead of a connection reset; beyond it the connection is closed.
DRAIN_BYTES = 64 << 20


class _BodyTooLarge(RequestError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the {limit}-byte limit")


async def _drain(receive: Any, budget: int) -> bool:
    """Read and drop the rest of a request body, at most ``budget`` bytes: whether it was all read."""
    while budget >= 0:
        message = await receive()
        if message["type"] != "http.request":
            return False
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return budget >= 0
    return False


class BodyLimitMiddleware:
    """ASGI middleware: 413 for a body over ``max_bytes``, known from its Content-Length (the body is
    dropped unread) or counted while a streamed body arrives."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        length = headers.get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await self._reject(send, 400, "invalid Content-Length header", close=True)
                return
            if int(length) > self.max_bytes:
                # a client waiting for "100 Continue" sends nothing: no need to drain
                waiting = headers.get(b"expect", b"").lower() == b"100-continue"
                drained = not waiting and int(length) <= DRAIN_BYTES and await _drain(receive, DRAIN_BYTES)
                await self._reject(send, 413, _BodyTooLarge(self.max_bytes).message, close=not drained)
                return
        await self._limited(scope, receive, send)

    async def _limited(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Run the app on a body counted as it arrives: once over the limit, whatever the app does with
        the error raised in its ``receive`` (a 500, a 400 from a form parser, nothing) becomes a 413."""
        seen = 0
        over = False  # the limit was passed: the app's answer is dropped
        drained = True
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen, over, drained
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    if message.get("more_body", False):
                        drained = await _drain(receive, DRAIN_BYTES)
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if over and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await self._reject(send, 413, _BodyTooLarge(self.max_bytes).message, close=not drained)

    @staticmethod
    async def _reject(send: Any, status: int, message: str, close: bool) -> None:
        body = json.dumps({"detail": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
