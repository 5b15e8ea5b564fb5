"""Python layers only with the operator's consent (issue 12, item 1).

Without ``--allow_python_layers`` the studio refuses an upload, a model form or a model whose network has a
``Python`` layer (4xx naming the layer and the flag) and ``caffe serve`` refuses such a model folder at start-up.
With it, an uploaded module is never imported by the studio's process (it runs in a worker, or in the training's
own process) and may not take the name of a module the server can import. The uploaded modules below append
their process id to a marker file when they are imported: that file tells where (and whether) they ran.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_studio_inference import make_client
from test_studio_models import make_images

import caffe
from caffe.errors import CaffeError
from caffe.studio import datasets, inference

FLAG = "--allow_python_layers"
CLASSIFY = "/models/images/classification"

LAYER = '''
import os
import time

import caffe

with open({marker!r}, "a") as f:
    f.write(f"{{os.getpid()}}\\n")


class Scale(caffe.Layer):
    """top = bottom / 2 (slow while the file {slow!r} exists)."""

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        while os.path.exists({slow!r}):
            time.sleep(0.1)
        top[0].data[...] = 0.5 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 0.5 * top[0].diff
'''


def layer_file(folder: Path) -> bytes:
    """The uploaded module: appends its pid to ``folder/marker`` when imported."""
    return LAYER.format(marker=str(folder / "marker"), slow=str(folder / "slow")).encode()


def ran_in(folder: Path) -> list[int]:
    """The pids of the processes that imported the module (none when it never ran)."""
    marker = folder / "marker"
    return [int(p) for p in marker.read_text().split()] if marker.exists() else []


def net_text(module: str | None, channels: int = 3, size: int = 24) -> str:
    """Input -> [Python 'scale' (``module``)] -> InnerProduct 'fc' (2 outputs) -> Softmax."""
    scale = (
        (
            f'layer {{ name: "scale" type: "Python" bottom: "data" top: "scaled" '
            f'python_param {{ module: "{module}" layer: "Scale" }} }}\n'
        )
        if module
        else ""
    )
    return (
        f'name: "consent"\nlayer {{ name: "data" type: "Input" top: "data" '
        f"input_param {{ shape {{ dim: 1 dim: {channels} dim: {size} dim: {size} }} }} }}\n{scale}"
        f'layer {{ name: "fc" type: "InnerProduct" bottom: "{"scaled" if module else "data"}" top: "fc" '
        'inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.01 } } }\n'
        'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n'
    )


def tiny_weights(folder: Path, channels: int = 3, size: int = 24) -> bytes:
    """Weights of the fc layer (the only one with parameters), from the same net without its Python layer."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plain.prototxt").write_text(net_text(None, channels, size))
    net = caffe.Net(str(folder / "plain.prototxt"), caffe.TEST)
    net.save(str(folder / "w.caffemodel"))
    return (folder / "w.caffemodel").read_bytes()


def upload(client: TestClient, folder: Path, module: str | None, python_file: bool = True, **form: str):
    files = {
        "weights_file": ("w.caffemodel", tiny_weights(folder)),
        "deploy_file": ("deploy.prototxt", net_text(module).encode()),
        "labels_file": ("labels.txt", b"dark\nlight\n"),
    }
    if python_file:
        files["python_layer_file"] = ("layer.py", layer_file(folder))
    data = {"job_name": "consent", "width": "24", "height": "24", **form}
    return client.post("/pretrained_models.json", data=data, files=files)


def png(value: int = 120, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def pid_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_studio_without_the_flag_refuses_python_layers_and_never_runs_them(tmp_path):
    with make_client(tmp_path, [tmp_path]) as client:
        r = upload(client, tmp_path, "consent_off_layer")
        assert r.status_code == 403, r.text
        detail = r.json()["detail"]
        assert "'scale'" in detail and FLAG in detail and "deploy.prototxt" in detail
        no_file = upload(client, tmp_path, "consent_off_layer", python_file=False)
        assert no_file.status_code == 403 and "'scale'" in no_file.json()["detail"]
        file_only = upload(client, tmp_path, None)  # a plain net, but a Python layer file with it
        assert file_only.status_code == 403 and FLAG in file_only.json()["detail"]
        page = client.post(
            "/pretrained_models",
            headers={"Accept": "text/html"},
            data={"job_name": "x", "width": "24", "height": "24"},
            files={
                "weights_file": ("w", tiny_weights(tmp_path)),
                "deploy_file": ("d", net_text("consent_off_layer").encode()),
            },
        )
        assert page.status_code == 403 and FLAG in page.text
        assert FLAG in client.get("/pretrained_models/new").text  # the form says why Python layers are off
        assert client.get("/pretrained_models.json").json()["pretrained_models"] == []
    assert not (tmp_path / "marker").exists()  # the module never ran
    assert "consent_off_layer" not in sys.modules


def test_studio_with_the_flag_runs_an_uploaded_layer_in_a_worker_only(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, value in enumerate((30, 120, 220)):
        (images / f"{i}.png").write_bytes(png(value))
    with make_client(tmp_path, [tmp_path], allow_python_layers=True) as client:
        r = upload(client, tmp_path, "consent_on_layer")
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]
        checked = ran_in(tmp_path)
        assert checked and os.getpid() not in checked  # validated in another process
        one = client.post(
            f"{CLASSIFY}/classify_one.json",
            data={"job_id": job_id, "show_visualizations": "1"},
            files={"image_file": ("a.png", png())},
        )
        assert one.status_code == 200, one.text
        predictions = dict(one.json()["predictions"])
        assert set(predictions) == {"dark", "light"} and sum(predictions.values()) == pytest.approx(100, abs=0.1)
        layers = {v["layer"]: v for v in one.json()["visualizations"]}
        assert set(layers) == {"scale", "fc", "prob"} and layers["fc"]["weights"]["shape"] == [2, 3 * 24 * 24]
        assert layers["scale"]["activation"]["image"].startswith("data:image/png;base64,")
        many = client.post(f"{CLASSIFY}/classify_many.json", data={"job_id": job_id, "image_folder": str(images)})
        assert many.status_code == 200 and len(many.json()["classifications"]) == 3, many.text
        page = client.post(
            f"{CLASSIFY}/classify_one",
            data={"job_id": job_id, "show_visualizations": "1"},
            files={"image_file": ("a.png", png())},
            headers={"Accept": "text/html"},
        )
        assert page.status_code == 200 and "dark" in page.text
        pids = ran_in(tmp_path)
        assert len(pids) == 2 and os.getpid() not in pids  # the check's worker, then the classifying worker
        assert "consent_on_layer" not in sys.modules  # never imported by the server
        inference.CACHE.clear()  # ends the classifying worker
        assert pid_gone(pids[-1])


def test_a_worker_past_its_deadline_is_stopped_and_answers_4xx(tmp_path):
    with make_client(tmp_path, [tmp_path], allow_python_layers=True) as client:
        job_id = upload(client, tmp_path, "consent_slow_layer").json()["job_id"]
        url = f"{CLASSIFY}/classify_one.json"
        assert client.post(url, data={"job_id": job_id}, files={"image_file": ("a.png", png())}).status_code == 200
        model = inference.load_model(client.app.state.studio.store, job_id, None, True)
        model.remote.worker.timeout_s = 1.0
        (tmp_path / "slow").touch()
        started = time.monotonic()
        r = client.post(url, data={"job_id": job_id}, files={"image_file": ("a.png", png())})
        assert r.status_code == 400 and "did not answer within 1 s" in r.json()["detail"]
        assert time.monotonic() - started < 10
        assert pid_gone(ran_in(tmp_path)[-1])
        (tmp_path / "slow").unlink()
        again = client.post(url, data={"job_id": job_id}, files={"image_file": ("a.png", png())})
        assert again.status_code == 200, again.text  # a new worker
        inference.CACHE.clear()


@pytest.mark.parametrize("module", ["json", "os", "caffe", "numpy"])
def test_an_uploaded_module_may_not_shadow_an_importable_one(tmp_path, module):
    before = sys.modules[module]
    with make_client(tmp_path, [tmp_path], allow_python_layers=True) as client:
        r = upload(client, tmp_path, module)
        assert r.status_code == 400, r.text
        assert f"'{module}'" in r.json()["detail"] and "'scale'" in r.json()["detail"]
    assert not (tmp_path / "marker").exists() and sys.modules[module] is before


@pytest.fixture
def dataset_client(tmp_path):
    def make(allow: bool):
        client = make_client(tmp_path, [tmp_path], allow_python_layers=allow)
        store = client.app.state.studio.store
        job = store.create("dataset", "tiny", {})
        params = datasets.DatasetParams.from_dict(
            {
                "folder_train": str(make_images(tmp_path / "images")),
                "resize_channels": 1,
                "resize_width": 28,
                "resize_height": 28,
            }
        )
        store.update(job.id, status="Done", result=datasets.create_dataset(store.job_dir(job.id), params))
        return client, job.id

    return make


TRAIN = {
    "model_name": "py",
    "train_epochs": "1",
    "batch_size": "8",
    "lr_policy": "fixed",
    "random_seed": "3",
    "device": "cpu",
}


def test_model_form_with_a_python_layer_is_refused_without_the_flag(tmp_path, dataset_client):
    client, dataset = dataset_client(False)
    with client:
        network = net_text("consent_custom_layer", 1, 28)
        r = client.post(
            "/models/images/classification.json",
            data={**TRAIN, "dataset": dataset, "method": "custom", "custom_network": network},
        )
        assert r.status_code == 400, r.text
        message = r.json()["fields"]["custom_network"]
        assert "'scale'" in message and FLAG in message
        assert client.get("/index.json").json()["models"] == []


def test_with_the_flag_a_pretrained_python_layer_fine_tunes_in_the_training_process(tmp_path, dataset_client):
    client, dataset = dataset_client(True)
    with client:
        files = {
            "weights_file": ("w", tiny_weights(tmp_path / "w", 1, 28)),
            "deploy_file": ("d", net_text("consent_tune_layer", 1, 28).encode()),
            "python_layer_file": ("layer.py", layer_file(tmp_path)),
        }
        r = client.post(
            "/pretrained_models.json",
            files=files,
            data={"job_name": "py", "image_type": "grayscale", "width": "28", "height": "28"},
        )
        assert r.status_code == 201, r.text
        form = {**TRAIN, "dataset": dataset, "method": "pretrained", "pretrained_networks": r.json()["job_id"]}
        created = client.post("/models/images/classification.json", data=form)
        assert created.status_code == 201, created.text
        studio = client.app.state.studio
        job = studio.scheduler.wait(created.json()["job_id"], 240)
        job_dir = Path(studio.store.job_dir(job.id))
        assert job.status == "Done", (job_dir / "log.txt").read_text()[-3000:]
        assert (job_dir / "consent_tune_layer.py").is_file()
        one = client.post(
            f"{CLASSIFY}/classify_one.json", data={"job_id": job.id}, files={"image_file": ("a.png", png(size=28))}
        )
        assert one.status_code == 200 and {p[0] for p in one.json()["predictions"]} == {"dark", "light"}, one.text
        promoted = client.post(f"/models/{job.id}/to_pretrained", data={"job_name": "promoted"})
        assert promoted.status_code == 201, promoted.text
        assert (Path(studio.store.job_dir(promoted.json()["job_id"])) / "python_layer.py").is_file()
        inference.CACHE.clear()
        pids = ran_in(tmp_path)
        assert len(pids) >= 4 and os.getpid() not in pids  # upload check, training, classification, promotion
        assert "consent_tune_layer" not in sys.modules


def serve_folder(folder: Path, module: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "deploy.prototxt").write_text(net_text(module))
    (folder / "weights.caffemodel").write_bytes(tiny_weights(folder / "w"))
    (folder / "labels.txt").write_text("dark\nlight\n")
    (folder / f"{module}.py").write_bytes(layer_file(folder))
    return folder


def test_caffe_serve_needs_the_flag_for_a_python_layer(tmp_path, monkeypatch):
    from caffe.serve import ServeOptions, create_app, load_model
    from caffe.tools import serve_tools, studio_tools

    folder = serve_folder(tmp_path / "model", "consent_serve_layer")
    monkeypatch.syspath_prepend(str(folder))  # where the operator keeps the module
    with pytest.raises(CaffeError, match=f"layer 'scale'.*{FLAG}"):
        load_model(f"py={folder}")
    assert not (folder / "marker").exists()
    for parser in (serve_tools.build_parser(), studio_tools.build_parser()):
        assert parser.parse_args([]).allow_python_layers is False
        assert parser.parse_args([FLAG]).allow_python_layers is True
    model = load_model(f"py={folder}", allow_python_layers=True)
    try:
        with TestClient(create_app([model], ServeOptions(allow_python_layers=True))) as client:
            r = client.post("/predict", files={"file": ("a.png", png(), "image/png")})
            assert r.status_code == 200, r.text
            assert {p["label"] for p in r.json()["predictions"]} == {"dark", "light"}
    finally:
        sys.modules.pop("consent_serve_layer", None)
    assert ran_in(folder) == [os.getpid()]  # the operator's own model: run as Caffe runs it


def test_a_net_with_python_layers_is_never_built_in_the_server(tmp_path):
    from caffe.studio import layer_worker

    (tmp_path / "deploy.prototxt").write_text(net_text("consent_direct_layer"))
    (tmp_path / "layer.py").write_bytes(layer_file(tmp_path))
    with pytest.raises(layer_worker.PythonLayerError, match="only in a worker"):
        inference.build_net(tmp_path / "deploy.prototxt", None, tmp_path / "layer.py")
    assert not (tmp_path / "marker").exists()
