"""Studio pretrained models: upload (folder layout, validation of prototxt/weights/labels/Python layer),
a deploy net derived from a train_val, promotion of a trained model's snapshot, list pages and delete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import asset
from test_studio_inference import TINY_NET, make_client, make_model_job, tiny_weights

import caffe
from caffe.protoio import read_net_param

SQ = "models/squeezenet_v1.0_deepcompression"
SQ_WEIGHTS = f"{SQ}/squeezenet_v1.0_deepcompression_decoded.caffemodel"
LENET = "models/lenet_mnist_newformat"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("studio_pre")
    with make_client(tmp, [asset("."), tmp], allow_python_layers=True) as client:  # uploads with Python layers
        yield client, tmp


def _post(client, data=None, **files):
    """POST /pretrained_models.json with files given as name=(filename, bytes)."""
    return client.post("/pretrained_models.json", data={"job_name": "m", **(data or {})}, files=files)


def _lenet(client, deploy: str | None = None, **extra):
    files = {
        "weights_file": ("w.caffemodel", asset(f"{LENET}/lenet_iter_10000.caffemodel").read_bytes()),
        "deploy_file": ("deploy.prototxt", deploy or asset(f"{LENET}/lenet.prototxt").read_text()),
    }
    files.update(extra)
    return _post(client, {"image_type": "grayscale", "width": "28", "height": "28"}, **files)


def _names(client) -> list[str]:
    return [r["name"] for r in client.get("/pretrained_models.json").json()["pretrained_models"]]


def test_upload_layout_and_pages(env):
    client, _ = env
    labels = b"".join(f"digit {i}\n".encode() for i in range(10))
    r = _lenet(client, labels_file=("labels.txt", labels), python_layer_file=("layer.py", b"X = 1\n"))
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    store = client.app.state.studio.store
    job_dir = Path(store.job_dir(job_id))
    files = sorted(p.name for p in job_dir.iterdir())
    assert files == [
        "deploy.prototxt",
        "info.json",
        "labels.txt",
        "original.prototxt",
        "python_layer.py",
        "weights.caffemodel",
    ]
    assert (job_dir / "weights.caffemodel").read_bytes() == asset(f"{LENET}/lenet_iter_10000.caffemodel").read_bytes()
    info = json.loads((job_dir / "info.json").read_text())
    assert info["input_shape"] == [64, 1, 28, 28] and info["outputs"] == 10 and info["channels"] == 1
    assert info["parameters"] == 20 * 25 + 20 + 50 * 20 * 25 + 50 + 500 * 800 + 500 + 10 * 500 + 10
    assert store.get(job_id).status == "Done"
    listing = client.get("/pretrained_models")
    assert listing.status_code == 200 and f'id="pretrained-{job_id}"' in listing.text
    show = client.get(f"/pretrained_models/{job_id}")
    assert show.status_code == 200 and "python_layer.py" in show.text and 'id="pretrained-classify-one"' in show.text
    assert client.get(f"/pretrained_models/{job_id}.json").json()["info"]["labels_file"] == "labels.txt"
    form = client.get("/pretrained_models/new")
    for element_id in (
        "weights-file",
        "model-def-file",
        "deploy-file",
        "labels-file",
        "python-layer-file",
        "mean-file",
        "mean-values",
        "image-type",
        "resize-mode",
        "width",
        "height",
        "job-name",
    ):
        assert f'id="{element_id}"' in form.text and f'for="{element_id}"' in form.text  # every field is labelled
    assert 'id="pretrained-submit"' in form.text
    # LeNet classifies a real digit with it (the net's own Softmax output is used as it is)
    one = client.post(
        "/models/images/classification/classify_one.json",
        data={"job_id": job_id},
        files={"image_file": ("d.png", _mnist_digit_png())},
    )
    assert one.status_code == 200 and one.json()["predictions"][0][0] == f"digit {_MNIST_LABEL}"


_MNIST_LABEL = 7  # the first test-set image


def _mnist_digit_png() -> bytes:
    """The first MNIST test image as PNG (its label is 7)."""
    import gzip
    import io

    from PIL import Image

    with gzip.open(asset("mnist/t10k-images-idx3-ubyte.gz")) as f:
        raw = f.read(16 + 784)[16:]
    buf = io.BytesIO()
    Image.fromarray(np.frombuffer(raw, np.uint8).reshape(28, 28)).save(buf, "PNG")
    with gzip.open(asset("mnist/t10k-labels-idx1-ubyte.gz")) as f:
        labels = f.read(9)
    assert labels[8] == _MNIST_LABEL
    return buf.getvalue()


def test_deploy_derived_from_train_val_matches_the_given_deploy(env):
    """Only the train_val (the guide's upload): the derived deploy net gives softmax(the reference deploy's scores)."""
    client, _ = env
    r = _post(
        client,
        {"job_name": "sq from train_val"},
        weights_file=("w.caffemodel", asset(SQ_WEIGHTS).read_bytes()),
        model_def_file=("train_val.prototxt", asset(f"{SQ}/SqueezeNet_trainval.prototxt").read_bytes()),
    )
    assert r.status_code == 201, r.text
    job_dir = Path(client.app.state.studio.store.job_dir(r.json()["job_id"]))
    assert (job_dir / "original.prototxt").read_text() == asset(f"{SQ}/SqueezeNet_trainval.prototxt").read_text()
    info = json.loads((job_dir / "info.json").read_text())
    assert info["input_shape"] == [1, 3, 227, 227]  # the data layer's crop_size
    assert info["mean_values"] == [104.0, 117.0, 123.0]  # the data layer's mean_value
    derived = caffe.Net(str(job_dir / "deploy.prototxt"), caffe.TEST, weights=str(job_dir / "weights.caffemodel"))
    given = caffe.Net(str(asset(f"{SQ}/SqueezeNet_deploy.prototxt")), caffe.TEST, weights=str(asset(SQ_WEIGHTS)))
    x = np.random.default_rng(0).uniform(-100, 100, (1, 3, 227, 227)).astype(np.float32)
    scores = given.forward(data=x)[given.outputs[0]].reshape(1, -1).astype(np.float64)
    probs = derived.forward(data=x)[derived.outputs[0]].reshape(1, -1)
    expected = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-7)
    assert not any(
        layer.type in ("Data", "SoftmaxWithLoss", "Accuracy")
        for layer in read_net_param(job_dir / "deploy.prototxt").layer
    )


def test_bad_prototxt_names_its_line(env):
    client, _ = env
    text = asset(f"{LENET}/lenet.prototxt").read_text().splitlines()
    text[4] = "  bogus_field: 3"
    r = _lenet(client, "\n".join(text))
    assert r.status_code == 400
    assert "deploy.prototxt:5" in r.json()["detail"] and "bogus_field" in r.json()["detail"]
    page = client.post(
        "/pretrained_models",
        data={"job_name": "page"},
        headers={"Accept": "text/html"},
        files={"weights_file": ("w", b"x"), "deploy_file": ("d", b"layer {")},
    )
    assert page.status_code == 400 and 'id="pretrained-error"' in page.text and "deploy.prototxt:1" in page.text
    assert "page" not in _names(client)


def test_weights_mismatch_is_reported(env):
    client, _ = env
    before = len(_names(client))
    renamed = asset(f"{LENET}/lenet.prototxt").read_text().replace('name: "ip2"', 'name: "ip2_new"')
    r = _lenet(client, renamed)
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert "no weights for layer(s) ip2_new" in detail and "ip2" in detail.split("the weights file has:")[1]
    wrong_net = _post(
        client,
        weights_file=("w.caffemodel", asset(f"{LENET}/lenet_iter_10000.caffemodel").read_bytes()),
        deploy_file=("d.prototxt", asset(f"{SQ}/SqueezeNet_deploy.prototxt").read_bytes()),
    )
    assert wrong_net.status_code == 400
    assert wrong_net.json()["detail"].startswith("weights.caffemodel: cannot copy param 0 weights from layer 'conv1'")
    garbage = _post(
        client,
        weights_file=("w.caffemodel", b"\xff\x00 not a caffemodel"),
        deploy_file=("d.prototxt", asset(f"{LENET}/lenet.prototxt").read_bytes()),
    )
    assert garbage.status_code == 400 and garbage.json()["detail"].startswith("weights.caffemodel: not a valid")
    assert len(_names(client)) == before  # nothing left behind
    jobs_dir = client.app.state.studio.config.jobs_dir
    assert sorted(p.name for p in jobs_dir.iterdir() if p.is_dir()) == sorted(
        j.id for j in client.app.state.studio.store.list()
    )


def test_other_upload_refusals(env):
    client, _ = env
    labels = _lenet(client, labels_file=("labels.txt", b"a\nb\nc\n"))
    assert labels.status_code == 400 and "3 labels" in labels.json()["detail"]
    python = _lenet(client, python_layer_file=("l.py", b"def f(:\n    pass\n"))
    assert python.status_code == 400 and "python_layer.py:1" in python.json()["detail"]
    no_weights = _post(client, deploy_file=("d.prototxt", asset(f"{LENET}/lenet.prototxt").read_bytes()))
    assert no_weights.status_code == 400 and "weights_file" in no_weights.json()["detail"]
    no_net = _post(client, weights_file=("w.caffemodel", b"x"))
    assert no_net.status_code == 400 and "network" in no_net.json()["detail"]
    bad_size = client.post(
        "/pretrained_models.json",
        data={"job_name": "x", "width": "-3"},
        files={"weights_file": ("w", b"x"), "deploy_file": ("d", b"name: 'n'")},
    )
    assert bad_size.status_code == 400 and "width" in bad_size.json()["detail"]
    # found by scripts/fuzz.py: a net whose input and output is a scalar blob was an IndexError (500)
    scalar = _lenet(client, deploy='name: "" layer { name: "" type: "Input" top: "a" }')
    assert scalar.status_code == 400 and "input 'a' has shape []" in scalar.json()["detail"], scalar.text


def test_promote_model_snapshot(env):
    client, tmp = env
    store = client.app.state.studio.store
    model_id = make_model_job(store, tmp)
    model_dir = Path(store.job_dir(model_id))
    r = client.post(f"/models/{model_id}/to_pretrained", data={"snapshot_epoch": "1"})
    assert r.status_code == 201, r.text
    job = store.get(r.json()["job_id"])
    assert job.kind == "pretrained" and job.parent == model_id and job.status == "Done"
    job_dir = Path(store.job_dir(job.id))
    assert (job_dir / "weights.caffemodel").read_bytes() == (model_dir / "snapshot_iter_10.caffemodel").read_bytes()
    for name in ("deploy.prototxt", "original.prototxt", "labels.txt", "mean.binaryproto"):
        assert (job_dir / name).read_bytes() == (model_dir / name).read_bytes(), name
    info = json.loads((job_dir / "info.json").read_text())
    assert info["snapshot_epoch"] == 1.0 and (info["width"], info["height"]) == (24, 24)
    last = client.post(f"/models/{model_id}/to_pretrained", data={"job_name": "last one"})
    last_dir = Path(store.job_dir(last.json()["job_id"]))
    assert (last_dir / "weights.caffemodel").read_bytes() == (model_dir / "snapshot_iter_20.caffemodel").read_bytes()
    # the promoted model classifies exactly as the model job's snapshot does
    img = asset("dolphins-and-seahorses/seahorse/image_0010.jpg").read_bytes()
    url = "/models/images/classification/classify_one.json"
    a = client.post(url, data={"job_id": model_id}, files={"image_file": ("a.jpg", img)}).json()
    b = client.post(url, data={"job_id": last.json()["job_id"]}, files={"image_file": ("a.jpg", img)}).json()
    assert a["predictions"] == b["predictions"]
    bad = client.post(f"/models/{model_id}/to_pretrained", data={"snapshot_epoch": "9"})
    assert bad.status_code == 404
    dataset = store.create("dataset", "d", {})
    assert client.post(f"/models/{dataset.id}/to_pretrained").status_code == 400


def test_delete(env):
    client, tmp = env
    _, weights = tiny_weights(tmp / "del")
    r = _post(
        client,
        {"job_name": "to delete"},
        weights_file=("w", weights.read_bytes()),
        deploy_file=("d", TINY_NET.encode()),
    )
    job_id = r.json()["job_id"]
    store = client.app.state.studio.store
    user = store.create("model", "fine-tune", {}, parent=job_id)
    store.update(user.id, status="Running")
    busy = client.delete(f"/pretrained_models/{job_id}")
    assert busy.status_code == 409 and user.id in busy.json()["detail"]
    store.update(user.id, status="Done")
    assert client.delete(f"/pretrained_models/{job_id}").json() == {"job_id": job_id, "deleted": True}
    assert not Path(store.job_dir(job_id)).exists()
    assert client.delete(f"/pretrained_models/{job_id}").status_code == 404
    assert client.get(f"/pretrained_models/{job_id}.json").status_code == 404
    assert client.delete(f"/pretrained_models/{user.id}").status_code == 404  # not a pretrained job
    other = _post(
        client,
        {"job_name": "form delete"},
        weights_file=("w", weights.read_bytes()),
        deploy_file=("d", TINY_NET.encode()),
    ).json()["job_id"]
    page = client.post(f"/pretrained_models/{other}/delete", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/pretrained_models"
    assert "form delete" not in _names(client)


NEGATE = b"""
import caffe


class Negate(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = -bottom[0].data
"""


def test_python_layer_file_is_used(env):
    """A net whose Python layer (module 'studio_negate_layer') comes from the uploaded file: negating the scores
    swaps the two classes' probabilities."""
    client, tmp = env
    _, weights = tiny_weights(tmp / "py")
    with_layer = TINY_NET.replace(
        'bottom: "fc" top: "prob"',
        'bottom: "neg" top: "prob" }\nlayer { name: "neg" type: "Python" bottom: "fc" top: "neg" '
        'python_param { module: "studio_negate_layer" layer: "Negate" }',
    )
    # Caffe needs the Python layer before the Softmax that reads it: move the Softmax last
    lines = with_layer.strip().splitlines()
    softmax = next(ln for ln in lines if '"Softmax"' in ln)
    with_layer = "\n".join([ln for ln in lines if ln != softmax] + [softmax]) + "\n"
    ids = []
    for deploy, py in ((TINY_NET, None), (with_layer, NEGATE)):
        files = {
            "weights_file": ("w", weights.read_bytes()),
            "deploy_file": ("d", deploy.encode()),
            "labels_file": ("l.txt", b"dolphin\nseahorse\n"),
        }
        if py:
            files["python_layer_file"] = ("negate.py", py)
        r = _post(client, {"job_name": "py", "mean_values": "100,110,120", "width": "24", "height": "24"}, **files)
        assert r.status_code == 201, r.text
        ids.append(r.json()["job_id"])
    img = asset("dolphins-and-seahorses/dolphin/image_0005.jpg").read_bytes()
    url = "/models/images/classification/classify_one.json"
    plain, negated = (
        dict(client.post(url, data={"job_id": i}, files={"image_file": ("a.jpg", img)}).json()["predictions"])
        for i in ids
    )
    assert plain["dolphin"] != plain["seahorse"]
    assert negated["dolphin"] == pytest.approx(plain["seahorse"], abs=0.011)
    assert negated["seahorse"] == pytest.approx(plain["dolphin"], abs=0.011)


@pytest.mark.parametrize("mode", ["none", "pixel"])
def test_a_promoted_model_keeps_its_mean_subtraction(env, mode):
    """A model trained without a mean (or with the pixel mean) classifies the same once promoted: the promotion
    keeps its mean subtraction rather than subtracting the mean image it copied."""
    client, tmp = env
    store = client.app.state.studio.store
    model_id = make_model_job(store, tmp)
    info_file = Path(store.job_dir(model_id)) / "info.json"
    info = json.loads(info_file.read_text())
    img = asset("dolphins-and-seahorses/seahorse/image_0010.jpg").read_bytes()
    url = "/models/images/classification/classify_one.json"
    with_image_mean = client.post(url, data={"job_id": model_id}, files={"image_file": ("a.jpg", img)}).json()
    info_file.write_text(json.dumps({**info, "mean subtraction": mode}))
    r = client.post(f"/models/{model_id}/to_pretrained", data={"job_name": f"mean {mode}"})
    assert r.status_code == 201, r.text
    promoted = r.json()["job_id"]
    assert (Path(store.job_dir(promoted)) / "mean.binaryproto").is_file() == (mode != "none")
    a = client.post(url, data={"job_id": model_id}, files={"image_file": ("a.jpg", img)}).json()
    b = client.post(url, data={"job_id": promoted}, files={"image_file": ("a.jpg", img)}).json()
    assert a["predictions"] != with_image_mean["predictions"]  # the mode matters for this model
    assert b["predictions"] == a["predictions"]
