"""Python layers in the studio: the operator's consent, the names an uploaded layer module may take, and the
child process that builds and runs every net with a ``Python`` layer (``python -m caffe.studio.layer_worker_main``,
its requests' handlers; the protocol and the request loop are here).

Python layers run only when the server was started with ``--allow_python_layers``; without it an upload, a
model form or a model whose network has one is refused (403, naming the layer and the flag). With it, an
uploaded module is still never imported by the server: it must not be named like a module the server can
import (``os``, ``json``, ``caffe``...), and the net is built, checked and run by a worker process started in
the job's folder - one per loaded model, ended when the model leaves the cache, when a call passes its
deadline (killed with its process group) or when the server goes away (:mod:`caffe.util.parent_watch`).

Protocol (stdin/stdout of the worker): a frame is a 4-byte big-endian length, a JSON header, then the raw
bytes of the float32/float64 arrays the header's ``arrays`` describe. The server unpickles nothing and bounds
what it reads; what a worker sends back is checked (types, sizes) before it is used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import keyword
import math
import os
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from caffe.errors import CaffeError
from caffe.layers.python import consent_refusal, python_layers
from caffe.proto import caffe_pb2 as pb

TIMEOUT_S = 120.0  # one call: start-up (torch import, net build, weights) or a batch's forward
MAX_HEADER_BYTES = 64 << 20
MAX_ARRAY_BYTES = 2 << 30
MAX_MESSAGE_CHARS = 2000
DTYPES = {"<f4": np.float32, "<f8": np.float64}
IN_WORKER = False  # True in the worker process: only there may a net with Python layers be built


class PythonLayerError(CaffeError):
    """A Python layer that may not run here, or that failed in its worker; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------- consent and names
def require_consent(param: pb.NetParameter, source: str, allowed: bool) -> None:
    """Refuse (403) a net with a Python layer unless the operator allowed them."""
    refusal = consent_refusal(param, source, allowed, "the studio")
    if refusal:
        raise PythonLayerError(refusal, 403)


def check_module_names(param: pb.NetParameter, source: str, only: Collection[str] | None = None) -> None:
    """The module names of the net's Python layers (those in ``only``, default all), as an uploaded file takes
    them: plain identifiers that no module importable by this server has (no shadowing ``os``, ``caffe``...)."""
    for layer in python_layers(param):
        name = layer.python_param.module
        if only is not None and name not in only:
            continue
        if not name.isidentifier() or keyword.iskeyword(name):
            raise PythonLayerError(
                f"{source}: layer '{layer.name}': python_param.module '{name}' must be a plain "
                "Python name (letters, digits, '_') for the uploaded Python layer file"
            )
        if _importable(name):
            raise PythonLayerError(
                f"{source}: layer '{layer.name}': python_param.module '{name}' is the name of a "
                "module the server can import; name the uploaded module otherwise"
            )


def _importable(name: str) -> bool:
    if name in sys.modules or name in sys.builtin_module_names or name in sys.stdlib_module_names:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return True


def register_module(path: Path | None, param: pb.NetParameter) -> None:
    """In the worker only: make an uploaded layer file importable under the module names its net uses."""
    if not IN_WORKER:
        raise PythonLayerError(
            f"{param.name or 'the network'}: a net with Python layers is built only in a worker process", 403
        )
    if path is None:
        return
    for layer in python_layers(param):
        name = layer.python_param.module
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise PythonLayerError(f"{path.name}: cannot load the Python layer file")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # the user's code: any error is theirs
            raise PythonLayerError(
                f"{path.name}: the Python layer file fails to import: {type(e).__name__}: {e}"
            ) from None
        sys.modules[name] = module


# --------------------------------------------------------------------------------------- frames
def encode_frame(header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> bytes:
    """One frame: length, JSON header (with the arrays' dtypes and shapes), the arrays' bytes."""
    arrays = [np.ascontiguousarray(a, dtype=np.float64 if a.dtype == np.float64 else np.float32) for a in arrays]
    body = json.dumps({**header, "arrays": [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays]})
    return b"".join([struct.pack(">I", len(body)), body.encode("utf-8"), *(a.tobytes() for a in arrays)])


def read_frame(read: Callable[[int], bytes]) -> tuple[dict[str, Any], list[np.ndarray]]:
    """A frame from ``read(n)`` (exactly n bytes); PythonLayerError when it is out of protocol."""
    (size,) = struct.unpack(">I", read(4))
    if size > MAX_HEADER_BYTES:
        raise PythonLayerError(f"worker: a {size}-byte header is over the limit")
    try:
        header = json.loads(read(size))
    except (ValueError, RecursionError):
        raise PythonLayerError("worker: a header that is not JSON") from None
    specs = header.get("arrays") if isinstance(header, dict) else None
    if not isinstance(specs, list):
        raise PythonLayerError("worker: a header without its list of arrays")
    return header, [_read_array(spec, read) for spec in specs]


def _read_array(spec: Any, read: Callable[[int], bytes]) -> np.ndarray:
    dtype = DTYPES.get(spec.get("dtype")) if isinstance(spec, dict) else None
    shape = spec.get("shape") if isinstance(spec, dict) else None
    if dtype is None or not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise PythonLayerError(f"worker: an array of unknown type or shape ({str(spec)[:80]})")
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if size > MAX_ARRAY_BYTES:
        raise PythonLayerError(f"worker: a {size}-byte array is over the limit")
    return np.frombuffer(read(size), dtype).reshape(shape)


# --------------------------------------------------------------------------------------- the server's side
class Worker:
    """A worker process started in ``job_dir``; :meth:`call` sends a request and waits (bounded) for its answer.

    Not thread-safe: the caller serializes calls (a LoadedModel's lock)."""

    def __init__(self, job_dir: Path, what: str, timeout_s: float | None = None) -> None:
        from caffe.util.parent_watch import ENV as PARENT_ENV

        self.what, self.timeout_s = what, TIMEOUT_S if timeout_s is None else timeout_s
        env = {**os.environ, PARENT_ENV: str(os.getpid()), "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "caffe.studio.layer_worker_main"],
                cwd=job_dir,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,
            )
        except OSError as e:
            raise PythonLayerError(f"{what}: cannot start a Python layer worker: {e}", 503) from None
        for stream in (self.proc.stdin, self.proc.stdout):
            assert stream is not None
            os.set_blocking(stream.fileno(), False)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(
        self, op: str, header: dict[str, Any] | None = None, arrays: Sequence[np.ndarray] = ()
    ) -> tuple[dict[str, Any], list[np.ndarray]]:
        """The worker's answer to one request; its error (the user's exception) raised as PythonLayerError."""
        if not self.alive:
            raise self._gone()
        deadline = time.monotonic() + self.timeout_s
        try:
            self._send(encode_frame({"op": op, **(header or {})}, arrays), deadline)
            reply, out = read_frame(lambda n: self._recv(n, deadline))
        except PythonLayerError:
            self.close()
            raise
        if "error" in reply:
            status = reply.get("status")
            status = status if type(status) is int and 400 <= status < 500 else 400
            message = _one_line(reply["error"])
            raise PythonLayerError(message if reply.get("named") is True else f"{self.what}: {message}", status)
        return reply, out

    def close(self) -> None:
        """End the worker and its process group (politely first: its stdin is closed); what the user's code
        started in the group (a helper process of a layer's setup) goes with it."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(1.0)
        except subprocess.TimeoutExpired:  # busy in the user's code: killed, with what it started
            self._kill_group()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5.0)
        self._kill_group()  # the worker ended: processes it left in its session
        with contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _wait(self, fd: int, deadline: float, event: int) -> None:
        poller = select.poll()
        poller.register(fd, event)
        if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            raise PythonLayerError(
                f"{self.what}: the Python layer's process did not answer within {self.timeout_s:g} s and was stopped"
            )

    def _send(self, data: bytes, deadline: float) -> None:
        fd, view = self.proc.stdin.fileno(), memoryview(data)  # type: ignore[union-attr]
        while view:
            self._wait(fd, deadline, select.POLLOUT)
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                continue
            except (BrokenPipeError, OSError):
                raise self._gone() from None

    def _recv(self, size: int, deadline: float) -> bytes:
        fd, chunks = self.proc.stdout.fileno(), []  # type: ignore[union-attr]
        while size:
            self._wait(fd, deadline, select.POLLIN)
            try:
                chunk = os.read(fd, min(size, 1 << 20))
            except BlockingIOError:
                continue
            if not chunk:
                raise self._gone()
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _gone(self) -> PythonLayerError:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1.0)
        code = self.proc.poll()
        return PythonLayerError(f"{self.what}: the Python layer's process ended (exit code {code})")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())[:MAX_MESSAGE_CHARS]


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise PythonLayerError(f"worker: {what} is not a count ({str(value)[:40]})")
    return value


def _ints(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or len(value) > 8:
        raise PythonLayerError(f"worker: {what} is not a shape")
    return [_int(v, what) for v in value]


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise PythonLayerError(f"worker: {what} is not a name")
    return value[:200]


def check_weights(job_dir: Path, python_layer: Path | None) -> tuple[dict[str, Any], str | None]:
    """:func:`caffe.studio.pretrained.weights_facts` of a job folder, run by a worker that ends after it."""
    worker = Worker(job_dir, "deploy.prototxt")
    try:
        reply, _ = worker.call("check", {"python_layer": python_layer.name if python_layer else None})
    finally:
        worker.close()
    facts = reply.get("facts")
    if not isinstance(facts, dict):
        raise PythonLayerError("worker: an answer without the network's facts")
    shape = facts.get("input_shape")
    checked = {
        "input_shape": None if shape is None else _ints(shape, "input_shape"),
        "outputs": None if facts.get("outputs") is None else _int(facts["outputs"], "outputs"),
        "layers": _int(facts.get("layers"), "layers"),
        "parameters": _int(facts.get("parameters"), "parameters"),
    }
    output = reply.get("output")
    return checked, None if output is None else _text(output, "output")


def validate_nets(job_dir: Path, nets: list[dict[str, Any]]) -> CaffeError | None:
    """Build the nets (:meth:`caffe.studio.validate.NetToBuild.to_dict`) in a worker in ``job_dir`` that ends
    after it; their first error (a NetError naming the net and layer), None when all build."""
    from caffe.errors import NetError

    worker = Worker(job_dir, "the network")
    try:
        worker.call("validate", {"nets": nets})
    except PythonLayerError as e:
        return NetError(str(e))
    finally:
        worker.close()
    return None


def start_net(deploy: Path, weights: Path, python_layer: Path | None) -> RemoteNet:
    """A worker in ``deploy``'s folder with the net of ``deploy`` and ``weights`` loaded (``python_layer``: the
    uploaded layer file); the :class:`RemoteNet` standing for it, with the net's checked facts."""
    worker = Worker(deploy.parent, deploy.name)
    try:
        reply, _ = worker.call(
            "load",
            {
                "deploy": deploy.name,
                "weights": str(weights),
                "python_layer": python_layer.name if python_layer else None,
            },
        )
        shape = _ints(reply.get("input_shape"), "input_shape")
        if len(shape) != 3 or 0 in shape:
            raise PythonLayerError(f"worker: input shape {shape} is not C x H x W")
        c, h, w = shape
        return RemoteNet(
            worker,
            _text(reply.get("input"), "input"),
            (c, h, w),
            _text(reply.get("output"), "output"),
            bool(reply.get("softmax")),
        )
    except BaseException:
        worker.close()
        raise


class RemoteNet:
    """Stands for a net that lives in a worker: forward passes and per-layer views are asked of it. ``input``,
    ``input_shape`` (C, H, W), ``output`` and ``softmax`` (whether its scores are probabilities) are the net's."""

    def __init__(
        self, worker: Worker, input: str, input_shape: tuple[int, int, int], output: str, softmax: bool
    ) -> None:
        self.worker = worker
        self.input, self.input_shape, self.output, self.softmax = input, input_shape, output, softmax

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """N x C x H x W inputs -> N x K scores (probabilities when the model applies a softmax)."""
        _, out = self.worker.call("forward", {}, [np.asarray(batch, np.float32)])
        if len(out) != 1 or out[0].ndim != 2 or out[0].shape[0] != len(batch):
            raise PythonLayerError(f"{self.worker.what}: the worker answered no scores for the batch")
        return np.asarray(out[0], dtype=np.float64)

    def layer_views(self) -> list[dict[str, Any]]:
        """:func:`caffe.studio.inference.layer_views` of the worker's net after its last forward, each view as
        the keyword arguments of a :class:`caffe.studio.inference.LayerView`."""
        reply, arrays = self.worker.call("views")
        rows = reply.get("views")
        if not isinstance(rows, list):
            raise PythonLayerError("worker: an answer without the layer views")

        def array(index: Any) -> np.ndarray | None:
            if index is None:
                return None
            if type(index) is not int or not 0 <= index < len(arrays) or arrays[index].size == 0:
                raise PythonLayerError("worker: a layer view names no array")
            return arrays[index]

        return [
            {
                "layer": _text(r.get("layer"), "layer"),
                "type": _text(r.get("type"), "type"),
                "blob": None if r.get("blob") is None else _text(r["blob"], "blob"),
                "shape": _ints(r.get("shape"), "shape"),
                "data": array(r.get("data")),
                "weights": array(r.get("weights")),
                "params": _int(r.get("params"), "params"),
            }
            for r in rows
            if isinstance(r, dict)
        ]

    def close(self) -> None:
        self.worker.close()


# --------------------------------------------------------------------------------------- the worker's side
Handler = Callable[[dict[str, Any], dict[str, Any], list[np.ndarray]], tuple[dict[str, Any], list[np.ndarray]]]


def _error(e: BaseException) -> dict[str, Any]:
    """The answer for an error: a caffe error's message names its file or layer; another is the user's code's."""
    status = getattr(e, "status", 400)
    named = isinstance(e, CaffeError)
    message = str(e) if named else f"{type(e).__name__}: {e}"
    return {"error": _one_line(message), "status": status if type(status) is int else 400, "named": named}


def serve(handlers: Mapping[str, Handler], model_free: Collection[str]) -> int:
    """In the worker process: answer requests on stdin with ``handlers[op](state, header, arrays)`` until it
    closes (ops other than ``model_free`` need a loaded model); the user's prints go to stderr, their stdin is
    empty."""
    global IN_WORKER
    IN_WORKER = True
    sys.dont_write_bytecode = True
    requests, answers = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    from caffe.util.parent_watch import stop_when_parent_exits

    stop_when_parent_exits()

    def read(size: int) -> bytes:
        data = requests.read(size)
        if len(data) != size:
            raise EOFError
        return data

    state: dict[str, Any] = {}
    while True:
        try:
            header, arrays = read_frame(read)
        except EOFError:
            return 0
        try:
            op = str(header.get("op"))
            handler = handlers[op]
            if op not in model_free and "model" not in state:
                raise PythonLayerError("no model loaded")
            reply, out = handler(state, header, arrays)
        except Exception as e:  # the user's code may fail in any way: its message goes back
            reply, out = _error(e), []
        answers.write(encode_frame(reply, out))
        answers.flush()
