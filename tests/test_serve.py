"""``caffe serve``: the real server (a ``caffe serve`` subprocess on 127.0.0.1) with the SqueezeNet of the assets.

Truth: ``REFERENCE_top5_numpy.txt`` (an independent NumPy forward of cat.jpg and fish-bike.jpg, scores
before softmax: the log-ratio of two returned probabilities must equal the difference of their scores),
the ImageNet mean file read with NumPy, and shapes computed by hand. A loopback load of 1000 requests,
8 at once, must answer every request as a lone request is answered, and be batched.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
from conftest import ROOT, asset
from PIL import Image

SQ = "models/squeezenet_v1.0_deepcompression"
IMAGES = "caffe-ref/examples/images"
MAX_BODY = 1_000_000
RUN = "import sys; from caffe.tools.cli import main; sys.exit(main(sys.argv[1:]))"


def caffe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", RUN, *args]


def env() -> dict[str, str]:
    """The server's environment: one torch thread (two spin-wait for each other on busy shared cores)."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def reference_top5() -> dict[str, list[tuple[float, str]]]:
    """{image: [(score, label), ...]} from REFERENCE_top5_numpy.txt."""
    out: dict[str, list[tuple[float, str]]] = {}
    current = ""
    for line in asset(f"{SQ}/REFERENCE_top5_numpy.txt").read_text().splitlines():
        if line.startswith("== "):
            current = line[3:].strip()
            out[current] = []
        elif line.strip() and not line.startswith("#"):
            score, label = line.split(" ", 1)
            out[current].append((float(score), label))
    return out


def digits_archive(folder: Path) -> Path:
    """A DIGITS-style model archive: deploy.prototxt, a snapshot, mean.binaryproto, labels.txt, info.json."""
    import caffe.io

    src = folder / "job"
    src.mkdir()
    shutil.copy(asset(f"{SQ}/SqueezeNet_deploy.prototxt"), src / "deploy.prototxt")
    shutil.copy(asset(f"{SQ}/squeezenet_v1.0_deepcompression_decoded.caffemodel"), src / "snapshot_iter_10.caffemodel")
    mean = np.load(asset("models/imagenet-common/ilsvrc_2012_mean.npy"))
    (src / "mean.binaryproto").write_bytes(caffe.io.array_to_blobproto(mean[np.newaxis]).SerializeToString())
    shutil.copy(asset("models/imagenet-common/synset_words.txt"), src / "labels.txt")
    (src / "info.json").write_text(json.dumps({"framework": "caffe", "name": "squeezenet"}))
    archive = folder / "squeezenet-job.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        for f in sorted(src.iterdir()):
            t.add(f, arcname=f.name)
    return archive


class Server:
    """A ``caffe serve`` subprocess; its log is collected by a thread (the net setup logs a lot)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            caffe_cmd("serve", "--port", "0", *args), env=env(), stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(120) or self.port is None:
            self.stop()
            pytest.fail("caffe serve did not start:\n" + "".join(self.lines[-30:]))
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"\] Serving .* on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if "Application startup complete" in line:
                self._ready.set()
        self._ready.set()  # exited

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Files(http.server.BaseHTTPRequestHandler):
    """A loopback image host for the URL tests."""

    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        if self.path == "/slow.jpg":
            time.sleep(3)
        if self.path == "/to-ftp.jpg":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/cat.jpg")
            self.end_headers()
            return
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):  # the slow URL's client is gone
            super().handle()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    out = {name: asset(f"{IMAGES}/{name}").read_bytes() for name in ("cat.jpg", "fish-bike.jpg", "cat_gray.jpg")}
    out["dolphin.jpg"] = asset("dolphins-and-seahorses/dolphin/image_0001.jpg").read_bytes()
    return out


@pytest.fixture(scope="module")
def image_host(images: dict[str, bytes]) -> Iterator[str]:
    _Files.files = {"/cat.jpg": images["cat.jpg"], "/big.jpg": b"\xff" * (MAX_BODY + 1), "/text.jpg": b"hello"}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    archive = digits_archive(tmp_path_factory.mktemp("serve"))
    srv = Server(
        f"sq={asset(SQ)}",
        f"digits={archive}",
        f"--labels={asset('models/imagenet-common/synset_words.txt')}",
        "--mean=104,117,123",
        "--max_batch=8",
        "--max_wait_ms=5",
        f"--max_body_bytes={MAX_BODY}",
        "--url_timeout=1.5",
        "--nodocs",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def top(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


# ---------------------------------------------------------------------------------------------
# answers


@pytest.mark.parametrize("name", ["cat.jpg", "fish-bike.jpg"])
def test_top5_matches_the_independent_reference(client: httpx.Client, images: dict[str, bytes], name: str):
    ref = reference_top5()[name]
    preds = top(client.post("/models/sq/predict", files={"file": (name, images[name], "image/jpeg")}))
    assert [p["label"] for p in preds] == [label for _, label in ref]
    # softmax probabilities: log(p_i / p_0) = score_i - score_0
    for p, (score, _) in zip(preds[1:], ref[1:]):
        assert math.log(p["probability"] / preds[0]["probability"]) == pytest.approx(score - ref[0][0], abs=2e-3)
    assert all(0 < p["probability"] < 1 for p in preds)


def test_every_way_of_sending_an_image_gives_the_same_answer(client: httpx.Client, images: dict[str, bytes]):
    cat = images["cat.jpg"]
    b64 = base64.b64encode(cat).decode()
    answers = [
        top(client.post("/models/sq/predict", files={"file": ("cat.jpg", cat)})),
        top(client.post("/predict", files={"image_file": ("cat.jpg", cat)})),  # the default model is the first
        top(client.post("/predict", json={"base64": b64})),
        top(client.post("/predict", json={"image_base64": "data:image/jpeg;base64," + b64})),
        top(client.post("/predict", content=cat, headers={"content-type": "image/jpeg"})),
        top(client.post("/predict", data={"base64": b64})),
    ]
    for a in answers[1:]:
        assert [p["index"] for p in a] == [p["index"] for p in answers[0]]
        np.testing.assert_allclose([p["probability"] for p in a], [p["probability"] for p in answers[0]], atol=1e-6)
    assert answers[0][0]["index"] == 278  # kit fox: line 279 of synset_words.txt


def test_top_k_from_the_query_or_the_body(client: httpx.Client, images: dict[str, bytes]):
    assert len(top(client.post("/predict?top_k=2", files={"file": ("c.jpg", images["cat.jpg"])}))) == 2
    preds = top(client.post("/predict", json={"base64": base64.b64encode(images["cat.jpg"]).decode(), "top_k": 1000}))
    assert len(preds) == 1000
    assert sum(p["probability"] for p in preds) == pytest.approx(1.0, abs=1e-6)
    assert [p["probability"] for p in preds] == sorted((p["probability"] for p in preds), reverse=True)


def test_url_image(client: httpx.Client, image_host: str):
    preds = top(client.post("/models/sq/predict", json={"url": f"{image_host}/cat.jpg", "top_k": 1}))
    assert preds[0]["label"] == reference_top5()["cat.jpg"][0][1]


def test_digits_archive_model_with_its_own_mean_and_labels(client: httpx.Client, images: dict[str, bytes]):
    """The archive brings mean.binaryproto (256 x 256: a DIGITS model's mean image is centre-cropped to the
    227 x 227 input, as DIGITS and the studio do) and labels.txt."""
    info = client.get("/models/digits").json()
    assert info["mean"]["type"] == "image" and info["mean"]["shape"] == [3, 227, 227]
    assert info["mean_subtraction"] == "image"
    assert info["labels_file"].endswith("labels.txt") and info["labels"] == 1000
    preds = top(client.post("/models/digits/predict", files={"file": ("c.jpg", images["cat.jpg"])}))
    assert preds[0]["label"] == reference_top5()["cat.jpg"][0][1]
    # DIGITS' own REST call: percentages
    r = client.post(
        "/models/images/classification/classify_one.json",
        data={"job_id": "digits"},
        files={"image_file": ("c.jpg", images["cat.jpg"])},
    )
    assert r.status_code == 200, r.text
    digits = r.json()["predictions"]
    assert len(digits) == 5 and digits[0] == [preds[0]["label"], round(100 * preds[0]["probability"], 2)]


def test_loopback_load_every_answer_right_and_batched(client: httpx.Client, server: Server, images: dict[str, bytes]):
    """1000 requests, 8 at once, over 4 images and 3 encodings: each answer is the lone request's answer."""
    expected = {}
    for name, data in images.items():
        expected[name] = top(client.post("/models/sq/predict", files={"file": (name, data)}))
    assert expected["cat.jpg"][0]["label"] == reference_top5()["cat.jpg"][0][1]
    assert expected["fish-bike.jpg"][0]["label"] == reference_top5()["fish-bike.jpg"][0][1]
    before = client.get("/models/sq").json()["stats"]
    names = sorted(images)
    b64 = {n: base64.b64encode(d).decode() for n, d in images.items()}

    def one(i: int) -> tuple[str, httpx.Response]:
        name = names[i % len(names)]
        kind = (i // len(names)) % 3
        if kind == 0:
            return name, load_client.post("/models/sq/predict", files={"file": (name, images[name])})
        if kind == 1:
            return name, load_client.post("/predict", json={"base64": b64[name]})
        return name, load_client.post("/predict", content=images[name], headers={"content-type": "image/jpeg"})

    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    with httpx.Client(base_url=server.url, timeout=60, limits=limits) as load_client, ThreadPoolExecutor(8) as pool:
        t = time.perf_counter()
        results = list(pool.map(one, range(1000)))
        seconds = time.perf_counter() - t
    for name, r in results:
        preds = top(r)
        want = expected[name]
        assert [p["index"] for p in preds] == [p["index"] for p in want], name
        np.testing.assert_allclose([p["probability"] for p in preds], [p["probability"] for p in want], atol=1e-4)
    after = client.get("/models/sq").json()["stats"]
    requests = after["requests"] - before["requests"]
    forwards = after["forwards"] - before["forwards"]
    assert requests == 1000
    assert forwards < 700, f"{forwards} forwards for 1000 concurrent requests: not batched"
    assert after["max_batch_seen"] <= 8
    print(f"1000 requests in {seconds:.1f} s ({1000 / seconds:.0f}/s), {1000 / forwards:.2f} images per forward")


# ---------------------------------------------------------------------------------------------
# server and model information


def test_health_models_and_openapi(client: httpx.Client, server: Server):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["models"] == ["sq", "digits"] and health["default_model"] == "sq"
    listed = client.get("/models").json()
    assert [m["name"] for m in listed["models"]] == ["sq", "digits"]
    info = client.get("/models/sq").json()
    assert info["input"] == {"blob": "data", "shape": [3, 227, 227]}
    assert info["output"] == {"blob": "pool_final", "classes": 1000}
    assert info["labels"] == 1000 and info["mean"]["values"] == [104.0, 117.0, 123.0]
    assert info["softmax_applied"] is True  # the net ends in a Pooling layer: scores
    assert info["batching"] == {"max_batch": 8, "max_wait_ms": 5.0, "max_queue": 256}
    layers = {layer["name"]: layer for layer in info["layers"]}
    # conv1: 96 kernels 7x7 stride 2 on 227 -> (227 - 7) / 2 + 1 = 111
    assert layers["conv1"]["type"] == "Convolution" and layers["conv1"]["tops"] == {"conv1": [96, 111, 111]}
    assert layers["pool_final"]["tops"] == {"pool_final": [1000, 1, 1]}
    spec = client.get("/openapi.json").json()
    for path in ("/predict", "/models/{name}/predict", "/health", "/models", "/models/{name}"):
        assert path in spec["paths"], path
    predict = spec["paths"]["/models/{name}/predict"]["post"]
    assert {"multipart/form-data", "application/json", "image/*"} <= set(predict["requestBody"]["content"])
    assert {"400", "404", "413", "415", "422"} <= set(predict["responses"])
    assert client.get("/docs").status_code == 404  # --nodocs
    assert any("on http://127.0.0.1:" in line for line in server.lines)


def test_docs_page_and_default_host():
    from caffe.serve import create_app
    from caffe.tools.serve_tools import build_parser

    assert build_parser().parse_args(["m"]).host == "127.0.0.1"
    from fastapi.testclient import TestClient

    class _Stub:  # create_app only needs names (and batch limits) for the docs page
        name = "stub"
        max_batch = None

    with TestClient(create_app([_Stub()])) as c:  # type: ignore[list-item]
        page = c.get("/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()


# ---------------------------------------------------------------------------------------------
# bad input: 4xx with a message, never 500


def _jpeg_truncated(data: bytes) -> bytes:
    return data[: len(data) // 3]


BAD = [
    ("not an image (upload)", "files", {"file": ("x.jpg", b"this is text")}, 400, "not an image"),
    ("not an image (raw body)", "content", b"GIF89a garbage", 400, "not an image"),
    ("empty upload", "files", {"file": ("x.jpg", b"")}, 400, "empty image"),
    ("bad base64", "json", {"base64": "%%% not base64 %%%"}, 400, "base64"),
    ("bad JSON", "raw_json", b'{"url": ', 400, "not valid JSON"),
    ("JSON nested 100,000 deep", "raw_json", b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
    ("no image in JSON", "json", {"top_k": 3}, 422, "no image"),
    ("two sources", "json", {"url": "http://127.0.0.1/x.jpg", "base64": "AAAA"}, 422, "exactly one"),
    ("unknown field", "json", {"image": "AAAA"}, 422, "unknown JSON field"),
    ("top_k zero", "json", {"base64": "AAAA", "top_k": 0}, 422, "top_k"),
    ("top_k text", "json", {"base64": "AAAA", "top_k": "many"}, 422, "top_k"),
    ("url not a string", "json", {"url": 5}, 422, "url must be a string"),
    ("file:// URL", "json", {"url": "file:///etc/passwd"}, 400, "only http"),
    ("ftp:// URL", "json", {"url": "ftp://127.0.0.1/cat.jpg"}, 400, "only http"),
    ("unsupported content type", "text", "hello", 415, "Content-Type"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_a_4xx_with_a_message(client: httpx.Client, case: tuple):
    _, how, payload, status, fragment = case
    if how == "files":
        r = client.post("/predict", files=payload)
    elif how == "json":
        r = client.post("/predict", json=payload)
    elif how == "raw_json":
        r = client.post("/predict", content=payload, headers={"content-type": "application/json"})
    elif how == "text":
        r = client.post("/predict", content=payload, headers={"content-type": "text/plain"})
    else:
        r = client.post("/predict", content=payload, headers={"content-type": "image/jpeg"})
    assert r.status_code == status, r.text
    assert fragment.lower() in r.json()["detail"].lower()


def test_truncated_image_is_400(client: httpx.Client, images: dict[str, bytes]):
    r = client.post("/predict", files={"file": ("c.jpg", _jpeg_truncated(images["cat.jpg"]))})
    assert r.status_code == 400 and "decode" in r.json()["detail"]


def test_unknown_model_is_404(client: httpx.Client, images: dict[str, bytes]):
    r = client.post("/models/nope/predict", files={"file": ("c.jpg", images["cat.jpg"])})
    assert r.status_code == 404 and "'nope'" in r.json()["detail"] and "sq" in r.json()["detail"]
    assert client.get("/models/nope").status_code == 404


def test_body_over_the_limit_is_413(client: httpx.Client):
    big = b"\xff\xd8" + b"\0" * MAX_BODY
    r = client.post("/predict", content=big, headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and str(MAX_BODY) in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        for _ in range(20):
            yield b"\0" * (MAX_BODY // 10)

    r = client.post("/predict", content=chunks(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 413
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    assert client.post("/predict", content=buf.getvalue(), headers={"content-type": "image/png"}).status_code == 200


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/missing.jpg", 400, "HTTP 404"),
        ("/big.jpg", 413, "limit"),
        ("/text.jpg", 400, "not an image"),
        ("/to-ftp.jpg", 400, "only http"),
        ("/slow.jpg", 400, "no answer within 1.5 s"),
    ],
)
def test_url_that_fails(client: httpx.Client, image_host: str, path: str, status: int, fragment: str):
    r = client.post("/predict", json={"url": image_host + path})
    assert r.status_code == status, r.text
    assert fragment in r.json()["detail"]


def test_url_refused_is_400(client: httpx.Client):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = client.post("/predict", json={"url": f"http://127.0.0.1:{port}/x.jpg"})
    assert r.status_code == 400 and "cannot fetch" in r.json()["detail"]


# ---------------------------------------------------------------------------------------------
# the command line


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "give at least one MODEL"),
        (["--max_batch=0", "x"], "max_batch"),
        (["m={tmp}/nowhere"], "nowhere: no such model folder"),
        (["m={tmp}/two"], "2 candidate weights files (a.caffemodel, b.caffemodel)"),
        ([f"m={asset(SQ)}", "--labels={tmp}/missing.txt"], "labels file"),
        (["m={tmp}/notes.txt"], "not a model folder"),
    ],
    ids=["no model", "bad flag", "missing folder", "two caffemodels", "missing labels", "not a model"],
)
def test_cli_errors_exit_1(tmp_path: Path, capfd: pytest.CaptureFixture[str], args: list[str], fragment: str):
    from caffe.tools.cli import main

    two = tmp_path / "two"
    two.mkdir()
    (two / "deploy.prototxt").symlink_to(asset(f"{SQ}/SqueezeNet_deploy.prototxt"))
    for name in ("a", "b"):
        (two / f"{name}.caffemodel").symlink_to(asset(f"{SQ}/squeezenet_v1.0_deepcompression_decoded.caffemodel"))
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["serve", *(a.replace("{tmp}", str(tmp_path)) for a in args)]) == 1
    err = capfd.readouterr().err
    assert fragment in err and "Traceback" not in err
