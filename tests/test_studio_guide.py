"""The guide's fine-tuning attempt in miniature, through the studio's REST API only (a real server on a
loopback port, httpx): a small dolphins-and-seahorses subset, SqueezeNet v1.0's ImageNet weights uploaded,
the one-click rename and proposed lr, a 2-epoch CPU training to Done, accuracy, classification and the
archive checked against the uploaded weights. The full-size run is examples/studio/guide_attempts.py."""

from __future__ import annotations

import importlib.util
import io
import json
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
    pretrained = api.upload_pretrained(
        p.name,
        weights=asset(p.weights),
        deploy=asset(p.deploy),
        labels=p.label_bytes(asset(".")),
        mean_values=p.mean_values,
    )
    form = {"dataset": dataset["id"], "method": "pretrained", "pretrained_networks": pretrained, "device": "cpu"}

    # the one-click fine-tune: the 1000-way classifier renamed and set to 2 outputs, base lr 0.001 proposed
    proposal = api.customize(**form)
    assert proposal["renamed"] == [["conv_final", "conv_final_retrain"]]
    assert proposal["finetune"] is True and proposal["suggested_lr"] == pytest.approx(0.001)
    edited = parse_text(proposal["network"], pb.NetParameter(), "customized")
    assert _layer(edited, "conv_final") is None
    assert _layer(edited, "conv_final_retrain").convolution_param.num_output == 2

    res = script.run_attempt(
        api,
        script.Attempt("tiny", "fine-tune", form),
        dataset["id"],
        pretrained,
        epochs=2,
        timeout=300,
        progress=lambda _: None,
    )
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


def _saved_run(seeds: dict[int, list[float]]) -> dict:
    """A saved run (--save's JSON) without training: one fine-tuning and AlexNet from scratch per seed."""

    def result(key: str, accuracy: list[float], seed: int | None, **extra) -> dict:
        form = {"dataset": "d", "model_name": key, "device": "cpu", "random_seed": seed or 1, **extra}
        return {
            "attempt": key,
            "job_id": f"job-{key}-{seed}",
            "renamed": [],
            "suggested_lr": None,
            "form": form,
            "epochs": list(range(len(accuracy))),
            "accuracy": accuracy,
            "wall_s": 60.0,
            "max_iter": 30,
            "classified": [["dolphin/image_0042.jpg", "dolphin", 90.0]],
            "error": "",
            "seed": seed,
        }

    results = [result("alexnet", acc, seed) for seed, acc in seeds.items()]
    results.append(result("squeezenet", [0.5, 1.0], None, learning_rate=0.001))
    info = {"cpu": "test cpu", "cores": "2", "torch": "2", "load": "1.00", "niceness": "19"}
    return {
        "dataset": {"result": {"counts": {"train": 92, "val": 30}}},
        "info": info,
        "started": "today",
        "results": results,
    }


def test_render_alexnet_seeds(tmp_path, capsys):
    """--render redoes the section from saved measurements: one AlexNet row in the attempts' table (the first
    seed), a row per seed with last/best/first epoch >= 95 %, and mean/min/max over the seeds next to the
    guide's 87.5 %; a failed seed is listed and left out of the summary. Nothing trains, nothing is written."""
    script = _script()
    saved = _saved_run({1: [0.5, 0.8125, 0.75], 2: [0.5, 0.96875, 0.90625], 3: [0.5, 0.875, 0.875], 4: []})
    saved["results"][3]["error"] = "ended Error: boom"
    path = tmp_path / "run.json"
    path.write_text(json.dumps(saved))
    assert script.main(["--render", str(path), "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "written:" not in out
    assert out.count("| 1. AlexNet from scratch |") == 1  # the attempts' table shows seed 1 only
    assert "| 1 | 50.0 % / 81.2 % / **75.0 %** | never | 1.0 min |" in out
    assert "| 2 | 50.0 % / 96.9 % / **90.6 %** | 1 | 1.0 min |" in out
    assert "| 4 | failed: ended Error: boom | | |" in out
    # last: 75, 90.625, 87.5 -> mean 84.4; the guide's 87.5 % is reached by seeds 2 and 3
    assert "**mean 84.4 % (min 75.0 %, max 90.6 %)**, next to the guide's **87.5 %**; 2 of 3 seeds" in out
    assert "Failed, left out of the summary: seed 4." in out
    assert "run under `nice -n 19`" in out
    assert "- 1. AlexNet from scratch, seed 3: 50, 88, 88" in out


def test_render_a_run_saved_before_seeds(tmp_path, capsys):
    """A run saved before --alexnet-seeds (no "seed" field, one AlexNet) renders as before: no seeds table."""
    script = _script()
    saved = _saved_run({1: [0.5, 0.8125]})
    for r in saved["results"]:
        del r["seed"]
    del saved["info"]["niceness"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(saved))
    assert script.main(["--render", str(path), "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "| 1. AlexNet from scratch | random_seed 1 |" in out
    assert "once per seed" not in out and "nice -n" not in out


def test_render_runs_side_by_side(tmp_path, capsys):
    """--render with two saved runs (the seeds in one, a fine-tuning in the other) takes them together, in the
    attempts' order, and says on the machine line which run made what."""
    script = _script()
    saved = _saved_run({1: [0.5, 0.75], 2: [0.5, 0.875]})
    seeds, finetune = dict(saved, results=saved["results"][:2]), dict(saved, results=saved["results"][2:])
    finetune["started"], finetune["info"] = "later", {**saved["info"], "load": "4.00"}
    paths = [tmp_path / "seeds.json", tmp_path / "finetune.json"]
    for path, run in zip(paths, (finetune, seeds), strict=True):  # order on the command line does not matter
        path.write_text(json.dumps(run))
    assert script.main(["--render", *map(str, paths), "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "2 runs of the script side by side" in out
    assert "2. fine-tune SqueezeNet v1.0 (started later, load average 4.00)" in out
    assert "1. AlexNet from scratch (started today, load average 1.00)" in out
    assert out.index("| 1. AlexNet from scratch |") < out.index("| 2. fine-tune SqueezeNet v1.0")
    assert "**mean 81.2 % (min 75.0 %, max 87.5 %)**" in out
