"""Studio model jobs: DIGITS' form-to-solver mapping, lr preview, the form's errors, a real tiny training
through the scheduler (snapshots, archive download, resume), NaN advice."""

from __future__ import annotations

import io
import json
import math
import tarfile
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_net_param, read_solver_param
from caffe.studio import datasets
from caffe.studio import models as m

ARCHIVE_FILES = {
    "deploy.prototxt",
    "mean.binaryproto",
    "solver.prototxt",
    "info.json",
    "original.prototxt",
    "labels.txt",
    "train_val.prototxt",
}


# ---------------------------------------------------------------------------------------------- mapping
def form(**values) -> m.ModelForm:
    return m.ModelForm.from_dict({"dataset": "20240101-000000-abcd", **values})


def test_solver_mapping_guide_attempt_one():
    """The guide's AlexNet run: 92 training / 30 validation images, AlexNet's batches 128/32, 30 epochs,
    DIGITS defaults. Hand-computed: 1 iteration per epoch, step policy at 33 % -> ceil(9.9) = 10."""
    s = m.solver_param(form(), 92, 30, 128, 32)
    assert (s.max_iter, s.snapshot, s.test_interval, list(s.test_iter)) == (30, 1, 1, [1])
    assert (s.lr_policy, s.stepsize, s.gamma) == ("step", 10, pytest.approx(0.1))
    assert s.base_lr == pytest.approx(0.01) and s.weight_decay == pytest.approx(0.0001)
    assert s.momentum == pytest.approx(0.9) and s.type == "SGD"
    assert s.display == 1  # max(1, min(floor(30 / 240), ceil(5000 / 128)))
    assert not s.HasField("random_seed") and not s.HasField("iter_size")


def test_solver_mapping_every_field():
    """1270 images, batch 32 x accumulation 2: ceil(1270/64) = 20 iterations per epoch, 10 epochs -> 200;
    lr policy percentages scale by 200/100 = 2."""
    f = form(
        train_epochs="10",
        snapshot_interval="2.5",
        val_interval="0.5",
        batch_accumulation="2",
        learning_rate="0.05",
        lr_policy="multistep",
        lr_multistep_values="50, 85",
        random_seed="7",
    )
    s = m.solver_param(f, 1270, 250, 32, 50)
    assert (s.max_iter, s.iter_size, s.snapshot, s.test_interval, list(s.test_iter)) == (200, 2, 50, 10, [5])
    assert list(s.stepvalue) == [100, 170] and s.gamma == pytest.approx(0.5)
    assert s.weight_decay == pytest.approx(0.0005) and s.random_seed == 7
    assert s.display == 2  # max(1, min(floor(200 / 80), ceil(5000 / 64)))
    scaled = {
        "exp": {"gamma": 0.95**0.5},
        "inv": {"gamma": 0.05, "power": 0.5},
        "poly": {"power": 3.0},
        "sigmoid": {"gamma": -0.05, "stepsize": 100},
        "step": {"stepsize": 66, "gamma": 0.1},  # ceil(33 * 2)
    }
    for policy, expected in scaled.items():
        s = m.solver_param(form(train_epochs="10", batch_accumulation="2", lr_policy=policy), 1270, 250, 32, 50)
        for key, value in expected.items():
            assert getattr(s, key) == pytest.approx(value), (policy, key)
    # intervals reaching the end: snapshot only at the end (0), validation once at the end (max_iter)
    s = m.solver_param(form(train_epochs="3", snapshot_interval="3", val_interval="5"), 100, 10, 10, 10)
    assert (s.max_iter, s.snapshot, s.test_interval) == (30, 0, 30)
    # no momentum for AdaGrad and RMSProp; RMSProp's decay
    assert not m.solver_param(form(solver_type="ADAGRAD"), 10, 10, 5, 5).HasField("momentum")
    rms = m.solver_param(form(solver_type="RMSPROP"), 10, 10, 5, 5)
    assert rms.type == "RMSProp" and not rms.HasField("momentum") and rms.rms_decay == pytest.approx(0.99)
    assert m.solver_param(form(solver_type="ADAM"), 10, 10, 5, 5).type == "Adam"


FORMULAS = {  # Caffe's GetLearningRate, written out here in float64
    "fixed": lambda it, s: s.base_lr,
    "step": lambda it, s: s.base_lr * s.gamma ** (it // s.stepsize),
    "multistep": lambda it, s: s.base_lr * s.gamma ** sum(it >= v for v in s.stepvalue),
    "exp": lambda it, s: s.base_lr * s.gamma**it,
    "inv": lambda it, s: s.base_lr * (1 + s.gamma * it) ** -s.power,
    "poly": lambda it, s: s.base_lr * (1 - it / s.max_iter) ** s.power,
    "sigmoid": lambda it, s: s.base_lr / (1 + math.exp(-s.gamma * (it - s.stepsize))),
}


@pytest.mark.parametrize("policy", list(FORMULAS))
def test_lr_preview_is_caffes_lr_policy(policy):
    s = m.solver_param(form(train_epochs="10", lr_policy=policy, learning_rate="0.1"), 300, 0, 10, 10)
    iters, rates = m.lr_schedule(s)
    assert iters[0] == 0 and iters[-1] == s.max_iter == 300 and len(iters) == 101
    np.testing.assert_allclose(rates, [FORMULAS[policy](i, s) for i in iters], rtol=1e-6)
    if policy == "step":  # stepsize ceil(33 % of 300) = 99: drops at 99, 198, 297
        assert s.stepsize == 99 and rates[-1] == pytest.approx(1e-4)


def test_form_errors_name_their_fields():
    with pytest.raises(m.FormError) as e:
        m.ModelForm.from_dict({"train_epochs": "ten", "batch_size": "2.5"})
    assert set(e.value.errors) == {"train_epochs", "batch_size"}
    with pytest.raises(m.FormError) as e:
        form(snapshot_interval="0", solver_type="LBFGS", method="custom", device="cuda:3").check(["cpu"])
    assert set(e.value.errors) == {"snapshot_interval", "solver_type", "custom_network", "device"}
    assert "resume" in e.value.errors["snapshot_interval"]


def test_numbers_past_the_solvers_fields_are_form_errors():
    """Found by scripts/fuzz.py (studio_model): an infinite epoch count, a batch or seed past the proto's integer
    fields and a training of more than 2^31 iterations were 500s; each is a 400 naming its field."""
    with pytest.raises(m.FormError) as e:
        m.ModelForm.from_dict({"train_epochs": "1e309", "learning_rate": "nan", "lr_step_gamma": "1e300"})
    assert set(e.value.errors) == {"train_epochs", "learning_rate", "lr_step_gamma"}
    assert "finite" in e.value.errors["train_epochs"] and "range" in e.value.errors["lr_step_gamma"]
    with pytest.raises(m.FormError) as e:
        form(batch_size=str(2**32), random_seed=str(2**64), lr_step_size="1e30").check()
    assert set(e.value.errors) == {"batch_size", "random_seed", "lr_step_size"}
    with pytest.raises(m.FormError) as e:
        m.solver_param(form(train_epochs="1000000"), 100_000, 0, 1, 1)
    assert "over 2,147,483,647" in e.value.errors["train_epochs"]


def test_nan_advice_from_events(tmp_path):
    (tmp_path / "info.json").write_text(json.dumps({"iterations per epoch": 10, "max iterations": 100}))
    events = [
        {"event": "start", "iter": 0, "max_iter": 100, "time": 0.0},
        {"event": "train", "iter": 10, "loss": 0.7, "lr": 0.01, "time": 1.0},
        {"event": "test", "iter": 10, "outputs": {"loss": 0.6, "accuracy": 0.5}, "time": 1.5},
        {"event": "train", "iter": 20, "loss": float("nan"), "lr": 0.01, "time": 2.0},
    ]
    p = m.training_progress(tmp_path, events)
    assert p["nan"] == "the training loss (iteration 20)"
    assert "lower base learning rate" in p["advice"]
    assert p["train"]["epoch"] == [1, 2] and p["val"]["loss"]["epoch"] == [1]
    assert p["eta_seconds"] == pytest.approx(8.0)  # 20 iterations in 2 s, 80 to go
    assert m.training_progress(tmp_path, events[:3])["advice"] is None
    inf = [*events[:2], {"event": "test", "iter": 10, "outputs": {"loss": float("inf")}, "time": 1.5}]
    assert "'loss' (validation, iteration 10)" in m.training_progress(tmp_path, inf)["advice"]


# ---------------------------------------------------------------------------------------------- a real job
def make_images(folder: Path, per_class: int = 16) -> Path:
    """Two classes of 28x28 grayscale images: dark and light noise."""
    rng = np.random.default_rng(0)
    for name, level in (("dark", 50), ("light", 200)):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(level + rng.normal(0, 25, (28, 28)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / name / f"{i:02d}.png"), img)
    return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from caffe.studio.app import create_app

    tmp = tmp_path_factory.mktemp("studio-models")
    app = create_app({"jobs_dir": tmp / "jobs", "devices": ["cpu"]})
    with TestClient(app) as client:
        store = app.state.studio.store
        job = store.create("dataset", "tiny", {})
        params = datasets.DatasetParams.from_dict(
            {
                "folder_train": str(make_images(tmp / "images")),
                "resize_channels": 1,
                "resize_width": 28,
                "resize_height": 28,
            }
        )
        result = datasets.create_dataset(store.job_dir(job.id), params)
        assert result["counts"] == {"train": 24, "val": 8}
        store.update(job.id, status="Done", result=result)
        yield client, app.state.studio, job.id


LENET = {
    "model_name": "tiny lenet",
    "standard_networks": "lenet",
    "train_epochs": "4",
    "batch_size": "8",
    "lr_policy": "fixed",
    "random_seed": "3",
}


def test_malformed_custom_prototxt_shows_its_line(env):
    client, _, dataset = env
    text = 'name: "bad"\nlayer {\n  name: "a"\n  type: "Data"\n  top: "data" top: "label"\n  bogus_field: 1\n}\n'
    fields = {**LENET, "dataset": dataset, "method": "custom", "custom_network": text}
    r = client.post("/models/images/classification.json", data=fields)
    assert r.status_code == 400
    assert r.json()["fields"]["network"].startswith("custom network:6:")
    page = client.post("/models/images/classification", data=fields, headers={"Accept": "text/html"})
    assert page.status_code == 400 and "custom network:6:" in page.text and 'id="error-network"' in page.text
    assert client.get("/index.json").json()["models"] == []  # nothing was created


def test_new_model_page_and_helpers(env):
    client, _, dataset = env
    page = client.get("/models/images/classification/new")
    assert page.status_code == 200
    for element in (
        "model-dataset",
        "model-train-epochs",
        "model-learning-rate",
        "model-lr-policy",
        "method-pretrained",
        "model-custom-network",
        "model-customize",
        "create-model",
        "lr-chart",
    ):
        assert f'id="{element}"' in page.text
    custom = client.post("/models/customize.json", data={"dataset": dataset, "standard_networks": "alexnet"}).json()
    net = pb.NetParameter()
    from google.protobuf import text_format

    text_format.Parse(custom["network"], net)
    assert [x.inner_product_param.num_output for x in net.layer if x.name == "fc8"] == [2]
    assert custom["batch_size"] == 128 and custom["crop_size"] == 227 and custom["suggested_lr"] is None
    lr = client.post("/models/visualize-lr.json", data={**LENET, "dataset": dataset, "lr_policy": "step"}).json()
    # 24 images / batch 8 x 4 epochs = 12 iterations; stepsize ceil(33 % of 12) = 4: drops at 4, 8, 12
    assert lr["max_iter"] == 12 and lr["solver"]["stepsize"] == 4 and lr["epochs"][-1] == 4
    assert lr["lr"][0] == pytest.approx(0.01) and lr["lr"][-1] == pytest.approx(1e-5)


def test_clone_and_preset_fill_the_form(env):
    client, studio, dataset = env
    source = studio.store.create("model", "to clone", {**LENET, "dataset": dataset, "learning_rate": 0.0375})
    page = client.get(f"/models/images/classification/new?clone={source.id}")
    assert page.status_code == 200 and 'value="0.0375"' in page.text and 'value="tiny lenet"' in page.text
    preset = client.get("/models/images/classification/new?method=pretrained&learning_rate=0.0425")
    assert 'value="0.0425"' in preset.text
    assert client.get("/models/images/classification/new?clone=20990101-000000-abcd").status_code == 404
    assert client.get("/models/images/classification/new?clone=../../etc").status_code in (400, 404)
    studio.store.delete(source.id)


def test_tiny_training_snapshots_download_and_resume(env, tmp_path):
    client, studio, dataset = env
    r = client.post("/models/images/classification.json", data={**LENET, "dataset": dataset})
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    job = studio.scheduler.wait(job_id, 240)
    job_dir = studio.store.job_dir(job_id)
    assert job.status == "Done", (job_dir / "log.txt").read_text()[-3000:]

    # the files DIGITS writes, with the dataset's numbers
    solver = read_solver_param(job_dir / "solver.prototxt")
    assert (solver.max_iter, solver.snapshot, solver.test_interval, list(solver.test_iter)) == (12, 3, 3, [1])
    train_val = read_net_param(job_dir / "train_val.prototxt")
    data = [x for x in train_val.layer if x.type == "Data"]
    assert [Path(x.data_param.source).name for x in data] == ["train_db", "val_db"]
    assert all(x.transform_param.mean_file == str(job_dir / "mean.binaryproto") for x in data)
    assert [x.inner_product_param.num_output for x in train_val.layer if x.name == "ip2"] == [2]
    assert job.argv[-2:] == [f"--solver={job_dir / 'solver.prototxt'}", f"--events={job_dir / 'events.jsonl'}"]

    summary = client.get(f"/models/{job_id}.json").json()
    assert summary["status"] == "Done" and summary["snapshots"] == [1, 2, 3, 4]
    assert summary["iter"] == 12 and summary["progress"] == 1.0 and summary["advice"] is None
    assert summary["val"]["accuracy"]["epoch"] == [0, 1, 2, 3, 4]
    assert summary["val"]["accuracy"]["value"][-1] == 1.0  # dark vs light: learned
    assert summary["train"]["epoch"][-1] == pytest.approx(11 / 3, abs=1e-3)

    page = client.get(f"/models/{job_id}")
    assert page.status_code == 200 and 'id="model-chart"' in page.text and 'id="download-2-tar-gz"' in page.text
    assert f'href="/datasets/{dataset}">tiny</a>' in page.text  # the dataset by its name

    archive = client.get(f"/models/{job_id}/download", params={"epoch": 2, "fmt": "tar.gz"})
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        assert set(tar.getnames()) == ARCHIVE_FILES | {"snapshot_iter_6.caffemodel"}
    archive = client.get(f"/models/{job_id}/download.zip")  # newest epoch
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        assert set(z.namelist()) == ARCHIVE_FILES | {"snapshot_iter_12.caffemodel"}
        info = json.loads(z.read("info.json"))
    assert info["epoch"] == 4 and info["classes"] == 2
    assert client.get(f"/models/{job_id}/download", params={"epoch": 7}).status_code == 404

    # Resume: keep the run's state at epoch 2 as if it had been interrupted there, resume, and end
    # with the same final weights (24 images = 3 batches: the reader restarts where it wrapped).
    final = (job_dir / "snapshot_iter_12.caffemodel").read_bytes()
    assert client.post(f"/jobs/{job_id}/resume").status_code == 409  # a finished job does not resume
    for it in (9, 12):
        for ext in ("caffemodel", "solverstate"):
            (job_dir / f"snapshot_iter_{it}.{ext}").unlink()
    studio.store.update(job_id, status="Interrupted")
    r = client.post(f"/jobs/{job_id}/resume")
    assert r.status_code == 200 and f"--snapshot={job_dir / 'snapshot_iter_6.solverstate'}" in r.json()["argv"]
    assert studio.scheduler.wait(job_id, 240).status == "Done"
    assert (job_dir / "snapshot_iter_12.caffemodel").read_bytes() == final
    summary = client.get(f"/models/{job_id}.json").json()
    assert summary["snapshots"] == [1, 2, 3, 4] and summary["val"]["accuracy"]["epoch"] == [0, 1, 2, 3, 4]


def learned_blobs(caffemodel: Path) -> dict[str, np.ndarray]:
    """Every learned blob of a .caffemodel, by layer name and index."""
    from caffe.weights import blob_proto_to_array

    net = pb.NetParameter.FromString(caffemodel.read_bytes())
    return {f"{layer.name}/{i}": blob_proto_to_array(b) for layer in net.layer for i, b in enumerate(layer.blobs)}


def test_server_restart_during_training_then_resume_to_the_end(tmp_path):
    """The server stops while a training runs: the job is Interrupted (snapshotted at the current
    iteration); a new server on the same jobs folder resumes it with one POST, and it ends where an
    uninterrupted run ends: at max_iter, with the same weights."""
    from caffe.studio.app import create_app

    config = {"jobs_dir": tmp_path / "jobs", "devices": ["cpu"]}
    app = create_app(config)
    with TestClient(app) as client:
        store = app.state.studio.store
        dataset = store.create("dataset", "tiny", {})
        params = datasets.DatasetParams.from_dict(
            {
                "folder_train": str(make_images(tmp_path / "images")),
                "resize_channels": 1,
                "resize_width": 28,
                "resize_height": 28,
            }
        )
        store.update(dataset.id, status="Done", result=datasets.create_dataset(store.job_dir(dataset.id), params))
        fields = {
            **LENET,
            "dataset": dataset.id,
            "train_epochs": "100",
            "snapshot_interval": "50",
            "val_interval": "25",
        }
        r = client.post("/models/images/classification.json", data=fields)
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]
        events = store.job_dir(job_id) / "events.jsonl"
        deadline = time.monotonic() + 120
        while '"event": "train"' not in (events.read_text() if events.exists() else ""):
            assert time.monotonic() < deadline and store.get(job_id).status in ("Waiting", "Running")
            time.sleep(0.2)
    # the server has stopped (its lifespan ended): the training was interrupted and snapshotted
    job_dir = store.job_dir(job_id)
    assert store.get(job_id).status == "Interrupted"
    states = sorted(job_dir.glob("snapshot_iter_*.solverstate"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert states, (job_dir / "log.txt").read_text()[-2000:]
    stopped_at = int(states[-1].stem.rsplit("_", 1)[1])
    assert 0 < stopped_at < 300

    app = create_app(config)  # the restarted server
    with TestClient(app) as client:
        summary = client.get(f"/models/{job_id}.json").json()
        assert summary["status"] == "Interrupted"
        assert 'id="model-resume"' in client.get(f"/models/{job_id}").text  # the one click
        r = client.post(f"/jobs/{job_id}/resume")
        assert r.status_code == 200 and f"--snapshot={states[-1]}" in r.json()["argv"]
        job = app.state.studio.scheduler.wait(job_id, 300)
        assert job.status == "Done", (job_dir / "log.txt").read_text()[-2000:]
        summary = client.get(f"/models/{job_id}.json").json()
        # the same form trained without interruption ends with the same weights (the resumed run's
        # readers continued where the interrupted one stopped; LeNet draws no random numbers)
        r = client.post("/models/images/classification.json", data=fields)
        straight = app.state.studio.scheduler.wait(r.json()["job_id"], 300)
        assert straight.status == "Done"
        expected = learned_blobs(store.job_dir(straight.id) / "snapshot_iter_300.caffemodel")
    assert summary["iter"] == 300
    resumed = learned_blobs(job_dir / "snapshot_iter_300.caffemodel")
    assert resumed.keys() == expected.keys() and len(expected) == 8  # (the files differ in their job paths)
    for name, blob in expected.items():
        np.testing.assert_array_equal(resumed[name], blob, err_msg=name)
    log = (job_dir / "log.txt").read_text()
    assert f"Resuming from {states[-1]}" in log or f"Restoring previous solver status from {states[-1]}" in log
