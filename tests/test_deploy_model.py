"""``caffe.deploy.DeployModel``, the one owner of a deployable classification model (issue 15, item 1).

Acceptance: one image and one model give the same probabilities (<= 1e-6) through ``caffe classify``,
``caffe serve`` (its HTTP API), the studio's classify-one and ``caffe classify`` on the studio's downloaded
archive, for a plain folder (Caffe's classification example: resize to the input, mean values) and for a
DIGITS model (the studio's model job: its dataset's 256 x 256, a centre crop to 227, the mean image
centre-cropped). A folder without a mean warns; ``--mean 104,117,123`` gives kit fox first with the
probabilities ``examples/classify_pretrained.py`` prints. The duplicates the owner replaced are gone.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ROOT, asset
from test_serve import Server
from test_studio_inference import TINY_NET, make_client, tiny_weights

import caffe
from caffe import deploy
from caffe.studio import inference
from caffe.tools.cli import main

SQ = "models/squeezenet_v1.0_deepcompression"
CAT = "caffe-ref/examples/images/cat.jpg"
SYNSETS = "models/imagenet-common/synset_words.txt"
CLASSIFY = "/models/images/classification"
KIT_FOX = 278


def classify_probs(capsys: pytest.CaptureFixture[str], *argv: str) -> np.ndarray:
    """``caffe classify --format=json --top_k=1000 ARGV`` of one image: its 1000 probabilities by class."""
    capsys.readouterr()
    assert main(["classify", "--format=json", "--top_k=1000", *argv]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    probs = np.zeros(1000)
    for p in result["predictions"]:
        probs[p["index"]] = p["probability"]
    return probs


def serve_probs(client: httpx.Client, model: str, image: bytes) -> np.ndarray:
    r = client.post(f"/models/{model}/predict?top_k=1000", files={"file": ("cat.jpg", image, "image/jpeg")})
    assert r.status_code == 200, r.text
    probs = np.zeros(1000)
    for p in r.json()["predictions"]:
        probs[p["index"]] = p["probability"]
    return probs


def studio_probs(client, job_id: str, image: bytes) -> tuple[np.ndarray, list]:
    """The studio's classify-one of ``image``: its exact probabilities (the route's own steps) and the
    route's answer (top-5 percents)."""
    r = client.post(
        f"{CLASSIFY}/classify_one.json", data={"job_id": job_id}, files={"image_file": ("cat.jpg", image, "image/jpeg")}
    )
    assert r.status_code == 200, r.text
    model = inference.load_model(client.app.state.studio.store, job_id)
    x, _ = inference.load_input(model, image)
    with model.lock:
        probs = inference.forward(model, x[None])[0]
    return probs, r.json()["predictions"]


def model_job(store, tmp: Path) -> str:
    """A finished studio model job of the SqueezeNet, as training leaves it: a 256 x 256 squash dataset, the
    ImageNet mean image, 'image' mean subtraction."""
    dataset = store.create(
        "dataset",
        "imagenet",
        {"resize_width": 256, "resize_height": 256, "resize_channels": 3, "resize_mode": "squash"},
    )
    job = store.create("model", "squeezenet", {"train_epochs": 1}, parent=dataset.id)
    job_dir = Path(store.job_dir(job.id))
    shutil.copy(asset(f"{SQ}/SqueezeNet_deploy.prototxt"), job_dir / "deploy.prototxt")
    shutil.copy(
        asset(f"{SQ}/squeezenet_v1.0_deepcompression_decoded.caffemodel"), job_dir / "snapshot_iter_10.caffemodel"
    )
    shutil.copy(asset(SYNSETS), job_dir / "labels.txt")
    mean = np.load(asset("models/imagenet-common/ilsvrc_2012_mean.npy"))
    (job_dir / "mean.binaryproto").write_bytes(caffe.io.array_to_blobproto(mean[np.newaxis]).SerializeToString())
    (job_dir / "info.json").write_text(
        json.dumps({"iterations per epoch": 10, "image dimensions": [256, 256, 3], "mean subtraction": "image"})
    )
    store.update(job.id, status="Done")
    return job.id


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """A studio with the SqueezeNet as a pretrained model (227 x 227, mean 104,117,123 from its train_val)
    and as a model job; and that job's archive as the studio's download gives it."""
    tmp = tmp_path_factory.mktemp("deploy_model")
    with make_client(tmp, [asset("."), tmp]) as client:
        sq = asset(SQ)
        r = client.post(
            "/pretrained_models.json",
            data={"job_name": "SqueezeNet", "width": "227", "height": "227"},
            files={
                "weights_file": (
                    "w.caffemodel",
                    (sq / "squeezenet_v1.0_deepcompression_decoded.caffemodel").read_bytes(),
                ),
                "deploy_file": ("deploy.prototxt", (sq / "SqueezeNet_deploy.prototxt").read_bytes()),
                "model_def_file": ("train_val.prototxt", (sq / "SqueezeNet_trainval.prototxt").read_bytes()),
                "labels_file": ("synset_words.txt", asset(SYNSETS).read_bytes()),
            },
        )
        assert r.status_code == 201, r.text
        pretrained = r.json()["job_id"]
        job = model_job(client.app.state.studio.store, tmp)
        download = client.get(f"/models/{job}/download", params={"fmt": "tar.gz"})
        assert download.status_code == 200, download.text[:500]
        archive = tmp / "squeezenet-job.tar.gz"
        archive.write_bytes(download.content)
        yield client, pretrained, job, archive


@pytest.fixture(scope="module")
def served(studio: tuple) -> Iterator[httpx.Client]:
    """``caffe serve`` of the SqueezeNet folder (mean values given) and of the studio's archive."""
    archive = studio[3]
    srv = Server(f"sq={asset(SQ)}", f"job={archive}", f"--labels={asset(SYNSETS)}", "--mean=104,117,123", "--nodocs")
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            yield client
    finally:
        srv.stop()


def _same(name: str, got: np.ndarray, want: np.ndarray) -> None:
    diff = float(np.abs(got - want).max())
    print(f"{name}: kit fox {got[KIT_FOX]:.6f}, max |difference| {diff:.2e}", file=sys.__stderr__)
    assert abs(got.sum() - 1.0) < 1e-6, name
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)


def test_plain_folder_same_probabilities_everywhere(studio, served, capsys):
    """Caffe's classification example: resized to 227 x 227, BGR, minus (104, 117, 123), softmax."""
    client, pretrained, _, _ = studio
    image = asset(CAT).read_bytes()
    by_cli = classify_probs(capsys, str(asset(SQ)), str(asset(CAT)), "--mean=104,117,123")
    assert int(np.argmax(by_cli)) == KIT_FOX
    _same("caffe classify (folder)", by_cli, by_cli)
    _same("caffe serve (folder)", serve_probs(served, "sq", image), by_cli)
    by_studio, route = studio_probs(client, pretrained, image)
    _same("studio classify-one (pretrained)", by_studio, by_cli)
    order = np.argsort(-by_cli, kind="stable")[:5]
    assert [p for _, p in route] == [round(100 * by_cli[k], 2) for k in order]


def test_digits_model_same_probabilities_everywhere(studio, served, capsys, monkeypatch, tmp_path):
    """The studio's model job and its downloaded archive: resized to the dataset's 256 x 256, centre-cropped to
    227 x 227, minus the mean image's centre crop (DIGITS), whichever way it is classified."""
    monkeypatch.setenv("CAFFE_CACHE_DIR", str(tmp_path / "cache"))
    client, _, job, archive = studio
    with tarfile.open(archive) as t:
        info = json.load(t.extractfile("info.json"))  # type: ignore[arg-type]
    assert info["image dimensions"] == [256, 256, 3] and info["mean subtraction"] == "image"
    image = asset(CAT).read_bytes()
    by_studio, route = studio_probs(client, job, image)
    by_archive = classify_probs(capsys, str(archive), str(asset(CAT)))
    _same("studio classify-one (model job)", by_studio, by_studio)
    _same("caffe classify (studio's archive)", by_archive, by_studio)
    _same("caffe serve (studio's archive)", serve_probs(served, "job", image), by_studio)
    order = np.argsort(-by_studio, kind="stable")[:5]
    assert [p for _, p in route] == [round(100 * by_studio[k], 2) for k in order]
    # and it is not the plain folder's preprocessing (the issue: 49.1 % in the studio, 45.5 % from the archive)
    plain = classify_probs(
        capsys, str(asset(SQ)), str(asset(CAT)), f"--mean={asset('models/imagenet-common/ilsvrc_2012_mean.npy')}"
    )
    assert abs(plain[KIT_FOX] - by_studio[KIT_FOX]) > 1e-3


def test_folder_without_a_mean_warns_how_to_give_one(capsys):
    assert main(["classify", str(asset(SQ)), str(asset(CAT)), f"--labels={asset(SYNSETS)}"]) == 0
    captured = capsys.readouterr()
    assert "no mean" in captured.err and "--mean 104,117,123" in captured.err
    assert "softmax applied" in captured.err  # the net ends in a Pooling layer: scores, normalized
    for line in captured.out.splitlines()[1:]:
        assert 0 < float(line.split(" - ", 1)[0]) < 1


def test_mean_values_give_kit_fox_as_the_example_does(capsys):
    """``--mean 104,117,123`` prints the top-5 that examples/classify_pretrained.py prints, to its 4 decimals."""
    assert (
        main(["classify", str(asset(SQ)), str(asset(CAT)), f"--labels={asset(SYNSETS)}", "--mean", "104,117,123"]) == 0
    )
    ours = capsys.readouterr().out.splitlines()[1:]
    assert ours[0].endswith('- "n02119789 kit fox, Vulpes macrotis"')
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "classify_pretrained.py"), str(asset(CAT))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    example = [line.strip() for line in run.stdout.splitlines() if re.match(r"\s+\d\.\d{4} - ", line)]
    assert ours == example


def test_softmax_only_when_the_output_is_not_already_probabilities(tmp_path):
    deploy_file, weights = tiny_weights(tmp_path)
    tiny = deploy.DeployModel(
        deploy.find_model(deploy=deploy_file, weights=weights), deploy.Settings(mean="100,110,120")
    )
    assert not tiny.softmax and "Softmax layer" in tiny.softmax_reason
    x = np.random.default_rng(0).uniform(-50, 50, (3, 3, 24, 24)).astype(np.float32)
    np.testing.assert_allclose(tiny.forward(x), tiny.scores(x))  # the net's own probabilities, untouched
    sq = deploy.DeployModel.load(asset(SQ), settings=deploy.Settings(mean="104,117,123"))
    assert sq.softmax and "Pooling layer" in sq.softmax_reason
    assert sq.describe()["preprocessing"]["image_size"] == [227, 227]  # a plain folder: resized to the input
    probs = sq.classify([sq.prepare(asset(CAT).read_bytes(), "cat.jpg")] * 3, batch_size=2)  # batched
    assert probs.shape == (3, 1000) and np.allclose(probs.sum(axis=1), 1.0)
    assert sq.top_k(probs[0], 3)[0].index == KIT_FOX
    np.testing.assert_allclose(probs[0], probs[2], atol=1e-6)
    assert TINY_NET  # the tiny net ends in a Softmax layer


def test_digits_defaults_come_from_info_json(tmp_path):
    files = deploy.ModelFiles(
        asset(f"{SQ}/SqueezeNet_deploy.prototxt"),
        Path("w"),
        info={"image dimensions": [256, 300, 3], "image resize mode": "crop", "mean subtraction": "pixel"},
    )
    mean, settings = deploy.preprocessing_defaults(files, deploy.Settings())
    assert mean is None and settings.image_size == (256, 300) and settings.resize_mode == "crop"
    assert settings.mean_mode == "pixel"
    plain = deploy.ModelFiles(files.deploy, Path("w"))
    _, settings = deploy.preprocessing_defaults(plain, deploy.Settings())
    assert settings.image_size is None and settings.resize_mode == "squash" and settings.mean_mode == "pixel"


def test_the_duplicates_are_gone():
    """Label readers, mean fitters, softmaxes and image decoders live in caffe/deploy/ only."""
    callers = [
        "caffe/serve.py",
        "caffe/studio/inference.py",
        "caffe/tools/classify_tools.py",
        "caffe/classifier.py",
        "caffe/studio/pretrained.py",
        "caffe/studio/layer_worker.py",
    ]
    forbidden = [
        r"np\.exp\(",
        r"def _?softmax\(",
        r"def fit_mean",
        r"def _channel_means",
        r"blobproto_to_array",
        r"read_labels_text",
        r"class Preprocessing",
        r"Image\.open\(",
        r"def _pil_resize",
        r"def decode_image",
        r"def read_labels\(",
    ]
    for path in callers:
        text = (ROOT / path).read_text()
        for pattern in forbidden:
            assert not re.search(pattern, text), f"{path}: {pattern}"
    package = ROOT / "caffe" / "deploy"
    owners = {
        r"def softmax\(": "model.py",
        r"def fit_mean\(": "readers.py",
        r"def read_labels\(": "readers.py",
        r"def decode_image\(": "images.py",
        r"def resize_image\(": "images.py",
    }
    for pattern, owner in owners.items():
        found = [p.name for p in package.glob("*.py") if re.search(pattern, p.read_text())]
        assert found == [owner], (pattern, found)
    datasets = (ROOT / "caffe" / "studio" / "datasets.py").read_text()
    assert "def resize_image" not in datasets and "def _normalize_mode" not in datasets


def test_zoo_entry_weights_come_from_its_readme(tmp_path):
    entry = tmp_path / "bvlc_tiny"
    entry.mkdir()
    deploy_file, weights = tiny_weights(tmp_path / "src")
    shutil.copy(deploy_file, entry / "deploy.prototxt")
    (entry / "readme.md").write_text(
        "---\nname: tiny\ncaffemodel: tiny.caffemodel\n"
        "caffemodel_url: http://example.com/tiny.caffemodel\nsha1: " + "0" * 40 + "\n---\n"
    )
    with pytest.raises(deploy.ModelFilesError, match="not downloaded; run: caffe zoo download"):
        deploy.find_model(entry)
    shutil.copy(weights, entry / "tiny.caffemodel")
    shutil.copy(weights, entry / "other.caffemodel")  # not a snapshot: without the readme, ambiguous
    assert deploy.find_model(entry).weights == entry / "tiny.caffemodel"
