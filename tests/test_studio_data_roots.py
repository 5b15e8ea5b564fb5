"""Server paths a client names stay inside the studio's data roots (issue 12, item 3).

Every studio here runs with the default roots (the working directory, ``root`` below) unless a test
says otherwise; ``outside`` is a sibling folder no request may reach, and ``/etc/passwd`` and
``/proc/self/environ`` stand for any server file: no answer may quote a byte of them.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from caffe.studio import datasets as ds
from caffe.studio.app import StudioConfig, create_app

CREATE = "/datasets/images/classification.json"
CLASSIFY = "/models/images/classification"


def _images(folder: Path, classes: tuple[str, ...] = ("cat", "dog"), n: int = 3) -> Path:
    for k, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(folder / name / f"img_{i:02d}.png"), np.full((8, 8), 40 + 80 * k + i, np.uint8))
    return folder


@pytest.fixture
def env(tmp_path, monkeypatch):
    """(client, root, outside): a studio with the default roots, started in ``root``."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    _images(root / "imgs")
    _images(outside / "imgs")
    (root / "labels.txt").write_text("cat\ndog\n")
    (root / "train.txt").write_text("cat/img_00.png 0\ncat/img_01.png 0\ndog/img_00.png 1\ndog/img_01.png 1\n")
    monkeypatch.chdir(root)
    with TestClient(create_app({"jobs_dir": tmp_path / "jobs", "devices": ["cpu"]})) as client:
        yield client, root, outside


def _lists(root: Path, **fields: str) -> dict[str, str]:
    """A textfile dataset form over ``root``'s lists, with ``fields`` replacing some of them."""
    return {
        "dataset_name": "lists",
        "method": "textfile",
        "resize_width": "4",
        "resize_height": "4",
        "textfile_train_images": str(root / "train.txt"),
        "textfile_labels_file": str(root / "labels.txt"),
        "textfile_train_folder": str(root / "imgs"),
        **fields,
    }


def _secrets(path: str) -> list[str]:
    """Pieces of a server file that an answer must not contain: its first line (or environment entries)."""
    data = Path(path).read_bytes().decode("utf-8", "replace")
    if path.endswith("environ"):
        return [e for e in data.split("\0") if len(e) >= 8]
    first = data.splitlines()[0]
    assert len(first) >= 8
    return [first]


def _refused(r, secrets: list[str] = ()) -> str:
    """The answer's text, after checking it is a short 4xx quoting none of ``secrets``."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    assert len(r.text) < 20_000
    leaked = [s for s in secrets if s in r.text or s in str(r.json() if "json" in r.headers["content-type"] else "")]
    assert not leaked, f"the answer quotes the server file: {leaked[:1]}"
    return r.text


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/etc/passwd", "/proc/self/environ"])
@pytest.mark.parametrize("field", ["textfile_train_images", "textfile_labels_file"])
def test_a_server_file_as_a_list_file_is_refused_without_quoting_it(env, path, field):
    client, root, _ = env
    if not os.access(path, os.R_OK):
        pytest.skip(f"{path} is not readable here")
    secrets = _secrets(path)
    text = _refused(client.post(CREATE, json=_lists(root, **{field: path})), secrets)
    assert "outside the folders" in text
    page = client.post(CREATE.removesuffix(".json"), data=_lists(root, **{field: path}))  # the HTML form
    assert "outside the folders" in _refused(page, secrets)


def test_a_list_inside_the_roots_naming_an_image_outside_them_is_refused(env):
    client, root, outside = env
    (root / "out.txt").write_text(f"cat/img_00.png 0\n{outside}/imgs/dog/img_00.png 1\n")
    text = _refused(client.post(CREATE, json=_lists(root, textfile_train_images=str(root / "out.txt"))))
    assert "out.txt:2:" in text and "outside the folders" in text
    # a link inside the roots to an image outside them, named by a relative path
    (root / "imgs" / "dog" / "link.png").symlink_to(outside / "imgs" / "dog" / "img_01.png")
    (root / "linked.txt").write_text("cat/img_00.png 0\ndog/link.png 1\n")
    text = _refused(client.post(CREATE, json=_lists(root, textfile_train_images=str(root / "linked.txt"))))
    assert "linked.txt:2:" in text and "outside the folders" in text


def test_symlinks_inside_a_root_leading_out_of_it_are_refused(env, tmp_path):
    client, root, outside = env
    (root / "elsewhere").symlink_to(outside / "imgs")
    text = _refused(client.post(CREATE, json={"dataset_name": "x", "folder_train": str(root / "elsewhere")}))
    assert "folder_train" in text and "outside the folders" in text
    (root / "passwd.txt").symlink_to("/etc/passwd")
    text = _refused(
        client.post(CREATE, json=_lists(root, textfile_train_images=str(root / "passwd.txt"))), _secrets("/etc/passwd")
    )
    assert "outside the folders" in text
    # a class folder that is a link out: left out, and none of the names of the files out there are listed
    (outside / "imgs" / "cat" / "secret-name.png").write_bytes((outside / "imgs" / "cat" / "img_00.png").read_bytes())
    (root / "imgs" / "bird").symlink_to(outside / "imgs" / "cat")
    params = ds.DatasetParams.from_dict({"folder_train": str(root / "imgs"), "data_roots": [str(root)]})
    plan = ds.make_plan(params)
    assert plan.labels == ["cat", "dog"]
    assert "secret-name" not in repr(plan)
    link = {"path": str(root / "imgs" / "bird"), "reason": "a link to a folder outside the allowed folders"}
    assert plan.skipped == [link]


def test_folders_and_images_outside_the_roots_are_refused(env):
    client, root, outside = env
    text = _refused(client.post(CREATE, json={"dataset_name": "x", "folder_train": str(outside / "imgs")}))
    assert "folder_train" in text and "outside the folders" in text and str(root) in text
    text = _refused(client.post(CREATE, json=_lists(root, textfile_train_folder=str(outside / "imgs"))))
    assert "textfile_train_folder" in text and "outside the folders" in text
    # classify one: the server image is refused before any model is looked up (403), none of it quoted
    fields = {"job_id": "20240101-000000-abcd", "image_path": "/etc/passwd"}
    r = client.post(f"{CLASSIFY}/classify_one.json", data=fields)
    assert r.status_code == 403 and "outside the folders" in _refused(r, _secrets("/etc/passwd"))


def test_classify_many_refuses_a_folder_holding_a_link_out_of_the_roots(env, tmp_path):
    from test_studio_inference import make_model_job

    client, root, outside = env
    job_id = make_model_job(client.app.state.studio.store, tmp_path)
    _images(outside / "clf", ("seahorse",))
    seahorses = outside / "clf" / "seahorse"
    (seahorses / "secret-name.png").write_bytes((seahorses / "img_00.png").read_bytes())
    _images(root / "clf", ("dolphin",))
    (root / "clf" / "seahorse").symlink_to(outside / "clf" / "seahorse")
    r = client.post(f"{CLASSIFY}/classify_many.json", data={"job_id": job_id, "image_folder": str(root / "clf")})
    assert r.status_code == 403 and "outside the folders" in r.text and "secret-name" not in r.text, r.text
    (root / "clf" / "seahorse").unlink()
    _images(root / "clf", ("seahorse",))
    r = client.post(f"{CLASSIFY}/classify_many.json", data={"job_id": job_id, "image_folder": str(root / "clf")})
    assert r.status_code == 200, r.text


def test_the_default_roots_are_the_working_directory(env, tmp_path, monkeypatch):
    client, root, _ = env
    assert f"Allowed folders: {root.resolve()}." in client.get("/datasets/images/classification/new").text
    from caffe.studio.paths import default_data_roots

    assert StudioConfig().data_roots is None  # None: the default, read from the working directory
    assert default_data_roots() == [root.resolve()] == ds.allowed_roots(None)

    # caffe studio: the default roots, or exactly the ones --data_roots names; logged at start-up
    from caffe.studio import app as app_module
    from caffe.tools.cli import main as caffe_main

    seen: list[StudioConfig] = []

    def fake_serve(config: StudioConfig, access_log: bool = False, on_ready=None) -> None:
        seen.append(config)
        on_ready("http://127.0.0.1:1")

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    lines = Lines()
    logging.getLogger("caffe").addHandler(lines)
    monkeypatch.setattr(app_module, "serve", fake_serve)
    try:
        assert caffe_main(["studio", "--jobs_dir", str(tmp_path / "jobs2"), "--devices", "cpu"]) in (0, None)
        other = tmp_path / "other"
        other.mkdir()
        flag = f"{other},{root}"
        assert caffe_main(
            ["studio", "--jobs_dir", str(tmp_path / "jobs2"), "--devices", "cpu", "--data_roots", flag]
        ) in (0, None)
        assert caffe_main(["studio", "--jobs_dir", str(tmp_path / "jobs2"), "--data_roots", str(tmp_path / "no")]) == 1
    finally:
        logging.getLogger("caffe").removeHandler(lines)
    assert [c.data_roots for c in seen] == [[root.resolve()], [other.resolve(), root.resolve()]]
    assert f"Forms may name server files under: {root.resolve()}" in lines.lines
    assert f"Forms may name server files under: {other.resolve()}, {root.resolve()}" in lines.lines


def test_list_files_are_read_bounded(env, tmp_path, monkeypatch):
    client, root, _ = env
    default = getattr(ds, "MAX_LIST_BYTES", None)
    monkeypatch.setattr(ds, "MAX_LIST_BYTES", 1 << 20, raising=False)  # small, so a test file is cheap
    (root / "huge.txt").write_text("a" * ((1 << 20) + 1))
    for field in ("textfile_train_images", "textfile_labels_file"):
        start = time.monotonic()
        text = _refused(client.post(CREATE, json=_lists(root, **{field: str(root / "huge.txt")})), ["a" * 100])
        assert field in text and "larger than" in text and time.monotonic() - start < 10
    os.mkfifo(root / "fifo")  # nobody writes to it: reading it would block forever
    assert "not a file" in _refused(client.post(CREATE, json=_lists(root, textfile_train_images=str(root / "fifo"))))
    # /dev/zero, even where an operator allowed /dev: refused at once
    with TestClient(
        create_app({"jobs_dir": tmp_path / "jobs3", "devices": ["cpu"], "data_roots": [root, Path("/dev")]})
    ) as wide:
        for field in ("textfile_train_images", "textfile_labels_file"):
            assert "not a file" in _refused(wide.post(CREATE, json=_lists(root, **{field: "/dev/zero"})))
    assert default == 64 << 20  # the bound outside this test


def test_valid_datasets_inside_the_roots_still_work(env):
    client, root, _ = env
    studio = client.app.state.studio
    r = client.post(
        CREATE,
        json={
            "dataset_name": "folder",
            "folder_train": str(root / "imgs"),
            "folder_pct_val": "34",
            "resize_width": "4",
            "resize_height": "4",
        },
    )
    assert r.status_code == 200, r.text
    (root / "abs.txt").write_text(f"{root}/imgs/cat/img_02.png 0\n{root}/imgs/dog/img_02.png 1\n")
    assert client.post(CREATE, json=_lists(root, textfile_val_images=str(root / "abs.txt"))).status_code == 200
    uploads = {
        "textfile_train_images": ("train.txt", (root / "train.txt").read_bytes()),
        "textfile_labels_file": ("labels.txt", b"cat\ndog\n"),
    }
    form = {k: v for k, v in _lists(root).items() if k not in uploads}
    r = client.post(CREATE, data=form, files=uploads)
    assert r.status_code == 200, r.text
    job = studio.scheduler.wait(r.json()["job_id"], timeout=120)  # the job process checks the roots again
    assert job.status == "Done", (studio.store.job_dir(job.id) / "log.txt").read_text()[-2000:]
    assert job.result["counts"]["train"] == 4


def test_unusable_paths_are_a_4xx(env):
    """Found by scripts/fuzz.py: a name too long for the file system was an OSError (500); a symlink loop and
    an unknown ~user raise from pathlib too."""
    client, root, _ = env
    (root / "loop").symlink_to(root / "loop")
    for text in (str(root / ("a" * 300)), str(root / "loop" / "x"), "~no-such-user-here/imgs"):
        answer = _refused(client.post(CREATE, json={"dataset_name": "x", "folder_train": text}))
        assert "folder_train" in answer
