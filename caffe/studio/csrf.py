"""Cross-site protection for the studio: no web page of another origin may make it create, change or
delete anything, and no DNS name an attacker controls may reach it.

- ``CrossSiteMiddleware`` (headers only, before the body is read):
  * without a token configured, the ``Host`` header must name this server (an IP address, a name without a
    dot, ``localhost`` / ``*.localhost``, the ``--host``, the machine's name or ``allowed_hosts``): else 421.
    A DNS-rebinding page needs a public, dotted name of its own, so this stops it reading or writing.
    With a token a rebound page gets no cookie, so any ``Host`` is accepted (reverse proxies).
  * a state-changing request (POST, PUT, PATCH, DELETE) is refused with 403 when ``Sec-Fetch-Site`` says
    another origin sent it, or when its ``Origin`` (lacking it, its ``Referer``) is not the server's own
    (``Origin: null`` included). Scripts send neither header: they pass.
- ``require_csrf_token`` (an app-wide dependency): a state-changing request from a browser (a cookie,
  an ``Origin``, a ``Referer`` or a ``Sec-Fetch-Site``) carries the page's token, in the
  ``X-CSRF-Token`` header or the ``csrf_token`` form field (``csrf_input()`` in the templates). /login
  is exempt (it acts with no session's authority).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from markupsafe import Markup

from caffe.studio.web import error_response, studio_of, wants_html

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
TOKEN_FIELD = "csrf_token"
TOKEN_HEADER = "x-csrf-token"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_BROWSER_HEADERS = ("origin", "referer", "sec-fetch-site")
_TOKEN_EXEMPT = ("/login",)


def csrf_token(secret: bytes) -> str:
    """The token the studio's pages carry (an HMAC of the server's secret)."""
    return hmac.new(secret, b"caffe-studio-csrf", hashlib.sha256).hexdigest()


def csrf_input(token: str) -> Markup:
    """The hidden form field carrying ``token``."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(TOKEN_FIELD, token)


def _host_name(host: str) -> str:
    """The name in a Host header or URL netloc, lower case, without port or IPv6 brackets."""
    try:
        return (urlsplit(f"//{host}").hostname or "").rstrip(".")
    except ValueError:
        return ""


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def server_names(host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The dotted names this server answers to besides IP addresses and single-label names: the bound
    host, the machine's name when bound to every interface, and ``extra``."""
    names = {_host_name(h) for h in extra} | {_host_name(host)}
    if host in _WILDCARDS:
        names.add(socket.gethostname().lower())
    return frozenset(n for n in names if n)


def host_allowed(host: str, names: frozenset[str]) -> bool:
    """Whether a Host header names this server (a rebinding attacker's name is public, hence dotted)."""
    name = _host_name(host)
    if not name:
        return False
    return _is_ip(name) or "." not in name or name.endswith(".localhost") or name in names


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL or Origin value; None when it has none (``null``, garbage)."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or port is None:
        return None
    return parts.scheme.lower(), parts.hostname.rstrip("."), port


def cross_site_reason(method: str, scheme: str, headers: dict[str, str]) -> str | None:
    """Why a request must be refused as cross-site (None: it may go on); ``headers`` lower-case names."""
    if method.upper() in SAFE_METHODS:
        return None
    site = headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    source = headers.get("origin") or headers.get("referer")
    if source is None:
        return None  # not a browser: a script, authenticated (or not) like any other
    own = _origin(f"{scheme}://{headers.get('host', '')}")
    if own is None or _origin(source) != own:
        return f"cross-site request refused: {source[:100]!r} is not this server's origin"
    return None


class CrossSiteMiddleware:
    """ASGI middleware: 421 for a Host that is not this server's (when ``check_host``), 403 for a
    state-changing request sent by another origin's page (see the module's docstring)."""

    def __init__(self, app: Any, names: frozenset[str], check_host: bool) -> None:
        self.app = app
        self.names = names
        self.check_host = check_host

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        host = headers.get("host", "")
        if self.check_host and not host_allowed(host, self.names):
            message = f"unknown host {host[:100]!r}: give it to the studio's allowed_hosts if it names this server"
            await self._refuse(scope, receive, send, 421, message)
            return
        reason = cross_site_reason(scope["method"], scope.get("scheme", "http"), headers)
        if reason:
            await self._refuse(scope, receive, send, 403, reason)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: dict[str, Any], receive: Any, send: Any, status: int, message: str) -> None:
        request = Request(scope, receive)
        await error_response(request, status, message, wants_html(request))(scope, receive, send)


def _from_browser(request: Request) -> bool:
    """A browser sent it (cookies, or headers only browsers add); scripts send none of them."""
    return bool(request.cookies) or any(h in request.headers for h in _BROWSER_HEADERS)


async def require_csrf_token(request: Request) -> None:
    """Dependency of every route: 403 for a browser's state-changing request without the page's token."""
    if request.method in SAFE_METHODS or request.url.path in _TOKEN_EXEMPT:
        return
    if not _from_browser(request):
        return
    expected = studio_of(request).csrf_token
    given = request.headers.get(TOKEN_HEADER)
    content_type = request.headers.get("content-type", "")
    if given is None and content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        value = (await request.form()).get(TOKEN_FIELD)
        given = value if isinstance(value, str) else None
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
