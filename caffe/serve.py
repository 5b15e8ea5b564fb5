"""A REST inference server for Caffe classification models and SSD detectors (FastAPI), with request batching.

``caffe serve [flags] MODEL [MODEL ...]`` (see :mod:`caffe.tools.serve_tools`) runs :func:`create_app`
under uvicorn; from Python::

    from caffe.serve import create_app, load_model
    app = create_app([load_model("squeezenet=models/sq", labels="synset_words.txt", mean="104,117,123")])

Endpoints
---------
* ``POST /models/{name}/predict`` (and ``POST /predict`` for the default model: the only one, or the
  first given): one image, as a multipart upload (field ``file``; DIGITS' ``image_file`` also works),
  as JSON ``{"url": ...}`` or ``{"base64": ...}`` (``image_base64`` and ``data:`` URLs work too), as
  form fields ``url``/``base64``, or as a raw ``image/*`` body; ``top_k`` (default 5) in the JSON, the
  form or the query. Answers ``{"model", "predictions": [{"label", "index", "probability"}, ...],
  "time_ms"}`` (``time_ms``: the server's time for this request).
* ``POST /models/{name}/detect`` (and ``POST /detect``): for a detector (a net ending in SSD's
  ``DetectionOutput`` or a YOLO port's ``Yolov3DetectionOutput``/``YoloDetectionOutput``, a
  :class:`caffe.deploy.DetectionModel`, prepared as ``caffe detect`` prepares it),
  one image given as above and ``threshold`` (default 0.5, in the JSON, the form or the query); answers
  ``{"model", "width", "height", "detections": [{"label", "index", "confidence", "box": [xmin, ymin,
  xmax, ymax]}, ...], "time_ms"}``, boxes in pixels of the image, clipped to it. A classifier answers
  400 on ``/detect`` and a detector 400 on ``/predict`` (and DIGITS' call), each naming the right route.
* ``POST /models/{name}/segment`` (and ``POST /segment``): for a segmentation net (output N x C x H x W class
  scores, a :class:`caffe.deploy.SegmentationModel`, prepared as ``caffe segment`` prepares it), one image
  given as above; answers its class map at the image's size as a PNG (8-bit; 16-bit over 256 classes), or
  with ``?format=json`` ``{"model", "width", "height", "classes": [{"index", "label", "pixels"}], "time_ms"}``.
  Any other model answers 400 naming its route (and a segmentation net 400 on ``/predict``).
* ``POST /models/{name}/recognize`` (and ``POST /recognize``): for a text recogniser (a net ending in
  caffe_ocr's ``CTCGreedyDecoder``, a :class:`caffe.deploy.TextRecognizer`, prepared as ``caffe recognize``
  prepares it: resized to the input height keeping the aspect ratio), one image given as above; answers
  ``{"model", "width", "height", "text", "classes", "time_ms"}``. Its images have their own widths, so its
  forwards run one image each.
* ``POST /models/images/classification/classify_one.json``: DIGITS' REST call (form ``job_id`` = the
  model name, ``image_file`` or ``image_url``); answers ``{"predictions": [[label, percent], ...]}``.
* ``GET /health``: status, models, uptime. ``GET /models``, ``GET /models/{name}``: input shape,
  labels, mean, layers, engine, whether a softmax is applied, batching counters.
* ``GET /openapi.json`` (self-contained) and ``GET /docs`` (FastAPI's Swagger UI page, which loads
  its script and style from cdn.jsdelivr.net: offline, read ``/openapi.json`` instead, or turn the
  page off with ``docs=False`` / ``--nodocs``).

Batching
--------
Each model has one worker (an asyncio task) and one thread that owns its net (nets are not
thread-safe). Requests are decoded, resized and mean-subtracted on a thread pool, then queued; the
worker takes the first queued image, waits at most ``max_wait_ms`` for up to ``max_batch`` in all,
reshapes the net's input to that batch, runs ONE forward on the net's thread and answers each
request with its row. While a forward runs the event loop keeps accepting and the queue fills, so
under load batches are full without waiting. With the ``compiled`` engine batches are padded to
a power of two (or ``max_batch``), so that few input shapes are compiled (all of them at start-up).

Each model is a :class:`caffe.deploy.DeployModel` (the same preprocessing, mean fitting and output
normalization as ``caffe classify`` and the studio give the same image and model): outputs are
probabilities, a softmax applied unless the net's last output comes from a ``Softmax`` layer
(``/models/{name}`` says which: ``softmax_applied``, ``softmax_reason``). Preprocessing follows the
model's kind: a DIGITS model (info.json) as DIGITS prepares it, any other as Caffe's classification
example (resize to the input, BGR, 0..255, the per-channel mean subtracted); ``/models/{name}`` shows it.

Limits and errors
-----------------
A body over ``max_body_bytes`` is answered 413 before it is read (from its Content-Length, or as soon
as a chunked body passes the limit). URLs (http/https only) are fetched with a timeout and the same
size limit. User errors are 4xx with a ``detail`` message: 400 a malformed request (not an image, bad
base64, bad JSON, no image), 404 unknown model, 413 too large (body or fetched image), 415 unsupported
content type, 422 well-formed but invalid fields (``top_k``, ``threshold``, unknown fields, two image
sources); a URL
that cannot be fetched (error status, refused, timeout) is the client's to fix, so 400 too, its detail
naming the URL and what went wrong; 503 when a model's queue is full. The
server fetches whatever http(s) URL a client names (including hosts on its own network): it binds to
127.0.0.1 by default; pass ``allow_urls=False`` / ``--noallow_urls`` when clients are not trusted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from caffe.deploy import DeployModel, DetectionModel, ImageDecodeError, ModelFiles, Settings, find_model, open_model
from caffe.deploy.detection import to_detections
from caffe.deploy.segmentation import SegmentationModel, class_counts
from caffe.deploy.text import TextRecognizer
from caffe.errors import CaffeError, NetError
from caffe.util.http import (  # the HTTP plumbing's home; re-exported: caffe.serve's API
    BodyLimitMiddleware,
    RequestError,
    bind_socket,
    fetch_url,
    is_loopback,
    url_host,
    uvicorn_server,
)

log = logging.getLogger("caffe")

MB = 1 << 20
DIGITS_TOP_K = 5


# ---------------------------------------------------------------------------------------------
# model arguments and preprocessing


def parse_model_arg(arg: str) -> tuple[str | None, str]:
    """``name=path`` or ``path`` -> (name or None, path)."""
    m = re.match(r"^([A-Za-z0-9_.\-]+)=(.+)$", arg)
    if m and not Path(arg).exists():
        return m.group(1), m.group(2)
    return None, arg


def decode_request_image(model: DeployModel, data: bytes) -> np.ndarray:
    """The pixels of a request's image bytes (the model's decoder); unreadable bytes are a 400."""
    if not data:
        raise RequestError(400, "empty image: the request carries no image bytes")
    try:
        return model.preprocessing.decode(data, f"the image ({len(data)} bytes)")
    except ImageDecodeError as e:
        raise RequestError(400, str(e)) from None


def prepare_request_image(model: DeployModel, data: bytes) -> np.ndarray:
    """The net input of a request's image bytes (:meth:`DeployModel.prepare`); unreadable bytes are a 400."""
    prep = model.preprocessing
    return prep.to_input(prep.resize(decode_request_image(model, data)))


# ---------------------------------------------------------------------------------------------
# a served model


class ServedModel:
    """A :class:`caffe.deploy.DeployModel` under a name, with batching counters; forwards run on one thread."""

    def __init__(
        self,
        name: str,
        files: ModelFiles,
        *,
        labels: str | os.PathLike | None = None,
        mean: str | os.PathLike | None = None,
        raw_scale: float = 255.0,
        channel_swap: Sequence[int] | None = (2, 1, 0),
        input_scale: float = 1.0,
        engine: str | None = None,
    ) -> None:
        import caffe

        self.name = name
        self.files = files
        self.engine = engine or caffe.inference_engine()
        settings = Settings(
            mean=mean,
            channel_swap=tuple(channel_swap) if channel_swap is not None else None,
            raw_scale=raw_scale,
            input_scale=input_scale,
        )
        self.model = open_model(files, settings, labels=labels, engine=self.engine, segmentation=True)
        kinds = {DetectionModel: "detection", SegmentationModel: "segmentation", TextRecognizer: "text"}
        self.kind = kinds.get(type(self.model), "classification")
        self.shape = self.model.input_shape
        self.forwards = 0
        self.images = 0
        self.requests = 0
        self.max_seen_batch = 0

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    @property
    def classes(self) -> int:
        return self.model.classes

    @property
    def softmax_reason(self) -> str:
        return self.model.softmax_reason

    def preprocess(self, data: bytes) -> np.ndarray:
        """Image bytes -> the net's input (a 400 for bytes that are not an image)."""
        return prepare_request_image(self.model, data)

    def preprocess_sized(self, data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        """Image bytes -> the net's input and the image's (height, width) (a 400 for bytes that are not an image)."""
        pixels = decode_request_image(self.model, data)
        prep = self.model.preprocessing
        return prep.to_input(prep.resize(pixels)), (int(pixels.shape[0]), int(pixels.shape[1]))

    def preprocess_line(self, data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        """Image bytes -> a text recogniser's input at the image's width and the image's (height, width)."""
        pixels = decode_request_image(self.model, data)
        assert isinstance(self.model, TextRecognizer)
        return self.model.prepare_line(pixels)[0], (int(pixels.shape[0]), int(pixels.shape[1]))

    @property
    def max_batch(self) -> int | None:
        """The largest batch this model's forwards take (None: the server's): 1 for a text recogniser."""
        return 1 if self.kind == "text" else None

    def batch_shape(self, n: int, max_batch: int) -> int:
        """The input batch a forward of ``n`` images runs at (padded to a few sizes for the compiled engine)."""
        if self.engine != "compiled":
            return n
        size = 1
        while size < n:
            size *= 2
        return min(size, max(max_batch, n))

    def forward_batch(self, x: np.ndarray, max_batch: int = 0) -> np.ndarray | list[np.ndarray]:
        """One forward of the N x C x H x W batch ``x`` (call from one thread): N x classes probabilities, or
        for a detector each image's K x 7 ``DetectionOutput`` rows."""
        n = len(x)
        rows = self.batch_shape(n, max_batch or n)
        if isinstance(self.model, TextRecognizer):
            probs: Any = [self.model.read_input(x[i : i + 1]) for i in range(n)]
        elif isinstance(self.model, DetectionModel):
            probs = self.model.detect_rows(x, rows)
        elif isinstance(self.model, SegmentationModel):
            probs = self.model.run(x, rows)  # N x C x H x W scores
        else:
            probs = self.model.forward(x, rows)
        self.forwards += 1
        self.images += n
        self.max_seen_batch = max(self.max_seen_batch, n)
        return probs

    def warm_up(self, max_batch: int) -> None:
        """Run every input batch shape once (the compiled engine compiles each)."""
        max_batch = self.max_batch or max_batch
        sizes = sorted({self.batch_shape(n, max_batch) for n in range(1, max_batch + 1)})
        for size in sizes:
            t = time.perf_counter()
            self.forward_batch(np.zeros((size, *self.shape), dtype=np.float32), max_batch)
            log.info("%s: batch of %d ready (%.1f s)", self.name, size, time.perf_counter() - t)
        self.forwards = self.images = self.max_seen_batch = 0

    def top_k(self, probs: np.ndarray, k: int) -> list[dict[str, Any]]:
        return [{"label": p.label, "index": p.index, "probability": p.probability} for p in self.model.top_k(probs, k)]

    def info(self) -> dict[str, Any]:
        net = self.model.net
        described = self.model.describe()
        prep = described["preprocessing"]
        return {
            "name": self.name,
            "kind": self.kind,
            **described,
            "raw_scale": prep["raw_scale"],
            "channel_swap": prep["channel_swap"],
            "input_scale": prep["input_scale"],
            "engine": self.engine,
            "layers": [
                {"name": n, "type": layer.type, "tops": {t: list(net.blobs[t].shape[1:]) for t in net.top_names[n]}}
                for n, layer in net.layer_dict.items()
            ],
            "stats": {
                "requests": self.requests,
                "forwards": self.forwards,
                "images": self.images,
                "mean_batch": round(self.images / self.forwards, 3) if self.forwards else 0.0,
                "max_batch_seen": self.max_seen_batch,
            },
        }


def load_model(
    arg: str,
    *,
    labels: str | os.PathLike | None = None,
    mean: str | os.PathLike | None = None,
    raw_scale: float = 255.0,
    channel_swap: Sequence[int] | None = (2, 1, 0),
    input_scale: float = 1.0,
    engine: str | None = None,
    allow_python_layers: bool = False,
) -> ServedModel:
    """The model named by a ``caffe serve`` argument (``name=path`` or ``path``).

    ``labels`` and ``mean`` are used when the model's own files have none (a DIGITS archive has both). A net
    with a Python layer is refused (CaffeError naming the layer) unless ``allow_python_layers``.
    """
    name, path = parse_model_arg(arg)
    if "," in path and not Path(path).exists():  # DEPLOY.prototxt,WEIGHTS.caffemodel
        deploy, weights = path.split(",", 1)
        files = find_model(deploy=deploy, weights=weights)
    else:
        files = find_model(path)
    name = name or files.name or Path(path).stem
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise CaffeError(f"model name {name!r}: use letters, digits, '_', '-' and '.' (give NAME=PATH)")
    _require_python_consent(files.deploy, allow_python_layers)
    t = time.perf_counter()
    model = ServedModel(
        name,
        files,
        labels=files.labels or labels,
        mean=files.mean if files.mean is not None else mean,
        raw_scale=raw_scale,
        channel_swap=channel_swap,
        input_scale=input_scale,
        engine=engine,
    )
    log.info(
        "Model %s: %s + %s, input %s %s, %d classes, %d labels, mean %s; %s (%.2f s)",
        name,
        files.deploy,
        files.weights.name,
        model.model.input,
        "x".join(map(str, model.shape)),
        model.classes,
        len(model.labels),
        model.model.mean.describe() if model.model.mean is not None else "none",
        model.softmax_reason,
        time.perf_counter() - t,
    )
    return model


def _require_python_consent(deploy: Path, allowed: bool) -> None:
    """CaffeError naming the first Python layer of ``deploy`` unless they are allowed."""
    from caffe.layers.python import consent_refusal
    from caffe.protoio import read_net_param

    refusal = consent_refusal(read_net_param(deploy), str(deploy), allowed, "caffe serve")
    if refusal:
        raise NetError(refusal)


# ---------------------------------------------------------------------------------------------
# batching


@dataclass
class _Pending:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]


@dataclass
class Batcher:
    """Collects requests for one model and runs them in batches on the model's own thread."""

    model: ServedModel
    max_batch: int = 8
    timeout_s: float = 0.005
    max_queue: int = 256
    _executor: ThreadPoolExecutor | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _task: asyncio.Task[None] | None = None
    _queue: collections.deque[_Pending] = field(default_factory=collections.deque)
    _wakeup: asyncio.Event | None = None

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        if self._task is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._task.cancel)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"caffe-net-{self.model.name}")
        self._loop = loop
        self._queue = collections.deque()
        self._wakeup = asyncio.Event()
        self._task = loop.create_task(self._run(), name=f"batcher-{self.model.name}")

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """The probabilities (a detector: the output rows) of one preprocessed image (waits for its batch)."""
        self._start()
        if len(self._queue) >= self.max_queue:
            raise RequestError(
                503, f"model '{self.model.name}' is busy ({self.max_queue} queued)", {"Retry-After": "1"}
            )
        assert self._loop is not None and self._wakeup is not None
        item = _Pending(x, self._loop.create_future())
        self._queue.append(item)
        self._wakeup.set()
        return await item.future

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        queue, wakeup = self._queue, self._wakeup
        while True:
            while not queue:
                wakeup.clear()
                await wakeup.wait()
            if self.max_batch > 1 and len(queue) < self.max_batch and self.timeout_s > 0:
                deadline = loop.time() + self.timeout_s
                while len(queue) < self.max_batch:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    wakeup.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), remaining)
            batch: list[_Pending] = []
            while queue and len(batch) < self.max_batch:
                item = queue.popleft()
                if not item.future.done():  # a cancelled request (client gone) is dropped
                    batch.append(item)
            if not batch:
                continue
            try:
                probs = await loop.run_in_executor(self._executor, self._forward, [b.x for b in batch])
            except Exception as e:  # a server-side failure: every waiting request gets it (500)
                for b in batch:
                    if not b.future.done():
                        b.future.set_exception(e)
                continue
            for b, p in zip(batch, probs):
                if not b.future.done():
                    b.future.set_result(p)

    def _forward(self, xs: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
        return self.model.forward_batch(np.stack(xs), self.max_batch)

    def close(self) -> None:
        if self._task is not None and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


# ---------------------------------------------------------------------------------------------
# image sources


def decode_base64(text: str) -> bytes:
    if not isinstance(text, str):
        raise RequestError(400, "image_base64 must be a string")
    s = text.strip()
    if s.startswith("data:"):
        head, sep, s = s.partition(",")
        if not sep or ";base64" not in head:
            raise RequestError(400, "image_base64: a data URL must be 'data:<type>;base64,<data>'")
    s = re.sub(r"\s+", "", s)
    s = s.replace("-", "+").replace("_", "/")  # URL-safe alphabet too
    s += "=" * (-len(s) % 4) if len(s) % 4 != 1 else ""
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, f"image_base64 is not valid base64 ({e})") from None


# ---------------------------------------------------------------------------------------------
# the app


@dataclass
class ServeOptions:
    """Server settings; the ``caffe serve`` flags of the same names."""

    max_batch: int = 8  # most requests run in one forward
    max_wait_ms: float = 5.0  # longest wait for a batch to fill
    max_body_bytes: int = 10 * MB  # largest request body, and largest image fetched from a URL
    url_timeout_s: float = 10.0
    allow_urls: bool = True
    max_queue: int = 256  # queued requests per model before 503
    threads: int = 0  # preprocessing threads (0: one per core, at most 8)
    docs: bool = True
    allow_python_layers: bool = False  # serve models whose nets have Python layers (run in this process)

    def check(self) -> None:
        """CaffeError naming the first setting out of range."""
        for name, value, ok in (
            ("max_batch", self.max_batch, self.max_batch >= 1),
            ("max_wait_ms", self.max_wait_ms, self.max_wait_ms >= 0),
            ("max_body_bytes", self.max_body_bytes, self.max_body_bytes >= 1),
            ("url_timeout_s", self.url_timeout_s, self.url_timeout_s > 0),
            ("max_queue", self.max_queue, self.max_queue >= 1),
            ("threads", self.threads, self.threads >= 0),
        ):
            if not ok:
                raise CaffeError(f"{name} = {value} is out of range")


_URL_FIELDS = ("url", "image_url")
_B64_FIELDS = ("base64", "image_base64")
_FILE_FIELDS = ("file", "image_file")
_JSON_FIELDS = {*_URL_FIELDS, *_B64_FIELDS, "top_k", "threshold"}
_TOP_K = {"type": "integer", "minimum": 1, "default": 5, "description": "how many classes to return"}
_THRESHOLD = {
    "type": "number",
    "minimum": 0,
    "maximum": 1,
    "default": 0.5,
    "description": "detections with a confidence above it are returned",
}


def _predict_openapi(option: str = "top_k", schema: dict[str, Any] = _TOP_K) -> dict[str, Any]:
    """The request body and query of a route taking one image and the number ``option`` (its ``schema``)."""
    url = {"type": "string", "description": "an http(s) URL of an image, fetched by the server"}
    b64 = {"type": "string", "description": "image bytes, base64 (a data: URL works too)"}
    return {
        "requestBody": {
            "required": True,
            "description": "One image: an upload, a URL to fetch, or base64 bytes (exactly one).",
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {"type": "string", "format": "binary", "description": "the image file"},
                            "url": url,
                            "base64": b64,
                            option: schema,
                        },
                    }
                },
                "application/json": {
                    "schema": {"type": "object", "properties": {"url": url, "base64": b64, option: schema}},
                    "example": {"url": "https://example.com/cat.jpg", option: schema["default"]},
                },
                "image/*": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "parameters": [{"name": option, "in": "query", "required": False, "schema": schema}],
    }


class Prediction(BaseModel):
    label: str
    index: int
    probability: float


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction]
    time_ms: float


class DetectionItem(BaseModel):
    label: str
    index: int
    confidence: float
    box: list[float]


class DetectResponse(BaseModel):
    model: str
    width: int
    height: int
    detections: list[DetectionItem]
    time_ms: float


class ErrorResponse(BaseModel):
    detail: str


_ERRORS: dict[int, str] = {
    400: "malformed request: not an image, invalid base64 or JSON, no image, an image URL that cannot be fetched, "
    "a model of the other kind (a detector on /predict, a classifier on /detect, a non-segmentation net on /segment)",
    404: "no such model",
    413: "request body (or fetched image) over the size limit",
    415: "unsupported Content-Type",
    422: "invalid fields: top_k, threshold, format, unknown fields, more than one image source",
    503: "the model's queue is full",
}


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorResponse, "description": _ERRORS[c]} for c in codes or _ERRORS}


@dataclass
class _Source:
    """What a predict request carries (exactly one of data / url / b64 must be set)."""

    data: bytes | None = None
    url: str | None = None
    b64: str | None = None
    top_k: Any = None
    threshold: Any = None
    job_id: str | None = None  # DIGITS' form field


def _pick(fields: Any, names: Sequence[str]) -> Any:
    """The first of ``names`` present and non-empty in ``fields``."""
    return next((fields[n] for n in names if fields.get(n) not in (None, "")), None)


def _parse_top_k(value: Any) -> int:
    if value is None or value == "":
        return 5
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        k = int(value)
    except (TypeError, ValueError):
        raise RequestError(422, f"top_k must be a positive integer, got {value!r}") from None
    if k < 1:
        raise RequestError(422, f"top_k must be at least 1, got {k}")
    return k


def _parse_threshold(value: Any) -> float:
    if value is None or value == "":
        return 0.5
    try:
        if isinstance(value, bool):
            raise ValueError
        t = float(value)
    except (TypeError, ValueError):
        raise RequestError(422, f"threshold must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= t <= 1.0:
        raise RequestError(422, f"threshold must be between 0 and 1, got {value!r}")
    return t


async def _form_source(request: Request) -> _Source:
    try:
        form = await request.form()
    except RequestError:
        raise
    except Exception as e:  # malformed multipart (starlette's MultiPartException, ...)
        detail = getattr(e, "message", None) or getattr(e, "detail", None) or str(e)
        raise RequestError(400, f"cannot parse the form: {detail}") from None
    try:
        job = form.get("job_id")
        src = _Source(top_k=form.get("top_k"), threshold=form.get("threshold"))
        src.job_id = job if isinstance(job, str) else None
        upload = _pick(form, _FILE_FIELDS)
        if isinstance(upload, UploadFile):
            src.data = await upload.read()
        elif upload is not None:
            raise RequestError(422, "the 'file' field must be a file upload (multipart), not text")
        src.url, src.b64 = _pick(form, _URL_FIELDS), _pick(form, _B64_FIELDS)
    finally:
        await form.close()
    return src


def _json_source(body: bytes) -> _Source:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the body is not valid JSON ({e})") from None
    except RecursionError:
        raise RequestError(400, "the body is not valid JSON (nested too deep)") from None
    if not isinstance(doc, dict):
        raise RequestError(422, 'the JSON body must be an object: {"url": ...} or {"base64": ...}')
    unknown = set(doc) - _JSON_FIELDS
    if unknown:
        raise RequestError(422, f"unknown JSON field(s) {', '.join(sorted(unknown))}: use url, base64, top_k")
    src = _Source(url=_pick(doc, _URL_FIELDS), b64=_pick(doc, _B64_FIELDS), top_k=doc.get("top_k"))
    src.threshold = doc.get("threshold")
    for name, value in (("url", src.url), ("base64", src.b64)):
        if value is not None and not isinstance(value, str):
            raise RequestError(422, f"{name} must be a string, got {type(value).__name__}")
    return src


async def read_source(request: Request) -> _Source:
    """The image source of a predict request, from a form, a JSON object or a raw image body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return await _form_source(request)
    body = await request.body()
    if ctype == "application/json" or (not ctype and body[:1] == b"{"):
        return _json_source(body)
    if ctype.startswith("image/") or ctype == "application/octet-stream" or (not ctype and body):
        return _Source(data=body)
    if not body:
        raise RequestError(400, "no image given: send a multipart 'file', JSON {'url'|'base64'}, or image bytes")
    raise RequestError(415, f"unsupported Content-Type {ctype!r}: use multipart/form-data, JSON or image/*")


_KINDS = {  # a served model's kind: what it is, its route
    "classification": ("a classifier", "predict"),
    "detection": ("a detector (its net ends in DetectionOutput or a YOLO port's detection output)", "detect"),
    "segmentation": ("a segmentation net (its output is N x C x H x W class scores)", "segment"),
    "text": ("a text recogniser (its net ends in a CTCGreedyDecoder)", "recognize"),
}


def _require_kind(model: ServedModel, kind: str) -> None:
    """A 400 naming the model's own route when it is not of ``kind``."""
    if model.kind != kind:
        what, route = _KINDS[model.kind]
        wanted = _KINDS[kind][0].split(" (")[0]
        raise RequestError(400, f"model '{model.name}' is {what}, not {wanted}: POST /models/{model.name}/{route}")


class _App:
    """The request handlers' state: models, batchers, the preprocessing pool."""

    def __init__(self, models: Sequence[ServedModel], opts: ServeOptions) -> None:
        opts.check()
        self.opts = opts
        self.models: dict[str, ServedModel] = {}
        for m in models:
            if m.name in self.models:
                raise CaffeError(f"two models are named '{m.name}': name them with NAME=PATH")
            self.models[m.name] = m
        if not self.models:
            raise CaffeError("no model to serve")
        self.default = next(iter(self.models))
        self.batchers = {
            name: Batcher(m, m.max_batch or opts.max_batch, opts.max_wait_ms / 1000.0, opts.max_queue)
            for name, m in self.models.items()
        }
        threads = opts.threads or max(1, min(8, os.cpu_count() or 1))
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="caffe-serve-pre")
        self.started = time.time()

    def model(self, name: str) -> ServedModel:
        m = self.models.get(name)
        if m is None:
            raise RequestError(404, f"no model named '{name}' (served: {', '.join(self.models)})")
        return m

    async def image_bytes(self, src: _Source) -> bytes:
        given = [k for k, v in (("file", src.data), ("url", src.url), ("base64", src.b64)) if v is not None]
        if not given:
            raise RequestError(422, "no image given: a 'file' upload, a 'url' or 'base64' is required")
        if len(given) > 1:
            raise RequestError(422, f"give exactly one image source (file, url or base64), got {' and '.join(given)}")
        if src.data is not None:
            return src.data
        if src.b64 is not None:
            return decode_base64(src.b64)
        if not self.opts.allow_urls:
            raise RequestError(422, "this server does not fetch URLs (started with --noallow_urls)")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.pool, fetch_url, src.url, self.opts.url_timeout_s, self.opts.max_body_bytes
        )

    async def classify(self, model: ServedModel, src: _Source, query_top_k: Any) -> tuple[list[dict[str, Any]], float]:
        t0 = time.perf_counter()
        _require_kind(model, "classification")
        if src.threshold is not None:
            raise RequestError(422, "threshold is a field of /detect; classification takes top_k")
        k = _parse_top_k(src.top_k if src.top_k is not None else query_top_k)
        data = await self.image_bytes(src)
        x = await asyncio.get_running_loop().run_in_executor(self.pool, model.preprocess, data)
        model.requests += 1
        probs = await self.batchers[model.name].submit(x)
        return model.top_k(probs, k), (time.perf_counter() - t0) * 1000.0

    async def predict(self, name: str, request: Request) -> dict[str, Any]:
        model = self.model(name)
        src = await read_source(request)
        predictions, ms = await self.classify(model, src, request.query_params.get("top_k"))
        return {"model": name, "predictions": predictions, "time_ms": round(ms, 3)}

    async def detect(self, name: str, request: Request) -> dict[str, Any]:
        t0 = time.perf_counter()
        model = self.model(name)
        _require_kind(model, "detection")
        src = await read_source(request)
        if src.top_k is not None or request.query_params.get("top_k") is not None:
            raise RequestError(422, "top_k is a field of /predict; detection takes threshold")
        threshold = _parse_threshold(
            src.threshold if src.threshold is not None else request.query_params.get("threshold")
        )
        data = await self.image_bytes(src)
        x, (h, w) = await asyncio.get_running_loop().run_in_executor(self.pool, model.preprocess_sized, data)
        model.requests += 1
        rows = await self.batchers[model.name].submit(x)
        found = to_detections(rows, h, w, threshold)
        detections = [
            {"label": model.model.label(d.label), "index": d.label, "confidence": d.confidence, "box": list(d.box)}
            for d in found
        ]
        ms = (time.perf_counter() - t0) * 1000.0
        return {"model": name, "width": w, "height": h, "detections": detections, "time_ms": round(ms, 3)}

    async def run_one_image(
        self,
        model: ServedModel,
        request: Request,
        route: str,
        prepare: Callable[[bytes], tuple[np.ndarray, tuple[int, int]]],
    ) -> tuple[Any, tuple[int, int]]:
        """A route that takes one image and no fields: its forward's answer and the image's (height, width)."""
        src = await read_source(request)
        if src.top_k is not None or src.threshold is not None:
            raise RequestError(422, f"top_k and threshold are not fields of /{route}")
        data = await self.image_bytes(src)
        x, size = await asyncio.get_running_loop().run_in_executor(self.pool, prepare, data)
        model.requests += 1
        return await self.batchers[model.name].submit(x), size

    async def segment(self, name: str, request: Request) -> Response | dict[str, Any]:
        """The class map of one image at its size: a PNG (8-bit, 16-bit over 256 classes) or, with
        ``format=json``, the pixels of each class present."""
        t0 = time.perf_counter()
        model = self.model(name)
        _require_kind(model, "segmentation")
        fmt = request.query_params.get("format", "png")
        if fmt not in ("png", "json"):
            raise RequestError(422, f"format {fmt!r}: expected 'png' or 'json'")
        scores, (h, w) = await self.run_one_image(model, request, "segment", model.preprocess_sized)
        assert isinstance(model.model, SegmentationModel)
        labels = model.model.class_map(scores, h, w)
        if fmt == "png":
            import cv2

            ok, png = cv2.imencode(".png", labels)
            if not ok:
                raise CaffeError(f"could not encode the {w}x{h} class map as PNG")
            return Response(png.tobytes(), media_type="image/png", headers={"X-Classes": str(model.classes)})
        counts = [{"index": c, "label": model.model.label(c), "pixels": n} for c, n in class_counts(labels)]
        ms = (time.perf_counter() - t0) * 1000.0
        return {"model": name, "width": w, "height": h, "classes": counts, "time_ms": round(ms, 3)}

    async def recognize(self, name: str, request: Request) -> dict[str, Any]:
        """The line of text in one image, and its classes."""
        t0 = time.perf_counter()
        model = self.model(name)
        _require_kind(model, "text")
        reading, (h, w) = await self.run_one_image(model, request, "recognize", model.preprocess_line)
        ms = (time.perf_counter() - t0) * 1000.0
        return {
            "model": name,
            "width": w,
            "height": h,
            "text": reading.text,
            "classes": reading.classes,
            "time_ms": round(ms, 3),
        }

    def close(self) -> None:
        for b in self.batchers.values():
            b.close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _add_model_routes(
    app: FastAPI,
    verb: str,
    summary: str,
    run: Callable[[str, Request], Awaitable[Any]],
    doc: dict[str, Any],
    default: str,
    default_codes: tuple[int, ...],
) -> None:
    """``POST /models/{name}/<verb>`` and ``POST /<verb>`` (the default model), both answered by ``run``."""

    async def named(name: str, request: Request) -> Any:
        return await run(name, request)

    async def default_model(request: Request) -> Any:
        return await run(default, request)

    app.post(f"/models/{{name}}/{verb}", summary=summary, responses=_error_responses(), **doc)(named)
    app.post(
        f"/{verb}",
        summary=f"{summary} with the default model ('{default}')",
        responses=_error_responses(*default_codes),
        **doc,
    )(default_model)


def create_app(models: Sequence[ServedModel], options: ServeOptions | None = None) -> FastAPI:
    """The FastAPI application serving ``models`` (already loaded) with ``options``."""
    import caffe

    state = _App(models, options or ServeOptions())
    opts = state.opts

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(
        title="neocaffe serve",
        version=caffe.__version__,
        description="Caffe classification models and SSD detectors over HTTP, with batching of concurrent requests. "
        f"`POST /predict` uses the default model ('{state.default}'). "
        "`/docs` loads Swagger UI from cdn.jsdelivr.net; `/openapi.json` needs nothing external.",
        docs_url="/docs" if opts.docs else None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=opts.max_body_bytes)
    app.state.serve = state

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [dict(e) for e in exc.errors()]}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    predict_doc = {
        "response_model": PredictResponse,
        "openapi_extra": _predict_openapi(),
        "tags": ["inference"],
    }

    codes_default = tuple(c for c in _ERRORS if c != 404)
    detect_doc = {
        "response_model": DetectResponse,
        "openapi_extra": _predict_openapi("threshold", _THRESHOLD),
        "tags": ["inference"],
    }

    segment_doc = {
        "openapi_extra": _predict_openapi(),
        "tags": ["inference"],
        "response_model": None,
        "description": "The class map at the image's size: a PNG (one class number a pixel), or with "
        "`?format=json` the pixels of each class present.",
    }

    recognize_doc = {
        "openapi_extra": _predict_openapi(),
        "tags": ["inference"],
        "description": "The text a CTC text recogniser reads in the image (its line of text) and its classes.",
    }

    for verb, summary, run, doc in (
        ("predict", "Classify one image", state.predict, predict_doc),
        ("detect", "Detect objects in one image", state.detect, detect_doc),
        ("segment", "Segment one image", state.segment, segment_doc),
        ("recognize", "Read the line of text in one image", state.recognize, recognize_doc),
    ):
        _add_model_routes(app, verb, summary, run, doc, state.default, codes_default)

    @app.post(
        "/models/images/classification/classify_one.json",
        responses=_error_responses(),
        summary="DIGITS-compatible: classify one image (form job_id, image_file or image_url)",
        tags=["digits"],
    )
    async def digits_classify_one(request: Request) -> dict[str, Any]:
        src = await read_source(request)
        job = src.job_id or request.query_params.get("job_id")
        if not job and len(state.models) > 1:
            raise RequestError(422, f"job_id (the model name) is required: one of {', '.join(state.models)}")
        model = state.model(str(job or state.default))
        src.top_k = src.top_k if src.top_k is not None else DIGITS_TOP_K
        predictions, _ = await state.classify(model, src, None)
        return {"predictions": [[p["label"], round(100.0 * p["probability"], 2)] for p in predictions]}

    @app.get("/health", tags=["server"], summary="Server status")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "models": list(state.models),
            "default_model": state.default,
            "uptime_s": round(time.time() - state.started, 3),
            "version": caffe.__version__,
        }

    @app.get("/models", tags=["server"], summary="The served models")
    async def list_models() -> dict[str, Any]:
        return {"default": state.default, "models": [model_info_of(name) for name in state.models]}

    @app.get("/models/{name}", tags=["server"], summary="One model", responses=_error_responses(404))
    async def model_info(name: str) -> dict[str, Any]:
        return model_info_of(name)

    def model_info_of(name: str) -> dict[str, Any]:
        info = state.model(name).info()
        info["batching"] = {"max_batch": opts.max_batch, "max_wait_ms": opts.max_wait_ms, "max_queue": opts.max_queue}
        return info

    return app


def log_startup(models: Sequence[ServedModel], host: str, port: int, opts: ServeOptions) -> None:
    """glog lines saying where the server listens and how it batches."""
    where = f"http://{url_host(host)}:{port}"
    log.info(
        "Serving %d model(s) (%s) on %s: batches of up to %d within %g ms, bodies up to %d bytes",
        len(models),
        ", ".join(m.name for m in models),
        where,
        opts.max_batch,
        opts.max_wait_ms,
        opts.max_body_bytes,
    )
    docs = f", docs at {where}/docs (Swagger UI from cdn.jsdelivr.net)" if opts.docs else ""
    log.info("POST %s/predict or %s/models/NAME/predict; API at %s/openapi.json%s", where, where, where, docs)
    if not is_loopback(host):
        log.warning("Listening on %s: reachable from other machines (the default is 127.0.0.1)", host)


__all__ = [
    "Batcher",
    "BodyLimitMiddleware",
    "RequestError",
    "ServeOptions",
    "ServedModel",
    "bind_socket",
    "create_app",
    "fetch_url",
    "is_loopback",
    "load_model",
    "parse_model_arg",
    "prepare_request_image",
    "read_source",
    "url_host",
    "uvicorn_server",
]
