"""The model zoo: the models/ entries and ``caffe zoo list | download | publish | fetch_gist``, all offline.

* every entry's readme front matter holds the published facts (URL and SHA1 of BVLC/caffe's and
  DeepScale/SqueezeNet's caffemodels, written out here as the independent record), every deploy
  net builds in the TEST phase with the outputs the readme describes, and the prototxts added
  here parse to the same definitions as the originals in the assets;
* downloads run against a local mirror (folder, file:// URL, $CAFFE_MODEL_MIRROR) and against an
  HTTP server on 127.0.0.1 that honours ranges and can drop a connection mid-body;
* publish and fetch_gist talk to a stand-in GitHub Gist API on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, asset

import caffe
from caffe import zoo
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_net_param, read_text
from caffe.tools.cli import main

# ---------------------------------------------------------------------------------------------
# the entries

_DL = "http://dl.caffe.berkeleyvision.org/"
_SQ = "https://github.com/DeepScale/SqueezeNet/raw/master/"
#: folder -> (caffemodel_url, sha1, license): BVLC/caffe's models/*/readme.md; SqueezeNet's SHA1s as
#: published by OpenCV's test-data downloader (v1.1) and mexopencv (v1.0 and v1.1).
PUBLISHED = {
    "bvlc_alexnet": (_DL + "bvlc_alexnet.caffemodel", "9116a64c0fbe4459d18f4bb6b56d647b63920377", "unrestricted"),
    "bvlc_reference_caffenet": (
        _DL + "bvlc_reference_caffenet.caffemodel",
        "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46",
        "unrestricted",
    ),
    "bvlc_googlenet": (_DL + "bvlc_googlenet.caffemodel", "405fc5acd08a3bb12de8ee5e23a96bec22f08204", "unrestricted"),
    "bvlc_reference_rcnn_ilsvrc13": (
        _DL + "bvlc_reference_rcnn_ilsvrc13.caffemodel",
        "bdd8abb885819cba5e2fe1eb36235f2319477e64",
        "unrestricted",
    ),
    "finetune_flickr_style": (
        _DL + "finetune_flickr_style.caffemodel",
        "b61b5cef7d771b53b0c488e78d35ccadc073e9cf",
        "non-commercial",
    ),
    "squeezenet_v1.0": (
        _SQ + "SqueezeNet_v1.0/squeezenet_v1.0.caffemodel",
        "579d0beb658e43c45937bf8bb5e4034fea4e1f69",
        "BSD-2-Clause",
    ),
    "squeezenet_v1.1": (
        _SQ + "SqueezeNet_v1.1/squeezenet_v1.1.caffemodel",
        "3397f026368a45ae236403ccc81cfcbe8ebe1bd0",
        "BSD-2-Clause",
    ),
}
#: folder -> the deploy net's output blob and its shape (input: 10 x 3 x H x W)
OUTPUTS = {
    "bvlc_alexnet": ("prob", (10, 1000)),
    "bvlc_reference_caffenet": ("prob", (10, 1000)),
    "bvlc_googlenet": ("prob", (10, 1000)),
    "bvlc_reference_rcnn_ilsvrc13": ("fc-rcnn", (10, 200)),  # 200 per-class SVM scores
    "finetune_flickr_style": ("prob", (10, 20)),  # 20 styles
    "squeezenet_v1.0": ("prob", (10, 1000, 1, 1)),
    "squeezenet_v1.1": ("prob", (10, 1000, 1, 1)),
}
#: our prototxts (not covered by test_tutorial_files) -> the original in the assets
ORIGINALS = {
    **{
        f"models/{m}/{f}": f"caffe-ref/models/{m}/{f}"
        for m, files in {
            "bvlc_reference_rcnn_ilsvrc13": ["deploy.prototxt"],
            "finetune_flickr_style": ["deploy.prototxt", "train_val.prototxt", "solver.prototxt"],
        }.items()
        for f in files
    },
    **{
        f"models/squeezenet_v{v}/{f}": f"models/squeezenet_v{v}/{f}"
        for v in ("1.0", "1.1")
        for f in ("deploy.prototxt", "train_val.prototxt", "solver.prototxt")
    },
}


def test_zoo_has_exactly_the_entries():
    assert sorted(p.parent.name for p in (ROOT / "models").glob("*/readme.md")) == sorted(PUBLISHED)


@pytest.mark.parametrize("folder", sorted(PUBLISHED))
def test_readme_front_matter_holds_the_published_facts(folder: str):
    info = zoo.load_model(ROOT / "models" / folder)  # checks the required keys
    url, sha1, license_ = PUBLISHED[folder]
    assert (info.front["caffemodel_url"], info.front["sha1"], info.front["license"]) == (url, sha1, license_)
    assert info.front["caffemodel"] == url.rsplit("/", 1)[1] == f"{folder}.caffemodel"
    assert isinstance(info.front["name"], str) and info.front["name"]
    body = info.readme.read_text().split("\n---\n", 1)[1]
    assert "## License" in body and f"caffe zoo download models/{folder}" in body


def test_only_flickr_style_has_a_public_gist():
    gists = {m: zoo.read_front_matter(ROOT / "models" / m).get("gist_id") for m in PUBLISHED}
    assert {m: g for m, g in gists.items() if g} == {"finetune_flickr_style": "034c6ac3865563b69e60"}


@pytest.mark.parametrize("folder", sorted(OUTPUTS))
def test_every_deploy_prototxt_builds_a_net_in_test_phase(folder: str):
    net = caffe.Net(str(ROOT / "models" / folder / "deploy.prototxt"), caffe.TEST)
    blob, shape = OUTPUTS[folder]
    assert net.outputs == [blob] and net.blobs[blob].data.shape == shape
    assert net.blobs[net.inputs[0]].data.shape[:2] == (10, 3)


@pytest.mark.parametrize("rel", sorted(ORIGINALS))
def test_prototxt_is_the_original_definition_in_our_own_words(rel: str):
    ours, theirs = ROOT / rel, asset(ORIGINALS[rel])
    if "solver" in rel:
        assert read_text(ours, pb.SolverParameter()) == read_text(theirs, pb.SolverParameter())
    else:  # SqueezeNet's deploy nets use the old 'input:' fields: ours is their upgrade (an Input layer)
        net = read_text(ours, pb.NetParameter())
        assert net.layer and not net.layers and not net.input
        assert read_net_param(ours) == read_net_param(theirs)

    def comments(text: str) -> set[str]:
        return {line.split("#", 1)[1].strip() for line in text.splitlines() if "#" in line} - {""}

    assert not comments(ours.read_text()) & comments(theirs.read_text())


# ---------------------------------------------------------------------------------------------
# stand-in servers


@dataclass
class Served:
    """What a stand-in server saw: (method, path, headers, JSON body or None) per request."""

    base: str
    requests: list[tuple[str, str, dict[str, str], object]] = field(default_factory=list)


Respond = Callable[[http.server.BaseHTTPRequestHandler, object], None]


@pytest.fixture
def serve() -> Iterator[Callable[[Respond], Served]]:
    """``serve(respond)`` starts an HTTP server on 127.0.0.1:0 in a thread; ``respond(handler, body)``
    answers each request (body: the request's JSON, or None)."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(respond: Respond) -> Served:
        served = Served("")

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                served.requests.append((self.command, self.path, dict(self.headers.items()), body))
                respond(self, body)

            do_GET = do_POST = do_PATCH = _any

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        served.base = f"http://127.0.0.1:{server.server_address[1]}"
        return served

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def send(handler: http.server.BaseHTTPRequestHandler, status: int, data: bytes, **headers: str) -> None:
    handler.send_response(status)
    for key, value in {"Content-Length": str(len(data)), **headers}.items():
        handler.send_header(key.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(data)


# ---------------------------------------------------------------------------------------------
# caffe zoo download

PAYLOAD = np.random.default_rng(5).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
SHA1 = hashlib.sha1(PAYLOAD).hexdigest()


def model_folder(parent: Path, url: str, sha1: str = SHA1, name: str = "net", **extra: str) -> Path:
    d = parent / name
    d.mkdir(parents=True)
    keys = {"name": f"Test {name}", "caffemodel": f"{name}.caffemodel", "caffemodel_url": url, "sha1": sha1}
    keys.update(extra)
    front = "".join(f"{k}: {v}\n" for k, v in keys.items() if v is not None)
    (d / "readme.md").write_text(f"---\n{front}---\n\nA test model.\n")
    (d / "deploy.prototxt").write_text('name: "net"\n')
    return d


def file_server(serve: Callable[[Respond], Served], data: bytes, drop_first_at: int | None = None) -> Served:
    """Serves ``data`` at any path, honouring 'Range: bytes=N-'; with ``drop_first_at`` the first
    response announces the whole length but the connection closes after that many bytes."""
    drops = [drop_first_at] if drop_first_at is not None else []

    def respond(h: http.server.BaseHTTPRequestHandler, _: object) -> None:
        rng = h.headers.get("Range")
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        if start:
            total = len(data)
            send(h, 206, data[start:], Content_Range=f"bytes {start}-{total - 1}/{total}")
            return
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[: drops.pop()] if drops else data)
        h.close_connection = True

    return serve(respond)


def run(*argv: str) -> int:
    return main(["zoo", *argv])


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture(autouse=True)
def _no_mirror_or_token(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (zoo.MIRROR_ENV, zoo.GIST_API_ENV, "GITHUB_TOKEN", "CAFFE_DATA_MIRROR"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("how", ["dir", "file_url", "env"])
def test_download_from_a_local_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "net.caffemodel").write_bytes(PAYLOAD)
    d = model_folder(tmp_path / "models", "http://nowhere.invalid/x/net.caffemodel")  # never contacted
    flag = {"dir": [f"--mirror={mirror}"], "file_url": ["--mirror", mirror.as_uri()], "env": []}[how]
    if how == "env":
        monkeypatch.setenv(zoo.MIRROR_ENV, str(mirror))
    assert run("download", str(d), *flag) == 0
    assert (d / "net.caffemodel").read_bytes() == PAYLOAD and not (d / "net.caffemodel.part").exists()


def test_mirror_without_the_file_names_the_mirror_variable(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    d = model_folder(tmp_path, "http://nowhere.invalid/net.caffemodel")
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert run("download", str(d), f"--mirror={tmp_path}/empty") == 1
    assert "net.caffemodel: not found in the mirror" in errors(caplog)[0] and zoo.MIRROR_ENV in errors(caplog)[0]


def test_download_over_http_and_skip_when_present(
    tmp_path: Path, serve: Callable[[Respond], Served], capsys: pytest.CaptureFixture[str]
):
    server = file_server(serve, PAYLOAD)
    d = model_folder(tmp_path, f"{server.base}/files/net.caffemodel")
    assert run("download", str(d)) == 0
    assert [(m, p, h.get("Range")) for m, p, h, _ in server.requests] == [("GET", "/files/net.caffemodel", None)]
    assert hashlib.sha1((d / "net.caffemodel").read_bytes()).hexdigest() == SHA1
    assert sorted(p.name for p in d.iterdir()) == ["deploy.prototxt", "net.caffemodel", "readme.md"]
    capsys.readouterr()

    assert run("download", str(d)) == 0  # the right file is there: nothing is fetched
    assert len(server.requests) == 1 and "already downloaded (SHA1 OK)" in capsys.readouterr().out
    assert zoo.download_model(d) == (d / "net.caffemodel", False)

    (d / "net.caffemodel").write_bytes(b"stale")  # a wrong file is fetched again, from the start
    assert run("download", str(d)) == 0
    assert [h.get("Range") for _, _, h, _ in server.requests[1:]] == [None]
    assert (d / "net.caffemodel").read_bytes() == PAYLOAD
    assert run("download", str(d), "--force") == 0 and len(server.requests) == 3


@pytest.mark.parametrize("source", ["http", "mirror"])
def test_sha1_mismatch_is_an_error_and_removes_the_file(
    tmp_path: Path, serve: Callable[[Respond], Served], caplog: pytest.LogCaptureFixture, source: str
):
    wrong = PAYLOAD[:-1] + b"\0"
    server = file_server(serve, wrong)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "net.caffemodel").write_bytes(wrong)
    d = model_folder(tmp_path, f"{server.base}/net.caffemodel")
    flag = [f"--mirror={tmp_path / 'mirror'}"] if source == "mirror" else []
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert run("download", str(d), *flag) == 1
    [message] = errors(caplog)
    got = hashlib.sha1(wrong).hexdigest()
    assert f"SHA1 mismatch: expected {SHA1}, got {got}" in message and "removed" in message
    assert str(d / "readme.md") in message
    assert sorted(p.name for p in d.iterdir()) == ["deploy.prototxt", "readme.md"]  # no caffemodel, no .part
    assert len(server.requests) == (source == "http")


def test_interrupted_download_resumes_with_a_range_request(tmp_path: Path, serve: Callable[[Respond], Served]):
    server = file_server(serve, PAYLOAD, drop_first_at=123_456)
    d = model_folder(tmp_path, f"{server.base}/net.caffemodel")
    assert run("download", str(d)) == 0
    assert [h.get("Range") for _, _, h, _ in server.requests] == [None, "bytes=123456-"]
    assert hashlib.sha1((d / "net.caffemodel").read_bytes()).hexdigest() == SHA1


def test_partial_download_of_a_failed_run_is_resumed_by_the_next(
    tmp_path: Path, serve: Callable[[Respond], Served], caplog: pytest.LogCaptureFixture
):
    server = file_server(serve, PAYLOAD, drop_first_at=200_000)
    d = model_folder(tmp_path, f"{server.base}/net.caffemodel")
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert run("download", str(d), "--retries=0") == 1
    assert "connection" in errors(caplog)[0] and "run again to resume" in errors(caplog)[0]
    assert (d / "net.caffemodel.part").read_bytes() == PAYLOAD[:200_000]
    assert zoo.model_status(zoo.load_model(d)) == "partial download (200000 bytes)"
    assert run("download", str(d)) == 0
    assert [h.get("Range") for _, _, h, _ in server.requests] == [None, "bytes=200000-"]
    assert (d / "net.caffemodel").read_bytes() == PAYLOAD and not (d / "net.caffemodel.part").exists()


@pytest.mark.parametrize("key", zoo.REQUIRED_KEYS)
def test_missing_readme_key_is_an_error_naming_readme_and_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, key: str
):
    d = model_folder(tmp_path, "http://nowhere.invalid/net.caffemodel", **{key: None})  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert run("download", str(d)) == 1
    [message] = errors(caplog)
    assert message.startswith(f"{d / 'readme.md'}: ") and f"lacks the required key {key} " in message


@pytest.mark.parametrize(
    ("readme", "problem"),
    [
        ("# no front matter\n", "no YAML front matter"),
        ("---\nname: x\n", "no closing '---'"),
        ("---\nname: [x\n---\n", "not valid YAML (line 2)"),
        ("---\ncaffemodel: a.caffemodel\ncaffemodel_url: http://h/a\nsha1: 1234\n---\n", "sha1 must be a string"),
        ("---\ncaffemodel: a.caffemodel\ncaffemodel_url: http://h/a\nsha1: abc\n---\n", "sha1 must be 40 hex"),
        ("---\ncaffemodel: ../a.caffemodel\ncaffemodel_url: http://h/a\nsha1: " + "a" * 40 + "\n---\n", "plain file"),
    ],
)
def test_bad_readme_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture, readme: str, problem: str):
    (tmp_path / "readme.md").write_text(readme)
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert run("download", str(tmp_path)) == 1
    [message] = errors(caplog)
    assert message.startswith(f"{tmp_path / 'readme.md'}: ") and problem in message


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(
    tmp_path: Path, serve: Callable[[Respond], Served], monkeypatch: pytest.MonkeyPatch
):
    server = file_server(serve, PAYLOAD)
    for terminal in (False, True):
        d = model_folder(tmp_path / str(terminal), f"{server.base}/net.caffemodel")
        stderr = _Terminal() if terminal else io.StringIO()
        monkeypatch.setattr(sys, "stderr", stderr)
        zoo.download_model(d)
        monkeypatch.undo()
        bar = stderr.getvalue()
        if terminal:
            assert "net.caffemodel: 100%" in bar and "300k/300k" in bar
        else:  # (stderr may hold the caffe logger's lines, which follow sys.stderr, but no bar)
            assert "%" not in bar and "\r" not in bar and "300k" not in bar


def test_zoo_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    models = tmp_path / "models"
    good, wrong, part = (model_folder(models, "http://h/n.caffemodel", name=n) for n in ("good", "wrong", "part"))
    model_folder(models, "http://h/n.caffemodel", name="none")
    model_folder(models, "http://h/n.caffemodel", name="nosha", sha1=None)
    (models / "notamodel").mkdir()
    (good / "good.caffemodel").write_bytes(PAYLOAD)
    (wrong / "wrong.caffemodel").write_bytes(b"x")
    (part / "part.caffemodel.part").write_bytes(b"x" * 10)
    assert run("list", f"--models_dir={models}") == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert sorted(rows) == ["good", "none", "nosha", "part", "wrong"]
    assert "Test good" in rows["good"] and "good.caffemodel" in rows["good"]
    expected = {
        "good": "downloaded, SHA1 OK",
        "wrong": "downloaded, SHA1 mismatch",
        "part": "partial download (10 bytes)",
        "none": "not downloaded",
        "nosha": "readme lacks sha1",
    }
    assert all(status in rows[m] for m, status in expected.items())
    assert run("list", f"--models_dir={models}", "--quick") == 0  # present, SHA1 not checked
    quick = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert all("downloaded  " in quick[m] and "SHA1" not in quick[m] for m in ("good", "wrong"))

    assert run("list", f"--models_dir={ROOT / 'models'}", "--quick") == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == sorted(PUBLISHED)


def test_download_model_binary_script_and_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    (tmp_path / "mirror").mkdir()
    a, b = (model_folder(tmp_path, "http://nowhere.invalid/net.caffemodel", name=n + "net") for n in "ab")
    for d in (a, b):
        (tmp_path / "mirror" / f"{d.name}.caffemodel").write_bytes(PAYLOAD)
    env = {**os.environ, zoo.MIRROR_ENV: str(tmp_path / "mirror"), "PYTHONPATH": str(ROOT)}
    script = ROOT / "scripts" / "download_model_binary.py"
    done = subprocess.run([sys.executable, str(script), str(a)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (a / "anet.caffemodel").read_bytes() == PAYLOAD

    from caffe.tools.entry import download_model_binary  # the console script download_model_binary

    monkeypatch.setattr(sys, "argv", ["download_model_binary", str(b), f"--mirror={tmp_path / 'mirror'}"])
    assert download_model_binary() == 0 and (b / "bnet.caffemodel").read_bytes() == PAYLOAD
    monkeypatch.setattr(sys, "argv", ["download_model_binary"])
    assert download_model_binary() == 1 and "DIR" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Gists


@dataclass
class GistAPI:
    """A stand-in for GitHub's Gist API: the gists it holds and the requests it got."""

    served: Served
    gists: dict[str, dict[str, str]]


@pytest.fixture
def gist_api(serve: Callable[[Respond], Served]) -> GistAPI:
    gists: dict[str, dict[str, str]] = {"c0ffee": {"readme.md": "---\nname: x\n---\n", "deploy.prototxt": "layer {}\n"}}
    api = GistAPI(Served(""), gists)

    def respond(h: http.server.BaseHTTPRequestHandler, body: object) -> None:
        if h.headers.get("Authorization") not in ("Bearer s3cret", None):
            return send(h, 401, b'{"message": "Bad credentials"}')
        if h.path.startswith("/raw/"):
            return send(h, 200, gists["c0ffee"][h.path.removeprefix("/raw/")].encode())
        gid = h.path.removeprefix("/api/v3/gists").strip("/")
        if h.command == "POST" and not gid:
            gid = f"{len(gists) + 1:04d}abc"
            gists[gid] = {}
        if gid not in gists:
            return send(h, 404, b'{"message": "Not Found"}')
        if h.command in ("POST", "PATCH"):
            assert isinstance(body, dict)
            gists[gid].update({name: f["content"] for name, f in body["files"].items()})
        files = {
            name: {"filename": name, "content": text[:8], "truncated": True, "raw_url": f"{api.served.base}/raw/{name}"}
            if name == "deploy.prototxt"  # the API truncates big files: their text comes from raw_url
            else {"filename": name, "content": text}
            for name, text in gists[gid].items()
        }
        answer = {"id": gid, "html_url": f"https://gist.example/{gid}", "files": files}
        return send(h, 201 if h.command == "POST" else 200, json.dumps(answer).encode())

    api.served = serve(respond)
    return api


def publishable(tmp_path: Path) -> Path:
    d = model_folder(tmp_path, "http://h/net.caffemodel", license="unrestricted")
    (d / "solver.prototxt").write_text('net: "train_val.prototxt"\n')
    (d / "net.caffemodel").write_bytes(b"weights, even if they happen to be text")
    (d / "net_iter_10.solverstate").write_bytes(b"state")
    (d / "net.caffemodel.h5.part").write_bytes(b"partial")
    (d / "mean.binaryproto").write_bytes(b"\x08\x01")
    (d / "labels.bin").write_bytes(b"bytes\0with a NUL")
    (d / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (d / "empty.txt").write_text("")
    (d / ".hidden").write_text("secret")
    (d / "sub").mkdir()
    (d / "sub" / "nested.txt").write_text("nested")
    return d


def test_publish_posts_then_patches_the_text_files_with_the_token(
    tmp_path: Path, gist_api: GistAPI, monkeypatch: pytest.MonkeyPatch
):
    d = publishable(tmp_path)
    monkeypatch.setenv("GITHUB_TOKEN", "s3cret")
    api = f"{gist_api.served.base}/api/v3"
    assert run("publish", str(d), f"--api={api}") == 0
    text_files = ["deploy.prototxt", "readme.md", "solver.prototxt"]
    (m1, p1, h1, b1), (m2, p2, _, b2) = gist_api.served.requests
    assert (m1, p1, m2, p2) == ("POST", "/api/v3/gists", "PATCH", "/api/v3/gists/0002abc")
    assert h1["Authorization"] == "Bearer s3cret" and h1["Accept"] == "application/vnd.github+json"
    assert isinstance(b1, dict) and isinstance(b2, dict)
    assert sorted(b1["files"]) == text_files and b1["public"] is False and b1["description"] == "Test net"
    assert b1["files"]["solver.prototxt"] == {"content": 'net: "train_val.prototxt"\n'}
    # the new id goes into the readme's front matter, and the uploaded readme carries it too
    assert zoo.read_front_matter(d)["gist_id"] == "0002abc"
    assert b2["files"]["readme.md"]["content"] == (d / "readme.md").read_text()
    assert (d / "readme.md").read_text().endswith("gist_id: 0002abc\n---\n\nA test model.\n")

    (d / "deploy.prototxt").write_text('name: "net v2"\n')  # an update: PATCH of the same Gist
    monkeypatch.setenv(zoo.GIST_API_ENV, api)
    assert run("publish", str(d)) == 0
    method, path, headers, body = gist_api.served.requests[2]
    assert (method, path, headers["Authorization"], len(gist_api.served.requests)) == (
        "PATCH",
        "/api/v3/gists/0002abc",
        "Bearer s3cret",
        3,
    )
    assert isinstance(body, dict) and sorted(body["files"]) == text_files
    assert gist_api.gists["0002abc"]["deploy.prototxt"] == 'name: "net v2"\n'


def test_publish_errors(
    tmp_path: Path, gist_api: GistAPI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    d = publishable(tmp_path)
    api = f"--api={gist_api.served.base}/api/v3"
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert run("publish", str(d), api) == 1
        assert "set the environment variable GITHUB_TOKEN" in errors(caplog)[-1] and not gist_api.served.requests
        monkeypatch.setenv("GITHUB_TOKEN", "wrong")
        assert run("publish", str(d), api) == 1
        assert "HTTP 401" in errors(caplog)[-1] and "Bad credentials" in errors(caplog)[-1]
        monkeypatch.setenv("GITHUB_TOKEN", "s3cret")
        zoo.set_front_matter_key(d, "gist_id", "123")  # all digits: stored quoted, read back as a string
        assert zoo.read_front_matter(d)["gist_id"] == "123"
        assert run("publish", str(d), api) == 1
        assert "HTTP 404" in errors(caplog)[-1] and "/gists/123" in errors(caplog)[-1]
        assert run("publish", str(d), "--api=ftp://x") == 1 and "http:// or https://" in errors(caplog)[-1]


def test_upload_and_download_scripts_round_trip(tmp_path: Path, gist_api: GistAPI):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "caffe").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -c "import sys; from caffe.tools.cli import main; sys.exit(main())" "$@"\n'
    )
    (bindir / "caffe").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        zoo.GIST_API_ENV: f"{gist_api.served.base}/api/v3",
        "GITHUB_TOKEN": "s3cret",
    }

    def script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(ROOT / "scripts" / name), *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=tmp_path)

    # fetch_gist: the Gist's files land in DIRNAME/GIST_ID (a truncated file is read from its raw_url)
    done = script("download_model_from_gist.sh", "someone/c0ffee", "zoo")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "zoo" / "someone-c0ffee"
    assert {p.name: p.read_text() for p in folder.iterdir()} == gist_api.gists["c0ffee"]
    assert [r[1] for r in gist_api.served.requests] == ["/api/v3/gists/c0ffee", "/raw/deploy.prototxt"]
    assert all(r[2]["Authorization"] == "Bearer s3cret" for r in gist_api.served.requests)  # raw_url: same host
    again = script("download_model_from_gist.sh", "someone/c0ffee", "zoo")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert script("download_model_from_gist.sh").returncode == 1

    # publish of the fetched folder (its readme has no gist_id): a new Gist
    assert zoo.read_front_matter(folder) == {"name": "x"}
    done = script("upload_model_to_gist.sh", str(folder))
    assert done.returncode == 0, done.stderr
    assert [r[0] for r in gist_api.served.requests[2:]] == ["POST", "PATCH"]
    new_id = zoo.read_front_matter(folder)["gist_id"]
    assert gist_api.gists[new_id]["deploy.prototxt"] == gist_api.gists["c0ffee"]["deploy.prototxt"]
    assert script("upload_model_to_gist.sh", str(tmp_path / "nowhere")).returncode == 1


def test_fetch_gist_refuses_unsafe_names(tmp_path: Path, serve: Callable[[Respond], Served]):
    answer = {"files": {"x": {"filename": "../evil", "content": "x"}}}
    server = serve(lambda h, _: send(h, 200, json.dumps(answer).encode()))
    with pytest.raises(zoo.ZooError, match=r"refusing the file name '\.\./evil'"):
        zoo.fetch_gist("abc", tmp_path, api=server.base)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(zoo.ZooError, match="is not a Gist id"):
        zoo.fetch_gist("../..", tmp_path, api=server.base)
