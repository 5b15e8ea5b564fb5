"""Studio inference: classify one (SqueezeNet on cat.jpg), visualizations, classify many with accuracy and
confusion matrix, top-N, snapshots of a model job, and refusals (bad uploads, URLs, path traversal)."""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import asset
from fastapi.testclient import TestClient
from PIL import Image

import caffe
from caffe.proto import caffe_pb2 as pb
from caffe.studio import inference

SQUEEZENET = "models/squeezenet_v1.0_deepcompression"
CAT = "caffe-ref/examples/images/cat.jpg"
CLASSIFY = "/models/images/classification"
TINY_MEAN = (100.0, 110.0, 120.0)
TINY_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 24 dim: 24 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 5 stride: 2 weight_filler { type: "gaussian" std: 0.005 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


# --------------------------------------------------------------------------------------- helpers (shared)
def make_client(tmp: Path, roots: list[Path], **config) -> TestClient:
    """A studio app over ``tmp`` with the inference router (included here until app.py includes it); ``config``:
    more studio settings (``allow_python_layers=True``)."""
    from caffe.studio import routes_inference
    from caffe.studio.app import create_app

    app = create_app({"jobs_dir": tmp / "jobs", "devices": ["cpu"], "data_roots": [str(r) for r in roots], **config})
    if not any(getattr(r, "path", "") == "/pretrained_models/new" for r in app.routes):
        app.include_router(routes_inference.router)
    return TestClient(app)


def tiny_weights(folder: Path, seed: int = 3) -> tuple[Path, Path]:
    """The tiny two-class net's deploy file and a .caffemodel of seeded random weights."""
    folder.mkdir(parents=True, exist_ok=True)
    deploy = folder / "tiny_deploy.prototxt"
    deploy.write_text(TINY_NET)
    caffe.set_random_seed(seed)
    net = caffe.Net(str(deploy), caffe.TEST)
    weights = folder / f"tiny_{seed}.caffemodel"
    net.save(str(weights))
    return deploy, weights


def upload_tiny(client: TestClient, folder: Path, seed: int = 3) -> str:
    _, weights = tiny_weights(folder, seed)
    r = client.post(
        "/pretrained_models.json",
        data={
            "job_name": "tiny",
            "width": "24",
            "height": "24",
            "mean_values": ",".join(map(str, TINY_MEAN)),
        },
        files={
            "weights_file": ("w.caffemodel", weights.read_bytes()),
            "deploy_file": ("d.prototxt", TINY_NET),
            "labels_file": ("labels.txt", b"dolphin\nseahorse\n"),
        },
    )
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def expected_probs(deploy: Path, weights: Path, images: list[Path], size: int = 24, mean=None) -> np.ndarray:
    """Independent preprocessing (PIL squash, BGR, minus mean) and forward through caffe.Net."""
    net = caffe.Net(str(deploy), caffe.TEST, weights=str(weights))
    mean = np.array(TINY_MEAN, np.float32)[:, None, None] if mean is None else mean
    out = []
    for p in images:
        im = np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
        x = im[:, :, ::-1].transpose(2, 0, 1) - mean
        out.append(net.forward(data=x[None])["prob"][0].copy())
    return np.array(out)


def small_folder(tmp: Path, per_class: int = 3) -> Path:
    """dolphin/ and seahorse/ with ``per_class`` images each (the grayscale dolphin among them)."""
    src = asset("dolphins-and-seahorses")
    root = tmp / "labelled"
    for cls, names in (
        ("dolphin", ["image_0042.jpg", "image_0001.jpg", "image_0002.jpg"]),
        ("seahorse", ["image_0001.jpg", "image_0002.jpg", "image_0003.jpg"]),
    ):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for n in names[:per_class]:
            shutil.copy(src / cls / n, root / cls / n)
    return root


# --------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("studio_inf")
    assets = asset(".")
    with make_client(tmp, [assets, tmp]) as client:
        yield client, tmp


@pytest.fixture(scope="module")
def squeezenet(env):
    client, _ = env
    sq = asset(SQUEEZENET)
    r = client.post(
        "/pretrained_models.json",
        data={"job_name": "SqueezeNet", "width": "227", "height": "227"},
        files={
            "weights_file": ("w.caffemodel", (sq / "squeezenet_v1.0_deepcompression_decoded.caffemodel").read_bytes()),
            "deploy_file": ("deploy.prototxt", (sq / "SqueezeNet_deploy.prototxt").read_bytes()),
            "model_def_file": ("train_val.prototxt", (sq / "SqueezeNet_trainval.prototxt").read_bytes()),
            "labels_file": ("synset_words.txt", asset("models/imagenet-common/synset_words.txt").read_bytes()),
        },
    )
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


@pytest.fixture(scope="module")
def tiny(env):
    client, tmp = env
    return upload_tiny(client, tmp / "tiny")


def reference_top5(name: str = "cat.jpg") -> list[tuple[float, str]]:
    lines = asset(f"{SQUEEZENET}/REFERENCE_top5_numpy.txt").read_text().splitlines()
    start = lines.index(f"== {name}") + 1
    return [(float(ln.split(" ", 1)[0]), ln.split(" ", 1)[1]) for ln in lines[start : start + 5]]


# --------------------------------------------------------------------------------------- classify one
def test_classify_one_squeezenet_matches_reference(env, squeezenet):
    """The reference's preprocessing (PIL bilinear 227x227, BGR, mean 104,117,123 from the train_val's data
    layer) gives its top-1; the percent ratios of the top-5 equal exp() of the reference logit differences."""
    client, _ = env
    r = client.post(
        f"{CLASSIFY}/classify_one.json",
        data={"job_id": squeezenet},
        files={"image_file": ("cat.jpg", asset(CAT).read_bytes(), "image/jpeg")},
    )
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    ref = reference_top5()
    assert len(preds) == 5
    assert [label for label, _ in preds] == [label for _, label in ref]
    p0, l0 = preds[0][1], ref[0][0]
    for (_, p), (lk, _) in zip(preds, ref, strict=True):  # percents have 2 decimals
        assert p == pytest.approx(p0 * math.exp(lk - l0), abs=0.011)


def test_classify_one_page_and_visualizations(env, squeezenet):
    client, _ = env
    r = client.post(
        f"{CLASSIFY}/classify_one.json",
        data={"job_id": squeezenet, "show_visualizations": "1"},
        files={"image_file": ("cat.jpg", asset(CAT).read_bytes())},
    )
    assert r.status_code == 200, r.text
    layers = r.json()["visualizations"]
    from caffe.protoio import read_net_param

    deploy = read_net_param(asset(f"{SQUEEZENET}/SqueezeNet_deploy.prototxt"))
    not_in_place = [x.name for x in deploy.layer if not set(x.top) & set(x.bottom) and x.type != "Input"]
    assert [v["layer"] for v in layers] == not_in_place
    for v in layers:  # every layer has a PNG of its activations and sane statistics
        png = base64.b64decode(v["activation"]["image"].split(",", 1)[1])
        assert Image.open(io.BytesIO(png)).format == "PNG"
        assert sum(v["activation"]["hist"]["counts"]) == int(np.prod(v["shape"][1:]))
    conv1 = layers[0]
    assert conv1["layer"] == "conv1" and conv1["weights"]["shape"] == [96, 3, 7, 7]
    assert conv1["weights"]["params"] == 96 * 3 * 7 * 7 + 96
    loaded = caffe.Net(
        str(asset(f"{SQUEEZENET}/SqueezeNet_deploy.prototxt")),
        caffe.TEST,
        weights=str(asset(f"{SQUEEZENET}/squeezenet_v1.0_deepcompression_decoded.caffemodel")),
    )
    w = loaded.params["conv1"][0].data
    assert conv1["weights"]["mean"] == pytest.approx(float(w.mean()), rel=1e-4)
    assert conv1["weights"]["std"] == pytest.approx(float(w.std()), rel=1e-4)
    assert conv1["weights"]["image"].startswith("data:image/png;base64,")
    # the HTML page shows the same top-5 and one block per layer
    page = client.post(
        f"{CLASSIFY}/classify_one",
        data={"job_id": squeezenet, "show_visualizations": "1"},
        files={"image_file": ("cat.jpg", asset(CAT).read_bytes())},
        headers={"Accept": "text/html"},
    )
    assert page.status_code == 200
    assert page.text.count('class="vis-layer"') == len(layers)
    assert "kit fox" in page.text and 'id="predictions"' in page.text


def test_classify_one_form_page(env, squeezenet):
    client, _ = env
    r = client.get(f"{CLASSIFY}/classify_one", params={"job_id": squeezenet})
    assert r.status_code == 200
    for element_id in (
        "job-id",
        "snapshot-epoch",
        "image-file",
        "image-url",
        "show-visualizations",
        "classify-one-submit",
    ):
        assert f'id="{element_id}"' in r.text
    assert f'value="{squeezenet}" data-epochs="[]" selected' in r.text


def test_inference_forms_without_data_roots(tmp_path, monkeypatch):
    """A studio with no data_roots configured shows every inference form, naming the default root (the
    working directory) as the allowed folder."""
    from caffe.studio.app import create_app

    monkeypatch.chdir(tmp_path)
    with TestClient(create_app({"jobs_dir": tmp_path / "jobs", "devices": ["cpu"]})) as client:
        for page in ("classify_one", "classify_many", "top_n"):
            r = client.get(f"{CLASSIFY}/{page}")
            assert r.status_code == 200, (page, r.text[:300])
            if page != "classify_one":  # the forms with a server folder field name the roots
                assert f"Allowed folders: {tmp_path.resolve()}." in r.text


def test_classify_one_refusals(env, tiny):
    client, _ = env
    url = f"{CLASSIFY}/classify_one.json"
    not_image = client.post(url, data={"job_id": tiny}, files={"image_file": ("x.jpg", b"this is not an image")})
    assert not_image.status_code == 415 and "not an image" in not_image.json()["detail"]
    assert client.post(url, data={"job_id": tiny}).status_code == 400  # no image at all
    ftp = client.post(url, data={"job_id": tiny, "image_url": "ftp://example.com/a.jpg"})
    assert ftp.status_code == 400 and "http" in ftp.json()["detail"]
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = client.post(url, data={"job_id": tiny, "image_url": f"http://127.0.0.1:{port}/a.jpg"})
    assert down.status_code == 400 and "cannot fetch" in down.json()["detail"]
    outside = client.post(url, data={"job_id": tiny, "image_path": "/etc/passwd"})
    assert outside.status_code == 403
    traversal = client.post(url, data={"job_id": tiny, "image_path": str(asset(".")) + "/../../etc/passwd"})
    assert traversal.status_code == 403 and ".." in traversal.json()["detail"]
    unknown = client.post(
        url, data={"job_id": "20000101-000000-abcd"}, files={"image_file": ("c.jpg", asset(CAT).read_bytes())}
    )
    assert unknown.status_code == 404


def test_classify_one_server_path_and_url(env, tiny):
    """A server path inside the roots and an http URL give the same answer as the upload."""
    import http.server
    import threading

    client, _ = env
    img = asset("dolphins-and-seahorses/seahorse/image_0005.jpg")
    url = f"{CLASSIFY}/classify_one.json"
    by_upload = client.post(url, data={"job_id": tiny}, files={"image_file": ("a.jpg", img.read_bytes())}).json()
    by_path = client.post(url, data={"job_id": tiny, "image_path": str(img)}).json()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(img.parent), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        by_url = client.post(
            url, data={"job_id": tiny, "image_url": f"http://127.0.0.1:{server.server_port}/{img.name}"}
        ).json()
    finally:
        server.shutdown()
        server.server_close()
    assert by_upload["predictions"] == by_path["predictions"] == by_url["predictions"]


# --------------------------------------------------------------------------------------- classify many
def _hand_count(probs: np.ndarray, truth: list[int]) -> tuple[float, list[list[int]], dict[str, float]]:
    confusion = [[0, 0], [0, 0]]
    for p, t in zip(probs, truth, strict=True):
        confusion[t][int(np.argmax(p))] += 1
    correct = sum(confusion[i][i] for i in range(2))
    per_class = {
        name: round(100.0 * confusion[i][i] / sum(confusion[i]), 2) for i, name in enumerate(("dolphin", "seahorse"))
    }
    return round(100.0 * correct / len(truth), 2), confusion, per_class


def test_classify_many_folder_accuracy_and_confusion(env, tiny):
    client, tmp = env
    folder = small_folder(tmp)
    r = client.post(f"{CLASSIFY}/classify_many.json", data={"job_id": tiny, "image_folder": str(folder)})
    assert r.status_code == 200, r.text
    body = r.json()
    images = sorted(folder.glob("dolphin/*.jpg")) + sorted(folder.glob("seahorse/*.jpg"))
    truth = [0, 0, 0, 1, 1, 1]
    assert list(body["classifications"]) == [str(p) for p in images]
    probs = expected_probs(tmp / "tiny" / "tiny_deploy.prototxt", tmp / "tiny" / "tiny_3.caffemodel", images)
    for p, row in zip(probs, body["classifications"].values(), strict=True):
        assert [label for label, _ in row] == [("dolphin", "seahorse")[i] for i in np.argsort(-p)]
        assert [pct for _, pct in row] == pytest.approx(sorted(100 * p, reverse=True), abs=0.011)
    top1, confusion, per_class = _hand_count(probs, truth)
    assert body["top1_accuracy"] == top1
    assert body["top5_accuracy"] == 100.0  # two classes: the truth is always in the top 5
    assert body["confusion_matrix"] == confusion
    assert {k: v["accuracy"] for k, v in body["per_class_accuracy"].items()} == per_class
    # the same images as an uploaded list (absolute paths, label names or numbers) give the same evaluation
    listing = "\n".join(
        f"{p} {t if i % 2 else ('dolphin', 'seahorse')[t]}" for i, (p, t) in enumerate(zip(images, truth, strict=True))
    )
    r2 = client.post(
        f"{CLASSIFY}/classify_many.json", data={"job_id": tiny}, files={"image_list": ("list.txt", listing.encode())}
    )
    assert r2.status_code == 200, r2.text
    assert r2.json()["confusion_matrix"] == confusion and r2.json()["top1_accuracy"] == top1
    # and the page shows the matrix (Plotly heat map and table) and the per-class table
    page = client.post(
        f"{CLASSIFY}/classify_many", data={"job_id": tiny, "image_folder": str(folder)}, headers={"Accept": "text/html"}
    )
    assert page.status_code == 200
    assert 'id="confusion-matrix"' in page.text and 'id="per-class-accuracy"' in page.text
    assert f'id="accuracy-top1">{top1:.2f}%' in page.text


def test_classify_many_list_without_labels_and_limits(env, tiny):
    client, tmp = env
    folder = small_folder(tmp)
    listing = "dolphin/image_0001.jpg\n# a comment\n\nseahorse/image_0003.jpg\nseahorse/image_0001.jpg\n"
    r = client.post(
        f"{CLASSIFY}/classify_many.json",
        data={"job_id": tiny, "image_folder": str(folder), "num_test_images": "2"},
        files={"image_list": ("list.txt", listing.encode())},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body["classifications"]) == [
        str(folder / "dolphin/image_0001.jpg"),
        str(folder / "seahorse/image_0003.jpg"),
    ]
    assert "confusion_matrix" not in body  # no ground truth


def test_classify_many_path_traversal_refused(env, tiny):
    client, tmp = env
    folder = small_folder(tmp)
    url = f"{CLASSIFY}/classify_many.json"
    for listing in ("../../../../etc/passwd 0\n", "dolphin/../../../../../etc/passwd\n", "/etc/passwd 1\n"):
        r = client.post(
            url,
            data={"job_id": tiny, "image_folder": str(folder)},
            files={"image_list": ("list.txt", listing.encode())},
        )
        assert r.status_code == 403, (listing, r.text)
        assert "image_list:1" in r.json()["detail"]
    assert client.post(url, data={"job_id": tiny, "image_folder": "/etc"}).status_code == 403
    assert client.post(url, data={"job_id": tiny, "image_folder": f"{folder}/../.."}).status_code == 403
    missing = client.post(
        url,
        data={"job_id": tiny, "image_folder": str(folder)},
        files={"image_list": ("l.txt", b"dolphin/nope.jpg 0\n")},
    )
    assert missing.status_code == 404 and "nope.jpg" in missing.json()["detail"]
    bad_class = tmp / "bad_classes"
    (bad_class / "whale").mkdir(parents=True, exist_ok=True)
    r = client.post(url, data={"job_id": tiny, "image_folder": str(bad_class)})
    assert r.status_code == 400 and "whale" in r.json()["detail"]


def test_top_n(env, tiny):
    client, tmp = env
    folder = small_folder(tmp)
    r = client.post(f"{CLASSIFY}/top_n.json", data={"job_id": tiny, "image_folder": str(folder), "top_n": "2"})
    assert r.status_code == 200, r.text
    images = sorted(folder.glob("dolphin/*.jpg")) + sorted(folder.glob("seahorse/*.jpg"))
    probs = expected_probs(tmp / "tiny" / "tiny_deploy.prototxt", tmp / "tiny" / "tiny_3.caffemodel", images)
    for c, entry in enumerate(r.json()["top_n"]):
        assert entry["label"] == ("dolphin", "seahorse")[c]
        best = np.argsort(-probs[:, c], kind="stable")[:2]
        assert [p for p, _ in entry["images"]] == [str(images[i]) for i in best]
    page = client.post(
        f"{CLASSIFY}/top_n",
        data={"job_id": tiny, "image_folder": str(folder), "top_n": "2"},
        headers={"Accept": "text/html"},
    )
    assert page.status_code == 200 and page.text.count("<figure>") == 4 and "data:image/png;base64," in page.text


# --------------------------------------------------------------------------------------- model jobs
def model_mean_image() -> np.ndarray:
    """The model job's mean image: TINY_MEAN per channel plus a left-to-right ramp (so pixel != image mean)."""
    ramp = np.linspace(-40, 40, 24, dtype=np.float32)[None, None, :]
    return np.array(TINY_MEAN, np.float32)[:, None, None] + np.broadcast_to(ramp, (3, 24, 24))


def make_model_job(store, tmp: Path, iters=(10, 20)) -> str:
    """A finished model job as routes_models leaves it: deploy, snapshots, labels, mean (of the tiny net)."""
    dataset = store.create("dataset", "d", {"resize_width": 24, "resize_height": 24, "resize_channels": 3})
    job = store.create("model", "m", {"train_epochs": 2}, parent=dataset.id)
    job_dir = Path(store.job_dir(job.id))
    (job_dir / "deploy.prototxt").write_text(TINY_NET)
    (job_dir / "original.prototxt").write_text(TINY_NET)
    for i, it in enumerate(iters):
        _, weights = tiny_weights(tmp / "snapshots", seed=10 + i)
        shutil.copy(weights, job_dir / f"snapshot_iter_{it}.caffemodel")
    (job_dir / "labels.txt").write_text("dolphin\nseahorse\n")
    mean = pb.BlobProto()
    mean.shape.dim.extend([1, 3, 24, 24])
    mean.data.extend(model_mean_image().ravel().tolist())
    (job_dir / "mean.binaryproto").write_bytes(mean.SerializeToString())
    (job_dir / "info.json").write_text(
        json.dumps({"iterations per epoch": 10, "image dimensions": [24, 24, 3], "mean subtraction": "image"})
    )
    store.update(job.id, status="Done")
    return job.id


def test_model_job_snapshots_by_epoch(env):
    client, tmp = env
    store = client.app.state.studio.store
    job_id = make_model_job(store, tmp)
    img = asset("dolphins-and-seahorses/dolphin/image_0003.jpg")
    url = f"{CLASSIFY}/classify_one.json"
    answers = {}
    for epoch, seed in (("1", 10), ("2", 11), ("", 11)):
        r = client.post(
            url, data={"job_id": job_id, "snapshot_epoch": epoch}, files={"image_file": ("a.jpg", img.read_bytes())}
        )
        assert r.status_code == 200, r.text
        assert r.json()["snapshot_epoch"] == (float(epoch) if epoch else 2.0)
        deploy, weights = tiny_weights(tmp / "check", seed)
        p = expected_probs(deploy, weights, [img], mean=model_mean_image())[0]
        assert [pct for _, pct in r.json()["predictions"]] == pytest.approx(sorted(100 * p, reverse=True), abs=0.011)
        answers[epoch] = r.json()["predictions"]
    assert answers["1"] != answers["2"] and answers["2"] == answers[""]
    missing = client.post(
        url, data={"job_id": job_id, "snapshot_epoch": "7"}, files={"image_file": ("a.jpg", img.read_bytes())}
    )
    assert missing.status_code == 404 and "epoch 7" in missing.json()["detail"]
    form = client.get(f"{CLASSIFY}/classify_one", params={"job_id": job_id})
    assert 'value="1"' in form.text and 'value="2"' in form.text
    # the model's "mean subtraction" is honoured: pixel (channel means of the mean image) and none
    info_path = Path(store.job_dir(job_id)) / "info.json"
    for mode, mean in (("pixel", model_mean_image().mean(axis=(1, 2))[:, None, None]), ("none", np.float32(0))):
        info_path.write_text(json.dumps({**json.loads(info_path.read_text()), "mean subtraction": mode}))
        r = client.post(url, data={"job_id": job_id}, files={"image_file": ("a.jpg", img.read_bytes())})
        p = expected_probs(deploy, weights, [img], mean=mean)[0]
        assert [pct for _, pct in r.json()["predictions"]] == pytest.approx(sorted(100 * p, reverse=True), abs=0.011)
    empty = store.create("model", "untrained", {})
    r = client.post(url, data={"job_id": empty.id}, files={"image_file": ("a.jpg", img.read_bytes())})
    assert r.status_code == 409 and "no snapshot" in r.json()["detail"]


# --------------------------------------------------------------------------------------- units
def test_lru_cache_reuses_and_evicts(tmp_path):
    deploy, weights = tiny_weights(tmp_path)
    cache = inference.ModelCache(size=2)
    sources = [
        inference.ModelSource(job_id=str(i), deploy=deploy, weights=w)
        for i, w in enumerate([weights, *(tiny_weights(tmp_path, s)[1] for s in (5, 6))])
    ]
    first = cache.get(sources[0])
    assert cache.get(sources[0]) is first and len(cache) == 1
    cache.get(sources[1])
    cache.get(sources[2])  # evicts the least recently used: sources[0]
    assert len(cache) == 2 and cache.get(sources[0]) is not first


def test_parse_image_list_names_the_line():
    def resolve(text):
        if "bad" in text:
            raise caffe.errors.DataError("refused")
        return Path("/x") / text

    items = inference.parse_image_list("a.jpg 1\nb c.jpg seahorse\nd.jpg\n", resolve, ["dolphin", "seahorse"])
    assert items == [(Path("/x/a.jpg"), 1), (Path("/x/b c.jpg"), 1), (Path("/x/d.jpg"), None)]
    with pytest.raises(inference.InferenceError, match=r"image list:2: refused"):
        inference.parse_image_list("a.jpg\nbad.jpg\n", resolve)
    with pytest.raises(inference.InferenceError, match="no image paths"):
        inference.parse_image_list("\n# only a comment\n", resolve)


def test_mean_image_is_center_cropped(tmp_path):
    mean = np.arange(3 * 6 * 6, dtype=np.float32).reshape(3, 6, 6)
    blob = pb.BlobProto()
    blob.shape.dim.extend([1, 3, 6, 6])
    blob.data.extend(mean.ravel().tolist())
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob.SerializeToString())
    # the one mean fitter (caffe.deploy.fit_mean) that the studio's models use
    from caffe import deploy

    def fit(spec, shape):
        return deploy.fit_mean(deploy.parse_mean(spec), shape, "image", str(spec)).array

    np.testing.assert_array_equal(fit(path, (3, 4, 4)), mean[:, 1:5, 1:5])
    np.testing.assert_array_equal(fit(path, (3, 8, 8)), mean.reshape(3, -1).mean(1)[:, None, None])
    assert fit("1,2,3", (3, 2, 2)).ravel().tolist() == [1, 2, 3]
    with pytest.raises(caffe.errors.CaffeError, match="2 mean values for a 3-channel input"):
        fit("1,2", (3, 2, 2))


def test_server_image_files_are_read_bounded(tmp_path, monkeypatch):
    """A server path naming a device or an oversized file ends in a caffe error, read no further than the cap."""
    from caffe.errors import CaffeError
    from caffe.studio import inference as inf

    with pytest.raises(CaffeError, match="not a regular file"):
        inf.read_image_file(Path("/dev/zero"))
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 2048)
    monkeypatch.setattr(inf, "MAX_IMAGE_FILE_BYTES", 1024)
    with pytest.raises(CaffeError, match="larger than"):
        inf.read_image_file(big)
