"""The guide's fine-tuning attempt in miniature, through the studio's REST API only (a real server on a
loopback port, httpx): a small dolphins-and-seahorses subset, SqueezeNet v1.0's ImageNet weights uploaded,
the one-click rename and proposed lr, a 2-epoch CPU training to Done, accuracy, classification and the
archive checked against the uploaded weights. The full-size run is examples/studio/guide_attempts.py."""

from __future__ import annotations

import importlib.util
import io
import shutil
import sys
import tarfile

import numpy as np
import pytest
from conftest import ROOT, asset

from caffe.proto import caffe_pb2 as pb
from caffe.protoio import parse_text

PER_CLASS = 8  # 25 % validation -> 6 + 6 training, 2 + 2 validation images


def _script():
    spec = importlib.util.spec_from_file_location("guide_attempts", ROOT / "examples" / "studio" / "guide_attempts.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from caffe.studio.app import serve_in_thread

    tmp = tmp_path_factory.mktemp("guide")
    data = tmp / "data" / "dolphins-and-seahorses"
    for cls in ("dolphin", "seahorse"):
        (data / cls).mkdir(parents=True)
        for src in sorted(asset(f"dolphins-and-seahorses/{cls}").glob("*.jpg"))[:PER_CLASS]:
            shutil.copyfile(src, data / cls / src.name)
    url, stop = serve_in_thread({"jobs_dir": tmp / "jobs", "devices": ["cpu"], "data_roots": [tmp / "data"]})
    script = _script()
    api = script.StudioAPI(url)
    try:
        yield script, api, data
    finally:
        api.close()
        stop()


def _layer(net: pb.NetParameter, name: str) -> pb.LayerParameter | None:
    return next((x for x in net.layer if x.name == name), None)


def _blob(weights: bytes, layer: str) -> np.ndarray:
    net = pb.NetParameter()
    net.ParseFromString(weights)
    blob = _layer(net, layer).blobs[0]
    return np.asarray(blob.data, np.float32).reshape(tuple(blob.shape.dim))


def test_finetune_squeezenet_through_rest(studio):
    script, api, data = studio
    dataset = script.make_dataset(api, data, timeout=120)
    assert dataset["result"]["counts"] == {"train": 12, "val": 4}
    assert dataset["result"]["labels"] == ["dolphin", "seahorse"]

    p = script.SQUEEZENET
    pretrained = api.upload_pretrained(p.name, weights=asset(p.weights), deploy=asset(p.deploy),
                                       labels=p.label_bytes(asset(".")), mean_values=p.mean_values)
    form = {"dataset": dataset["id"], "method": "pretrained", "pretrained_networks": pretrained, "device": "cpu"}

    # the one-click fine-tune: the 1000-way classifier renamed and set to 2 outputs, base lr 0.001 proposed
    proposal = api.customize(**form)
    assert proposal["renamed"] == [["conv_final", "conv_final_retrain"]]
    assert proposal["finetune"] is True and proposal["suggested_lr"] == pytest.approx(0.001)
    edited = parse_text(proposal["network"], pb.NetParameter(), "customized")
    assert _layer(edited, "conv_final") is None
    assert _layer(edited, "conv_final_retrain").convolution_param.num_output == 2

    res = script.run_attempt(api, script.Attempt("tiny", "fine-tune", form), dataset["id"], pretrained,
                             epochs=2, timeout=300, progress=lambda _: None)
    assert res.form["learning_rate"] == pytest.approx(0.001)
    assert res.max_iter == 2  # ceil(12 / 16) = 1 iteration per epoch
    # validation before training and after each epoch, as fractions
    assert res.epochs == [0, 1, 2]
    assert len(res.accuracy) == 3 and all(0.0 <= a <= 1.0 for a in res.accuracy)

    top = api.classify_one(res.job_id, next(iter(sorted((data / "dolphin").iterdir()))))
    assert {label for label, _ in top} == {"dolphin", "seahorse"}
    assert sum(pct for _, pct in top) == pytest.approx(100.0, abs=0.1)

    # the archive holds what trained: the renamed 2-way classifier, lr 0.001, and weights started from the upload
    r = api.http.get(f"/models/{res.job_id}/download.tar.gz")
    assert r.status_code == 200, r.text
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    train_val = parse_text(files["train_val.prototxt"].decode(), pb.NetParameter(), "train_val.prototxt")
    assert _layer(train_val, "conv_final") is None
    assert _layer(train_val, "conv_final_retrain").convolution_param.num_output == 2
    solver = parse_text(files["solver.prototxt"].decode(), pb.SolverParameter(), "solver.prototxt")
    assert solver.base_lr == pytest.approx(0.001) and solver.max_iter == 2
    trained = files["snapshot_iter_2.caffemodel"]
    original = asset(p.weights).read_bytes()
    assert _blob(trained, "conv_final_retrain").shape == (2, 512, 1, 1)
    before, after = _blob(original, "conv1"), _blob(trained, "conv1")
    assert before.shape == after.shape == (96, 3, 7, 7)
    change = np.abs(after - before).max()
    assert 0 < change < 0.01 * np.abs(before).max()  # loaded from the upload, then trained a little
