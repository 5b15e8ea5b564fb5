"""Studio object-detection models: SSD networks taken apart and put back as a job's train/val and deploy nets
(checked against the res10 face detector's own training net, which its .caffemodel embeds), the form's errors, and
a real fine-tuning of the res10 detector through the scheduler on a two-image dataset, then its boxes on the
classify-one page."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from conftest import asset

from caffe import common
from caffe.data.annotation import annotated_datum
from caffe.data.db import item_key, open_db
from caffe.net import Net
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_net_param, read_net_param_binary, read_solver_param
from caffe.studio import detection_networks as dn
from caffe.studio import validate
from caffe.studio.networks import fill_missing_fillers

SSD_DEPLOY = "models/res10_ssd_face_prototxt_only/deploy.prototxt"
SSD_WEIGHTS = "models/res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel"
FACES = {  # the res10 detector's own boxes (confidence > 0.5) on the MTCNN test photos, in pixels
    "models/mtcnn_face_caffe/test1.jpg": [(297, 87, 363, 170), (89, 18, 155, 107)],
    "models/mtcnn_face_caffe/test2.jpg": [(192, 62, 346, 268)],
}
FORKS = Path(__file__).parent / "data" / "forks"
MOBILENET_DEPLOY = FORKS / "MobileNet-SSD_MobileNetSSD_deploy.prototxt"
MOBILENET_TRAIN = FORKS / "MobileNet-SSD_voc_MobileNetSSD_train.prototxt"


def _parts(path: Path) -> dn.SsdParts:
    return dn.ssd_parts(read_net_param(path))


def _embedded_training_net() -> pb.NetParameter:
    return read_net_param_binary(asset(SSD_WEIGHTS))


def _layer(net: pb.NetParameter, kind: str) -> pb.LayerParameter:
    return next(x for x in net.layer if x.type == kind and not any(r.phase == pb.TEST for r in x.include))


# ---------------------------------------------------------------------------------------------- the nets
def test_a_deploy_net_gets_the_forks_standard_loss_and_augmentation():
    """The loss and the training transformation made for res10's deploy net are those its authors trained it
    with (the training net inside its .caffemodel)."""
    parts = _parts(asset(SSD_DEPLOY))
    assert (parts.loc, parts.conf, parts.prior) == ("mbox_loc", "mbox_conf", "mbox_priorbox")
    assert [x.type for x in parts.chain] == ["Reshape", "Softmax", "Flatten"]
    assert parts.input_shape == (3, 300, 300) and parts.classes == 2
    embedded = _embedded_training_net()
    theirs = _layer(embedded, "MultiBoxLoss")
    assert parts.loss.multibox_loss_param == theirs.multibox_loss_param
    assert parts.loss.loss_param == theirs.loss_param
    assert list(parts.loss.propagate_down) == list(theirs.propagate_down)
    data = _layer(embedded, "AnnotatedData")
    transform = dn.default_train_transform(300, 300, [104.0, 117.0, 123.0], 1.0)
    assert transform == data.transform_param
    assert dn.default_samplers() == list(data.annotated_data_param.batch_sampler)


def test_a_training_net_keeps_its_own_augmentation_and_gets_its_authors_test_layers():
    """MobileNet-SSD's train.prototxt alone gives the validation layers its author wrote in test.prototxt: the data
    layer's transformation, the confidence chain, DetectionOutput and DetectionEvaluate."""
    parts = _parts(MOBILENET_TRAIN)
    train = _layer(read_net_param(MOBILENET_TRAIN), "AnnotatedData")
    assert parts.train_transform == train.transform_param and parts.train_batch == train.data_param.batch_size
    assert parts.samplers == list(train.annotated_data_param.batch_sampler)
    assert dn.network_mean(parts) == ([127.5, 127.5, 127.5], pytest.approx(0.007843))
    sources = dn.DataSources("train_lmdb", "test_lmdb", "labelmap.prototxt", 24, 8, [])
    ours = [x for x in dn.train_val_net(parts, sources).layer if x.include and x.include[0].phase == pb.TEST]
    theirs = [
        x
        for x in read_net_param(FORKS / "MobileNet-SSD_voc_MobileNetSSD_test.prototxt").layer
        if x.type in ("AnnotatedData", "DetectionOutput", "DetectionEvaluate") or x.name.startswith("mbox_conf_")
    ]
    assert [x.name for x in ours] == ["data", *(x.name for x in theirs[1:])]
    assert ours[0].transform_param == theirs[0].transform_param
    for mine, real in zip(ours[1:], theirs[1:], strict=True):
        real.ClearField("include")
        mine.ClearField("include")
        assert mine == real


@pytest.mark.parametrize("path", [SSD_DEPLOY, MOBILENET_DEPLOY, MOBILENET_TRAIN], ids=["res10", "mobilenet", "train"])
@pytest.mark.parametrize("classes", [2, 5])
def test_retargeted_nets_build_with_one_score_per_prior_and_class(path, classes):
    """After retargeting, the deploy net's confidences hold ``classes`` scores for each of the priors its PriorBox
    layers make, and the train/val net builds in both phases."""
    parts = _parts(asset(path) if isinstance(path, str) else path)
    old = parts.classes
    renamed = dn.retarget(parts, classes, finetune=True)
    assert len(renamed) == (6 if classes != old else 0)
    assert all(new == f"{name}_retrain" for name, new in renamed)
    fill_missing_fillers(parts.body)
    deploy = Net(dn.deploy_net(parts), common.TEST)
    priors = deploy.blobs["mbox_priorbox"].data.shape[2] // 4
    assert deploy.blobs["mbox_conf_flatten"].data.shape == (1, priors * classes)
    assert deploy.blobs["mbox_loc"].data.shape == (1, priors * 4)
    sources = dn.DataSources("train_db", "val_db", "labelmap.prototxt", 2, 1, [104.0, 117.0, 123.0])
    train_val = dn.train_val_net(parts, sources)
    validate.check(train_val, dn.deploy_net(parts), parts.input_shape, validation=True)
    evaluate = train_val.layer[-1]
    assert evaluate.type == "DetectionEvaluate" and evaluate.detection_evaluate_param.num_classes == classes
    assert [x.include[0].phase for x in train_val.layer if x.type == "MultiBoxLoss"] == [pb.TRAIN]


def test_not_an_ssd_net_is_a_clear_error():
    from caffe.errors import NetError

    net = read_net_param(asset("models/squeezenet_v1.0/deploy.prototxt"))
    with pytest.raises(NetError, match="not an SSD detector"):
        dn.ssd_parts(net)


# ---------------------------------------------------------------------------------------------- the studio
def _detection_dataset(store, folder: Path) -> str:
    """A finished object-detection dataset job as the dataset job leaves one: the two face photos, their boxes,
    in train_db and val_db."""
    job = store.create("dataset", "faces", {"task": "object-detection"})
    d = store.job_dir(job.id)
    for split in ("train", "val"):
        with open_db(d / f"{split}_db", "lmdb", "new") as db, db.transaction() as txn:
            for i, (name, boxes) in enumerate(FACES.items()):
                image = cv2.imread(str(asset(name)))
                h, w = image.shape[:2]
                normalized = [(1, x0 / w, y0 / h, x1 / w, y1 / h) for x0, y0, x1, y1 in boxes]
                txn.put(item_key(i, name), annotated_datum(image, normalized, encoding="jpg").SerializeToString())
    (d / "labelmap.prototxt").write_text(
        'item { name: "background" label: 0 display_name: "background" }\n'
        'item { name: "face" label: 1 display_name: "face" }\n'
    )
    (d / "labels.txt").write_text("background\nface\n")
    result = {"task": "object-detection", "labels": ["background", "face"], "classes": 2,
              "counts": {"train": 2, "val": 2}}  # fmt: skip
    store.update(job.id, status="Done", result=result)
    return job.id


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from test_studio_inference import make_client

    tmp = tmp_path_factory.mktemp("studio-detection-models")
    with make_client(tmp, [asset("."), tmp]) as client:
        studio = client.app.state.studio
        dataset = _detection_dataset(studio.store, tmp)
        r = client.post(
            "/pretrained_models.json",
            data={"job_name": "res10", "width": "300", "height": "300", "mean_values": "104,117,123"},
            files={
                "weights_file": ("res10.caffemodel", asset(SSD_WEIGHTS).read_bytes()),
                "deploy_file": ("deploy.prototxt", asset(SSD_DEPLOY).read_bytes()),
            },
        )
        assert r.status_code == 201, r.text
        yield client, studio, dataset, r.json()["job_id"]


def _form(dataset: str, pretrained: str, **more: str) -> dict[str, str]:
    return {
        "dataset": dataset,
        "model_name": "faces again",
        "method": "pretrained",
        "pretrained_networks": pretrained,
        "train_epochs": "1",
        "batch_size": "2",
        "learning_rate": "0.0001",
        "lr_policy": "fixed",
        "random_seed": "1",
        **more,
    }


def test_form_errors_name_their_fields(env):
    client, _, dataset, pretrained = env
    url = "/models/images/object-detection.json"
    for extra, field in (
        ({"crop_size": "224"}, "crop_size"),
        ({"method": "standard"}, "standard_networks"),
        ({"method": "custom", "custom_network": (asset("models/squeezenet_v1.0/deploy.prototxt")).read_text()},
         "custom_network"),
    ):  # fmt: skip
        r = client.post(url, data=_form(dataset, pretrained, **extra))
        assert r.status_code == 400 and field in r.json()["fields"], (extra, r.text)
    # DIGITS' generic model address: the dataset's task decides (a detector here), errors as the studio's own
    r = client.post("/models/images/generic.json", data=_form(dataset, pretrained, crop_size="224"))
    assert r.status_code == 400 and "crop_size" in r.json()["fields"]
    generic = client.get(f"/models/images/generic/new?dataset={dataset}")
    assert generic.status_code == 200 and "New Object Detection Model" in generic.text
    page = client.get("/models/images/object-detection/new")
    assert page.status_code == 200 and "New Object Detection Model" in page.text
    assert f'value="{dataset}"' in page.text and 'id="method-standard"' not in page.text


def test_fine_tuning_res10_trains_validates_and_detects(env, tmp_path):
    """The res10 face detector fine-tuned for one iteration on the two photos: the job's files are an SSD
    training with mAP validation, the chart has the mean AP, and the new snapshot finds the faces again."""
    client, studio, dataset, pretrained = env
    r = client.post("/models/images/object-detection.json", data=_form(dataset, pretrained))
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    job = studio.scheduler.wait(job_id, 300)
    job_dir = studio.store.job_dir(job_id)
    assert job.status == "Done", (job_dir / "output.log").read_text()[-3000:]
    solver = read_solver_param(job_dir / "solver.prototxt")
    assert (solver.eval_type, solver.ap_version, solver.max_iter, list(solver.test_iter)) == (
        "detection", "11point", 1, [1],
    )  # fmt: skip
    info = json.loads((job_dir / "info.json").read_text())
    assert info["task"] == "object-detection" and info["renamed layers"] == []  # 2 classes, as res10's
    assert info["mean_values"] == [104.0, 117.0, 123.0]
    assert client.get(f"/models/{job_id}").status_code == 200
    summary = client.get(f"/models/{job_id}.json").json()
    chart = summary["val"]["detection_eval"]
    assert [t["name"] for t in summary["charts"]["main"]["data"]] == ["loss (train)", "mAP (val)"]
    assert chart["kind"] == "accuracy" and len(chart["value"]) == 2  # before and after the one iteration
    assert all(0.5 <= v <= 1.0 + 1e-6 for v in chart["value"])  # the three faces the net found before one small step
    page = client.post(
        "/models/images/classification/classify_one.json",
        data={"job_id": job_id},
        files={"image_file": ("test1.jpg", asset("models/mtcnn_face_caffe/test1.jpg").read_bytes())},
    )
    assert page.status_code == 200, page.text
    faces = [d for d in page.json()["detections"] if d["confidence"] > 0.5]
    assert len(faces) == 2 and {d["label"] for d in faces} == {"face"}
    for found in faces:
        assert any(max(abs(a - b) for a, b in zip(found["box"], truth, strict=True)) < 12 for truth in FACES[
            "models/mtcnn_face_caffe/test1.jpg"])  # fmt: skip

    # the downloaded archive is a deployable detector on its own: caffe.deploy finds the same faces
    from caffe import deploy

    archive = client.get(f"/models/{job_id}/download.tar.gz")
    assert archive.status_code == 200
    (tmp_path / "model.tar.gz").write_bytes(archive.content)
    model = deploy.open_model(deploy.find_model(tmp_path / "model.tar.gz"), warn=False)
    assert isinstance(model, deploy.DetectionModel) and model.preprocessing.mean is not None
    image = cv2.imread(str(asset("models/mtcnn_face_caffe/test1.jpg")))[:, :, ::-1]
    found = model.detect([image], 0.5)[0]
    assert sorted(round(v) for d in found for v in d.box) == sorted(round(v) for f in faces for v in f["box"])
    # and `caffe detect` on the archive (as docs/ssd-training.md says)
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "caffe", "detect", str(tmp_path / "model.tar.gz"),
         str(asset("models/mtcnn_face_caffe/test1.jpg")), "--format", "json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (cli,) = json.loads(out)
    assert sorted(d["label"] for d in cli["detections"]) == ["face", "face"]
    assert sorted(round(v) for d in cli["detections"] for v in d["box"]) == sorted(
        round(v) for f in faces for v in f["box"]
    )

    # promoted to a pretrained model, it detects the same faces and is a network to fine-tune again
    from caffe.studio import detection_models as dm
    from caffe.studio import models as m

    r = client.post(f"/models/{job_id}/to_pretrained", data={"job_name": "faces, tuned"})
    assert r.status_code == 201, r.text
    promoted = r.json()["job_id"]
    again = client.post(
        "/models/images/classification/classify_one.json",
        data={"job_id": promoted},
        files={"image_file": ("test1.jpg", asset("models/mtcnn_face_caffe/test1.jpg").read_bytes())},
    ).json()
    assert [d["box"] for d in again["detections"] if d["confidence"] > 0.5] == [f["box"] for f in faces]
    files = dm.build_files(studio.store, m.ModelForm.from_dict(_form(dataset, promoted)), tmp_path / "next")
    assert files.weights == studio.store.job_dir(promoted) / "weights.caffemodel" and files.info["renamed layers"] == []


def test_customize_gives_the_train_val_net_to_edit(env, tmp_path):
    """ "Customize" copies the job's train/val net into the editor; submitted back as a custom network it builds
    the same training (the classes set, the dataset's databases read)."""
    from caffe.studio import detection_models as dm
    from caffe.studio import models as m
    from caffe.studio.networks import parse_network

    client, studio, dataset, pretrained = env
    r = client.post("/models/customize.json", data=_form(dataset, pretrained))
    assert r.status_code == 200, r.text
    text = r.json()["network"]
    net = parse_network(text, "customized")
    data = [x for x in net.layer if x.type == "AnnotatedData"]
    assert [x.data_param.source for x in data] == [
        str(studio.store.job_dir(dataset) / "train_db"), str(studio.store.job_dir(dataset) / "val_db"),
    ]  # fmt: skip
    form = m.ModelForm.from_dict(_form(dataset, "", method="custom", custom_network=text))
    files = dm.build_files(studio.store, form, tmp_path)
    assert files.weights is None and files.train_val == net
    validate.check(files.train_val, files.deploy, (3, 300, 300), validation=True)


@pytest.mark.parametrize("path", [SSD_DEPLOY, MOBILENET_TRAIN], ids=["res10", "mobilenet"])
def test_a_jobs_own_train_val_net_round_trips(path):
    """A previous detection model's train/val net (the "previous networks" choice) gives the same net back."""
    parts = _parts(asset(path) if isinstance(path, str) else path)
    dn.retarget(parts, 3, finetune=True)
    fill_missing_fillers(parts.body)
    sources = dn.DataSources("train_db", "val_db", "labelmap.prototxt", 2, 1, [104.0, 117.0, 123.0])
    first = dn.train_val_net(parts, sources)
    again = dn.ssd_parts(first)
    assert again.classes == 3 and dn.retarget(again, 3, finetune=True) == []
    assert dn.train_val_net(again, sources) == first
    assert dn.deploy_net(again) == dn.deploy_net(parts)
