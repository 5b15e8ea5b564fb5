"""Request helpers shared by the studio's app and its route modules: the app state, content negotiation,
JSON bodies and answers, error answers, and looking up a job of a given kind."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response

from caffe.errors import DataError
from caffe.studio.datasets import allowed_roots

if TYPE_CHECKING:
    from caffe.studio.app import Studio
    from caffe.studio.dependents import InUse
    from caffe.studio.store import Job


def studio_of(request: Request) -> Studio:
    """The app's shared state (config, store, scheduler, templates)."""
    return request.app.state.studio


def data_roots(request: Request) -> list[Path]:
    """The server folders requests may name: the config's ``data_roots``, resolved (None: the default,
    the working directory; see :func:`caffe.studio.paths.default_data_roots`)."""
    return allowed_roots(studio_of(request).config.data_roots)


def wants_html(request: Request) -> bool:
    """Whether the caller is a browser page (answer with a page or a redirect, not JSON)."""
    return "text/html" in request.headers.get("accept", "")


def json_safe(value: Any) -> Any:
    """NaN and infinities as the strings "NaN", "Infinity", "-Infinity" (JSON has no such numbers;
    JavaScript's ``Number()`` reads the strings back)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


async def json_fields(request: Request) -> dict[str, Any] | None:
    """The form fields of a request sent as a JSON object (None when it is a form); DataError when the
    body is not JSON or not an object."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: arrays or objects nested thousands deep
        raise DataError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise DataError("the JSON body must be an object of form fields")
    return body


def error_response(request: Request, status: int, message: str, html: bool) -> Response:
    """An error as the ``error.html`` page or as JSON ``{"detail", "errors"}``."""
    if html:
        return studio_of(request).templates.TemplateResponse(
            request, "error.html", {"status": status, "message": message}, status_code=status
        )
    return JSONResponse({"detail": message, "errors": [message]}, status_code=status)


def job_of_kind(
    request: Request,
    job_id: str,
    kind: str,
    noun: str | None = None,
    error: Callable[[str], Exception] = lambda message: HTTPException(404, message),
) -> Job:
    """The job ``job_id`` if it is a ``kind`` job; else ``error(message)`` calling what was looked for a
    ``noun`` (default: the kind; the error default: a 404)."""
    noun = noun or kind
    try:
        job = studio_of(request).store.get(job_id)
    except KeyError:
        raise error(f"no {noun} {job_id!r}") from None
    if job.kind != kind:
        raise error(f"job {job_id} is a {job.kind} job, not a {noun}")
    return job


def in_use_response(request: Request, error: InUse, action: str, html: bool) -> Response:
    """409 for deleting a job that models use: a page listing them (links) with the form that deletes them
    together (posted to ``action``), or JSON ``{detail, errors, models: [{id, name, status, url}]}``."""
    if html:
        context = {"job": error.job, "users": error.users, "message": str(error), "action": action}
        return studio_of(request).templates.TemplateResponse(request, "delete_blocked.html", context, status_code=409)
    return JSONResponse(error.to_dict(), status_code=409)


async def with_models_flag(request: Request) -> bool:
    """The ``with_models`` flag of a delete: from the query string, or the posted form."""
    from caffe.studio.dependents import flag

    if flag(request.query_params.get("with_models")):
        return True
    if request.method == "POST" and "form" in request.headers.get("content-type", ""):
        return flag((await request.form()).get("with_models"))
    return False
