"""Studio DetectNet, as DIGITS' object detection: a dataset stored for DetectNet (DIGITS' features and labels
LMDBs, its KITTI class numbers, padding and resize, the validation minimum box size, the mean image), the nets a
DetectNet job makes of NVIDIA/caffe's network, the form's errors, and a short training through the scheduler with
the mAP chart and detections on the classify-one page.

The expected records are computed by hand from the label files written here; the network is NVIDIA/caffe's own
(``tests/data/forks``), shrunk to small images as a user would for a quick run.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import asset
from test_detectnet import NETWORK, TWO_CLASSES, _kitti_folders

from caffe.data.datum import datum_to_array, parse_datum
from caffe.data.db import open_db
from caffe.data.detectnet import KITTI_CLASS_NAMES, MAX_CLASSES, object_classes
from caffe.errors import NetError
from caffe.io import blobproto_to_array
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import parse_text, read_binary, read_net_param, read_solver_param
from caffe.studio import detection_datasets as dd
from caffe.studio import detectnet_networks as dtn
from caffe.studio.networks import DEPLOY_STATE, included

KITTI_LINES = (
    "Car 0.10 1 -1.0 20 10 60 30 1.5 1.6 3.9 1.0 1.5 20.0 0.2\n"
    "Pedestrian 0.00 0 0.5 70 5 76 50 1.7 0.6 0.8 2.0 1.6 8.0 -0.3\n"
    "Tree 0 0 0 1 1 3 3 1 1 1 0 0 30.0 0\n"
)


def _records(db: Path) -> list[tuple[bytes, np.ndarray]]:
    with open_db(db, "lmdb", "read") as d:
        return [(k, datum_to_array(parse_datum(v))) for k, v in d]


def _folder(root: Path) -> Path:
    """A KITTI-labelled and a VOC-labelled picture (100 x 60, label files beside them)."""
    root.mkdir(parents=True)
    picture = np.zeros((60, 100, 3), np.uint8)
    picture[10:30, 20:60] = (255, 0, 0)  # blue in BGR
    cv2.imwrite(str(root / "kitti.png"), picture)
    (root / "kitti.txt").write_text(KITTI_LINES)
    cv2.imwrite(str(root / "voc.png"), np.full((60, 100, 3), 90, np.uint8))
    (root / "voc.xml").write_text(
        "<annotation><size><width>100</width><height>60</height></size>"
        "<object><name>Car</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>40</xmax><ymax>30</ymax></bndbox>"
        "</object><object><name>dog</name><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
        "</object></annotation>"
    )
    return root


# ---------------------------------------------------------------------------------------------- the dataset
def test_a_detectnet_dataset_is_digits_features_and_labels_databases(tmp_path: Path):
    """Padded to 120 x 80 and doubled: DIGITS' KITTI numbers (car 1, pedestrian 8, others 0), every KITTI field and
    its farthest-first order, a VOC file's boxes, validation boxes under the minimum made don't care, the keys DIGITS
    writes, one table height, and the training images' mean."""
    train, val = _folder(tmp_path / "train"), tmp_path / "val"
    val.mkdir()
    cv2.imwrite(str(val / "v.png"), np.zeros((60, 100, 3), np.uint8))
    (val / "v.txt").write_text(KITTI_LINES)
    params = dd.DetectionParams.from_dict({
        "train_image_folder": str(train), "val_image_folder": str(val), "detector": "detectnet",
        "padding_image_width": "120", "padding_image_height": "80", "resize_image_width": "240",
        "resize_image_height": "160", "val_min_box_size": "10",
    })  # fmt: skip
    job = tmp_path / "job"
    job.mkdir()
    result = dd.create_detection_dataset(job, params)
    assert result["detector"] == "detectnet" and result["labels"] == list(KITTI_CLASS_NAMES)
    assert result["image_dims"] == [160, 240, 3] and result["mean_file"] == "mean.binaryproto"
    assert result["counts"] == {"train": 2, "val": 1}
    assert result["boxes"]["train"]["car"] == 2 and result["boxes"]["train"]["pedestrian"] == 1
    assert result["boxes"]["val"]["pedestrian"] == 0 and result["ignored_boxes"] == {"train": 2, "val": 2}
    order = (job / "train.txt").read_text().split()
    features, labels = _records(job / "train_db" / "features"), _records(job / "train_db" / "labels")
    assert [k for k, _ in features] == [k for k, _ in labels] == [b"000000000", b"000000001"]
    tables = {Path(name).stem: table for name, (_, table) in zip(order, labels, strict=True)}
    assert {t.shape for t in tables.values()} == {(1, 4, 16)}  # the most objects of any image (3) + the header
    kitti = tables["kitti"][0]
    assert kitti[0, :2].tolist() == [3, 16] and kitti[1:, 15].tolist() == [30, 20, 8]  # farthest first
    np.testing.assert_allclose(kitti[2], [40, 20, 80, 40, -1, 1, 0, 0.2, 0.1, 1, 3.9, 1.6, 1.5, 1, 1.5, 20])
    assert kitti[1, 5] == 0 and kitti[3, 5] == 8 and kitti[3, :4].tolist() == [140, 10, 12, 90]
    voc = tables["voc"][0]
    assert voc[0, :2].tolist() == [2, 16]
    np.testing.assert_allclose(voc[1], [20, 20, 60, 40, 0, 1, *[0] * 10])
    np.testing.assert_allclose(voc[2, :6], [0, 0, 10, 10, 0, 0])  # dog: don't care
    pictures = {Path(name).stem: image for name, (_, image) in zip(order, features, strict=True)}
    blue = pictures["kitti"].transpose(1, 2, 0)  # decoded: BGR
    assert blue.shape == (160, 240, 3) and not blue[122:].any() and not blue[:, 202:].any()
    assert blue[22:58, 42:118].mean(axis=(0, 1)).tolist() == pytest.approx([255, 0, 0], abs=1)
    mean = blobproto_to_array(read_binary(job / "mean.binaryproto", pb.BlobProto()))[0]
    np.testing.assert_allclose(mean, (pictures["kitti"] + pictures["voc"].astype(np.float64)) / 2, atol=0.51)
    (_, small), *_ = _records(job / "val_db" / "labels")
    assert small[0, 1:, 5].tolist() == [0, 1, 0]  # the pedestrian 6 pixels wide is under the 10 pixel minimum


def test_custom_classes_number_a_detectnet_dataset_as_listed(tmp_path: Path):
    params = dd.DetectionParams.from_dict({
        "train_image_folder": str(_folder(tmp_path / "train")), "detector": "detectnet", "folder_pct_val": "0",
        "custom_classes": "dontcare,pedestrian,car", "encoding": "jpg",
    })  # fmt: skip
    job = tmp_path / "job"
    job.mkdir()
    result = dd.create_detection_dataset(job, params)
    assert result["labels"] == ["dontcare", "pedestrian", "car"] and result["image_dims"] == [60, 100, 3]
    classes = sorted(c for _, t in _records(job / "train_db" / "labels") for c in t[0, 1 : 1 + int(t[0, 0, 0]), 5])
    assert classes == [0, 0, 1, 2, 2]


def test_a_detectnet_dataset_refuses_a_bad_detector_and_classes_it_never_sees(tmp_path: Path):
    folder = _folder(tmp_path / "train")
    with pytest.raises(Exception, match="detector: must be one of ssd, detectnet"):
        dd.DetectionParams.from_dict({"train_image_folder": str(folder), "detector": "yolo"})
    (folder / "kitti.txt").write_text("Tree 0 0 0 1 1 3 3 1 1 1 0 0 30.0 0\n")
    (folder / "voc.xml").unlink()
    params = dd.DetectionParams.from_dict({"train_image_folder": str(folder), "detector": "detectnet"})
    with pytest.raises(Exception, match="no object class besides dontcare"):
        dd.make_plan(params)


# ---------------------------------------------------------------------------------------------- the nets
def _fork(path: Path = NETWORK) -> pb.NetParameter:
    return parse_text(path.read_text(), pb.NetParameter())


def test_the_forks_network_becomes_digits_train_val_and_deploy_nets(tmp_path: Path):
    sources = dtn.DetectNetSources(tmp_path / "train_db", tmp_path / "val_db", batch_size=3)
    train_val, batch, val_batch = dtn.train_val_net(_fork(), sources)
    assert (batch, val_batch) == (3, 3)
    data = {x.name: x for x in train_val.layer if x.type == "Data"}
    assert {name: (x.data_param.source, x.include[0].phase) for name, x in data.items()} == {
        "train_data": (str(tmp_path / "train_db" / "features"), pb.TRAIN),
        "train_label": (str(tmp_path / "train_db" / "labels"), pb.TRAIN),
        "val_data": (str(tmp_path / "val_db" / "features"), pb.TEST),
        "val_label": (str(tmp_path / "val_db" / "labels"), pb.TEST),
    }
    assert not any(x.type == "Input" for x in train_val.layer)
    assert all(not x.include or x.include[0].stage == [] for x in train_val.layer)  # phases only
    deploy = dtn.deploy_net(_fork(), (3, 128, 256))
    assert deploy.layer[0].type == "Input" and list(deploy.layer[0].input_param.shape[0].dim) == [1, 3, 128, 256]
    theirs = [x.name for x in _fork().layer if included(x, DEPLOY_STATE) and x.type != "Input"]
    assert [x.name for x in deploy.layer[1:]] == theirs and deploy.layer[-1].python_param.layer == "ClusterDetections"
    alone, batch, val_batch = dtn.train_val_net(_fork(), dtn.DetectNetSources(tmp_path / "t", None))
    assert {x.name for x in alone.layer if x.type == "Data"} == {"train_data", "train_label"} and batch == val_batch
    assert batch == 10  # the network's own


def test_class_names_come_from_the_networks_object_class_mapping():
    kitti = list(KITTI_CLASS_NAMES)
    assert dtn.class_names(_fork(TWO_CLASSES), kitti) == ["car", "pedestrian"]
    assert dtn.class_names(_fork(), kitti) == ["car"]
    assert dtn.unknown_classes(_fork(TWO_CLASSES), ["dontcare", "car"]) == [8]
    assert dtn.percent_outputs(_fork(TWO_CLASSES))[:3] == ["mAP-class0", "precision-class0", "recall-class0"]


def test_size_mismatches_name_the_layers_sized_for_other_images():
    """The fork's KITTI net on 256 x 128 images: its validation transformation (1248 x 384) and its clustering
    layers (1248 x 352) are sized for larger images; on its own 1248 x 384 images nothing is (its clustering
    covers the top 352 rows); the TRAIN transformation may crop to any size."""
    found = dtn.size_mismatches(_fork(), (256, 128))
    assert found == [
        "layer 'val_transform': 1248 x 384",
        "layer 'cluster': 1248 x 352",
        "layer 'cluster_gt': 1248 x 352",
    ]
    assert dtn.size_mismatches(_fork(), (1248, 384)) == []
    assert dtn.size_mismatches(_fork(), (1248, 350)) == found  # 2 rows short: every layer
    assert dtn.size_mismatches(parse_text(small_network(), pb.NetParameter()), (256, 128)) == []


def test_object_class_mappings_are_bounded():
    """A network class is a coverage channel: a mapping to channel 10^9 would allocate a name (and a label channel)
    per class up to it, so it is refused (the fields are unsigned: no negative class reaches here)."""
    for src, dst in ((1, 10**9), (3, MAX_CLASSES)):
        net = _fork()
        for layer in (x for x in net.layer if x.type == "DetectNetTransformation"):
            del layer.detectnet_groundtruth_param.object_class[:]
            layer.detectnet_groundtruth_param.object_class.add(src=src, dst=dst)
        with pytest.raises(NetError, match=f"layer 'train_transform'.*src: {src} dst: {dst}"):
            dtn.class_names(net, list(KITTI_CLASS_NAMES))
    truth = pb.DetectNetGroundTruthParameter(stride=16, image_size_x=64, image_size_y=32)
    truth.object_class.add(src=1, dst=MAX_CLASSES - 1)
    assert object_classes(truth) == {1: MAX_CLASSES - 1}


def test_a_network_without_its_label_layer_is_refused():
    net = _fork()
    net.layer.remove(next(x for x in net.layer if x.name == "train_label"))
    with pytest.raises(NetError, match="no TRAIN Data layer for the labels"):
        dtn.train_val_net(net, dtn.DetectNetSources(Path("t"), None))


# ---------------------------------------------------------------------------------------------- the studio
def small_network(path: Path = NETWORK, width: int = 256, height: int = 128) -> str:
    """NVIDIA/caffe's network for ``width`` x ``height`` images, as a user edits it for a small dataset."""
    net = _fork(path)
    for layer in net.layer:
        if layer.type == "DetectNetTransformation":
            truth = layer.detectnet_groundtruth_param
            truth.image_size_x, truth.image_size_y = width, height
        elif layer.type == "Input":
            layer.input_param.shape[0].dim[2:] = [height, width]
        elif layer.python_param.param_str:
            rest = layer.python_param.param_str.split(",")[2:]
            layer.python_param.param_str = ",".join([str(width), str(height), *rest])
    return str(net)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from test_studio_inference import make_client

    tmp = tmp_path_factory.mktemp("studio-detectnet")
    train, val = _kitti_folders(tmp / "train", 4, 0), _kitti_folders(tmp / "val", 2, 1)
    with make_client(tmp, [asset("."), tmp]) as client:
        studio = client.app.state.studio
        r = client.post(  # DIGITS' address: its datasets are DetectNet's
            "/datasets/generic/create/image-object-detection.json",
            data={
                "train_image_folder": str(train[0]), "train_label_folder": str(train[1]),
                "val_image_folder": str(val[0]), "val_label_folder": str(val[1]),
                "padding_image_width": "256", "padding_image_height": "128", "dataset_name": "kitti",
            },
        )  # fmt: skip
        assert r.status_code == 200, r.text
        job = studio.scheduler.wait(r.json()["job_id"], timeout=120)
        assert job.status == "Done" and job.result["detector"] == "detectnet"
        ssd = client.post(
            "/datasets/images/object-detection.json",
            data={"train_image_folder": str(train[0]), "train_label_folder": str(train[1]), "dataset_name": "ssd"},
        ).json()["job_id"]
        assert studio.scheduler.wait(ssd, timeout=120).status == "Done"
        gray = client.post(
            "/datasets/generic/create/image-object-detection.json",
            data={"train_image_folder": str(train[0]), "train_label_folder": str(train[1]), "dataset_name": "gray",
                  "padding_image_width": "256", "padding_image_height": "128", "channel_conversion": "L"},
        ).json()["job_id"]  # fmt: skip
        assert studio.scheduler.wait(gray, timeout=120).status == "Done"
        yield client, studio, job.id, ssd, gray


def _form(dataset: str, network: str, **more: str) -> dict[str, str]:
    return {
        "dataset": dataset, "model_name": "detectnet", "method": "custom", "custom_network": network,
        "train_epochs": "1", "batch_size": "2", "learning_rate": "0.0001", "lr_policy": "fixed", "random_seed": "1",
        **more,
    }  # fmt: skip


def test_form_errors_name_their_fields(env):
    client, _, detectnet, ssd, gray = env
    url = "/models/images/object-detection.json"
    ssd_net = asset("models/res10_ssd_face_prototxt_only/deploy.prototxt").read_text()
    for form, field, words in (
        (_form(ssd, small_network()), "dataset", "stored for SSD"),
        (_form(detectnet, ssd_net), "dataset", "stored for DetectNet"),
        (_form(detectnet, small_network(), crop_size="100"), "crop_size", "no crop"),
        (_form(detectnet, small_network(width=1248, height=384)), "custom_network", "sized for other images"),
        (_form(detectnet, str(dtn.deploy_net(_fork(), (3, 128, 256)))), "custom_network", "a DetectNet deploy net"),
        (_form(detectnet, small_network().replace("dst: 0", "dst: 2000000000")), "custom_network", "dst from 0"),
        (_form(gray, small_network()), "custom_network", "3-channel images"),  # a grayscale dataset
    ):
        r = client.post(url, data=form)
        assert r.status_code == 400 and words in r.json()["fields"][field], r.text


def test_nvidia_detectnet_trains_validates_and_detects_in_the_studio(env, tmp_path: Path):
    """Two iterations of NVIDIA/caffe's cars-and-pedestrians network on the KITTI-style dataset: the job's files,
    the validation's mAP, precision and recall charted as percentages, the network's class names as the model's
    labels, and the classify-one page answering with DetectNet's log-vote confidences."""
    client, studio, dataset, *_ = env
    r = client.post("/models/images/object-detection.json", data=_form(dataset, small_network(TWO_CLASSES)))
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    job = studio.scheduler.wait(job_id, 600)
    job_dir = studio.store.job_dir(job_id)
    assert job.status == "Done", (job_dir / "output.log").read_text()[-3000:]
    solver = read_solver_param(job_dir / "solver.prototxt")
    assert (solver.max_iter, list(solver.test_iter), solver.test_interval) == (2, [1], 2)
    info = json.loads((job_dir / "info.json").read_text())
    assert info["detector"] == "detectnet" and info["classes"] == 2 and info["mean subtraction"] == "none"
    assert (job_dir / "labels.txt").read_text() == "car\npedestrian\n"
    assert client.get(f"/models/{job_id}").status_code == 200
    assert client.get(f"/datasets/{dataset}").status_code == 200
    summary = client.get(f"/models/{job_id}.json").json()
    assert summary["val"]["mAP-class0"]["kind"] == "percent"
    names = [t["name"] for t in summary["charts"]["main"]["data"]]
    assert "mAP-class1 (val)" in names and "loss_coverage (val)" in names
    traced = next(t for t in summary["charts"]["main"]["data"] if t["name"] == "recall-class0 (val)")
    assert traced["y"] == summary["val"]["recall-class0"]["value"] and all(0 <= v <= 100 for v in traced["y"])
    picture = cv2.imencode(".png", np.full((96, 160, 3), 40, np.uint8))[1].tobytes()
    page = client.post(
        "/models/images/classification/classify_one.json",
        data={"job_id": job_id},
        files={"image_file": ("road.png", picture)},
    )
    assert page.status_code == 200, page.text
    assert isinstance(page.json()["detections"], list)

    # a previous DetectNet model is a network to train again (its all-in-one net, its snapshot's weights)
    from caffe.studio import detection_models as dm
    from caffe.studio import models as m

    again = m.ModelForm.from_dict({**_form(dataset, ""), "method": "previous", "previous_networks": job_id,
                                   "previous_epoch": "1"})  # fmt: skip
    files = dm.build_files(studio.store, again, tmp_path / "next")
    assert files.weights == job_dir / "snapshot_iter_2.caffemodel" and files.labels == ["car", "pedestrian"]
    assert files.train_val == read_net_param(job_dir / "train_val.prototxt")

    # promoted to a pretrained model, it is a DetectNet network to fine-tune (its all-in-one net, its weights)
    r = client.post(f"/models/{job_id}/to_pretrained", data={"job_name": "detectnet, promoted"})
    assert r.status_code == 201, r.text
    promoted = r.json()["job_id"]
    from caffe.studio import inference

    source = inference.resolve(studio.store, promoted)  # its net subtracts its own mean: none added, as trained
    assert source.mean_mode == "none" and source.mean_file is None and source.labels == ("car", "pedestrian")
    form = m.ModelForm.from_dict({**_form(dataset, ""), "method": "pretrained", "pretrained_networks": promoted})
    files = dm.build_files(studio.store, form, tmp_path / "promoted")
    assert files.weights == studio.store.job_dir(promoted) / "weights.caffemodel"
    assert files.train_val == read_net_param(job_dir / "train_val.prototxt") and files.labels == ["car", "pedestrian"]

    # the downloaded archive deploys on its own: a two-class DetectNet detector, no mean (the net subtracts its own)
    from caffe import deploy

    archive = client.get(f"/models/{job_id}/download.tar.gz")
    assert archive.status_code == 200
    (tmp_path / "detectnet.tar.gz").write_bytes(archive.content)
    model = deploy.open_model(deploy.find_model(tmp_path / "detectnet.tar.gz"), warn=False)
    assert isinstance(model, deploy.DetectionModel) and model.class_tops and model.preprocessing.mean is None
    assert list(model.labels) == ["car", "pedestrian"] and model.input_shape == (3, 128, 256)

    # DIGITS' "Pretrained model" of a custom network: a weights file inside the data roots, copied by layer name;
    # posted as DIGITS' REST scripts do (its generic-model address, Adam as its DetectNet tutorial, no mean)
    snapshot = str(job_dir / "snapshot_iter_2.caffemodel")
    form = _form(dataset, small_network(TWO_CLASSES), custom_network_snapshot=snapshot, solver_type="ADAM")
    r = client.post("/models/images/generic.json", data={**form, "use_mean": "none"})
    assert r.status_code == 201, r.text
    again = studio.scheduler.wait(r.json()["job_id"], 600)
    log = (studio.store.job_dir(again.id) / "log.txt").read_text()
    assert again.status == "Done" and f"Finetuning from {snapshot}" in log
    assert read_solver_param(studio.store.job_dir(again.id) / "solver.prototxt").type == "Adam"
    for path in ("/etc/hostname", f"{job_dir}/../../../../etc/hostname", str(job_dir / "none.caffemodel")):
        form = _form(dataset, small_network(), custom_network_snapshot=path, data_roots="/")  # roots: the server's
        r = client.post("/models/images/object-detection.json", data=form)
        assert r.status_code == 400 and "custom_network_snapshot" in r.json()["fields"], (path, r.text)


def test_the_dataset_page_and_explorer_show_detectnet_records(env):
    """The explorer draws a record's boxes from its box table: the grey picture's bright rectangles are outlined
    in the class colours, at the pixels the label file gives (the padding leaves them in place)."""
    client, studio, dataset, *_ = env
    page = client.get(f"/datasets/{dataset}")
    assert page.status_code == 200 and "train_db/features" in page.text and "DetectNet" in page.text
    assert client.get(f"/datasets/{dataset}/explore?db=train").status_code == 200
    r = client.get(f"/datasets/{dataset}/explore/image?db=train&index=0")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    drawn = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == (128, 256, 3)
    assert not drawn[100:, 170:].any()  # the black padding right of and below the 160 x 96 picture
    order = (studio.store.job_dir(dataset) / "train.txt").read_text().split()
    label = Path(order[0].replace("/images/", "/labels/")).with_suffix(".txt")
    left, top = (int(float(v)) for v in label.read_text().split()[4:6])
    assert tuple(drawn[top + 5, left]) not in ((40, 40, 40), (200, 200, 200))  # a box edge, not the picture
    assert client.get(f"/datasets/{dataset}/explore/image?db=train&index=99").status_code == 404


def test_a_grayscale_detectnet_dataset_stores_one_channel(tmp_path: Path):
    """DIGITS' channel_conversion L: one-channel features (the luma of the picture), a one-channel mean and image
    size; DIGITS' "none" (the file's own mode) is refused."""
    folder = _folder(tmp_path / "train")
    values = {"train_image_folder": str(folder), "detector": "detectnet", "folder_pct_val": "0",
              "channel_conversion": "L"}  # fmt: skip
    job = tmp_path / "job"
    job.mkdir()
    result = dd.create_detection_dataset(job, dd.DetectionParams.from_dict(values))
    assert result["image_dims"] == [60, 100, 1]
    order = (job / "train.txt").read_text().split()
    (_, kitti), *_ = [r for name, r in zip(order, _records(job / "train_db" / "features"), strict=True)
                      if Path(name).stem == "kitti"]  # fmt: skip
    assert kitti.shape == (1, 60, 100)
    blue = cv2.cvtColor(np.array([[[255, 0, 0]]], np.uint8), cv2.COLOR_BGR2GRAY)[0, 0]  # the rectangle's luma
    assert abs(int(kitti[0, 20, 40]) - int(blue)) <= 1 and kitti[0, 50, 90] == 0
    mean = blobproto_to_array(read_binary(job / "mean.binaryproto", pb.BlobProto()))
    assert mean.shape == (1, 1, 60, 100)
    with pytest.raises(Exception, match="channel_conversion: must be RGB or L"):
        dd.DetectionParams.from_dict({**values, "channel_conversion": "none"})


def test_customize_gives_the_detectnet_train_val_net_to_edit(env):
    """ "Customize" on a DetectNet network: the train/val net the job would train, its Data layers reading the
    dataset's features and labels at the form's batch size."""
    client, studio, dataset, *_ = env
    r = client.post("/models/customize.json", data=_form(dataset, small_network()))
    assert r.status_code == 200, r.text
    body = r.json()
    net = parse_text(body["network"], pb.NetParameter())
    data = {x.name: x.data_param for x in net.layer if x.type == "Data"}
    root = studio.store.job_dir(dataset)
    assert data["train_data"].source == str(root / "train_db" / "features")
    assert data["val_label"].source == str(root / "val_db" / "labels")
    assert {p.batch_size for p in data.values()} == {2} and body["batch_size"] == 2
