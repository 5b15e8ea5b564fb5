"""Studio segmentation models: FCN/SegNet-style nets taken apart and put back as a job's train/val and deploy nets
(score layers retargeted, FCN's fixed upsampling made per-class bilinear), and a small fully convolutional net
trained from scratch through the scheduler on painted rectangles until its per-pixel validation accuracy is high
and its classify-one shares match the painting."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from caffe import common
from caffe.data.datum import array_to_datum
from caffe.data.db import item_key, open_db
from caffe.io import array_to_blobproto
from caffe.net import Net
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import parse_text, read_net_param, read_solver_param
from caffe.studio import segmentation_networks as sn
from caffe.studio import validate
from caffe.studio.networks import fill_missing_fillers

FORKS = Path(__file__).parent / "data" / "forks"
SEGNET = FORKS / "SegNet-Tutorial_segnet_basic_inference.prototxt"
# FCN-32s' shape in small: scores at 1/4, a fixed (lr 0) deconvolution back up, a crop to the input
FCN = """name: "TinyFCN"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 4 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "score_fr" type: "Convolution" bottom: "conv1" top: "score_fr"
  convolution_param { num_output: 21 kernel_size: 1 } }
layer { name: "upscore" type: "Deconvolution" bottom: "score_fr" top: "upscore" param { lr_mult: 0 }
  convolution_param { num_output: 21 bias_term: false kernel_size: 8 stride: 4 } }
layer { name: "score" type: "Crop" bottom: "upscore" bottom: "data" top: "score" crop_param { axis: 2 offset: 2 } }
"""
# the net the training test fits (a training net: its data layer's scale is kept): colour to class is a per-pixel
# map, two small convolutions learn it
PAINT_NET = """name: "PaintNet"
layer { name: "images" type: "Data" top: "data" transform_param { scale: 0.00390625 } data_param { batch_size: 8 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "score" type: "Convolution" bottom: "conv1" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "xavier" } } }
"""
COLOURS = {1: (0, 0, 220), 2: (0, 200, 0)}  # BGR: class 1 red, class 2 green; class 0 a dark background


def _parts(text: str) -> sn.SegParts:
    return sn.seg_parts(parse_text(text, pb.NetParameter(), "net"))


# ---------------------------------------------------------------------------------------------- the nets
def test_fcn_scores_retarget_and_fixed_upsampling_becomes_bilinear_per_class():
    parts = _parts(FCN)
    assert parts.score == "score" and parts.tail == [] and sn.classes_of(parts) == 21
    renamed = sn.retarget(parts, 5, finetune=True)
    assert renamed == [("score_fr", "score_fr_retrain"), ("upscore", "upscore_retrain")]
    up = next(x for x in parts.body if x.name == "upscore_retrain").convolution_param
    assert (up.num_output, up.group, up.weight_filler.type) == (5, 5, "bilinear")
    fill_missing_fillers(parts.body)
    net = Net(sn.deploy_net(parts, (3, 32, 32)), common.TEST)
    assert net.blobs["score"].data.shape == (1, 5, 32, 32)
    # the bilinear upsampling of a constant score map is constant inside (each class channel on its own)
    up_w = net.params["upscore_retrain"][0].data
    assert up_w.shape == (5, 1, 8, 8) and np.allclose(up_w[0, 0], up_w[4, 0])


def test_segnet_keeps_its_softmax_for_deploy_and_trains_from_the_scores():
    parts = sn.seg_parts(read_net_param(SEGNET))
    assert parts.score == "conv_classifier" and [x.type for x in parts.tail] == ["Softmax"]
    assert sn.retarget(parts, 4, finetune=False) == [] and sn.classes_of(parts) == 4
    sources = sn.SegSources("t", "tl", "v", "vl", 2, 1, sn.image_transform(parts))
    train_val = sn.train_val_net(parts, sources)
    loss = next(x for x in train_val.layer if x.type == "SoftmaxWithLoss")
    assert list(loss.bottom) == ["conv_classifier", "label"] and loss.loss_param.ignore_label == 255
    accuracy = next(x for x in train_val.layer if x.type == "Accuracy")
    assert accuracy.accuracy_param.ignore_label == 255 and accuracy.include[0].phase == pb.TEST
    validate.check(train_val, sn.deploy_net(parts, (3, 360, 480)), (3, 360, 480), validation=True,
                   tops={"label": (1, 360, 480)})  # fmt: skip


def test_a_deeplab_training_net_with_image_seg_data_is_taken_apart():
    deeplab = """name: "deeplab"
layer { name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim" include { phase: TRAIN }
  image_data_param { source: "train.txt" batch_size: 10 label_type: PIXEL }
  transform_param { mirror: true crop_size: 321 mean_value: 104 mean_value: 117 mean_value: 123 } }
layer { name: "silence" type: "Silence" bottom: "data_dim" }
layer { name: "fc8" type: "Convolution" bottom: "data" top: "fc8" convolution_param { num_output: 21 kernel_size: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 } }
"""
    parts = _parts(deeplab)
    assert parts.score == "fc8" and parts.input_blob == "data" and parts.train_batch == 10
    assert parts.train_transform is not None and parts.train_transform.crop_size == 321
    assert [x.name for x in parts.body] == ["fc8"] and sn.classes_of(parts) == 21


def test_not_a_segmentation_net_is_a_clear_error():
    from caffe.errors import NetError

    classifier = """name: "Classifier"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
    with pytest.raises(NetError, match="no Convolution or Deconvolution layer makes its scores 'fc'"):
        sn.classes_of(_parts(classifier))
    lonely_loss = FCN + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" top: "loss" }\n'
    with pytest.raises(NetError, match="'loss' \\(SoftmaxWithLoss\\) needs scores and labels"):
        _parts(lonely_loss)


# ---------------------------------------------------------------------------------------------- the studio
def _paint(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 24 x 24 BGR picture with a red and a green rectangle on a dark background, and its label map (255 on
    each rectangle's outline: VOC's void)."""
    image = rng.integers(0, 40, (24, 24, 3)).astype(np.uint8)
    labels = np.zeros((24, 24), np.uint8)
    for label, colour in COLOURS.items():
        x0, y0 = rng.integers(0, 14, 2)
        w, h = rng.integers(5, 10, 2)
        image[y0 : y0 + h, x0 : x0 + w] = colour
        labels[y0 : y0 + h, x0 : x0 + w] = label
        cv2.rectangle(labels, (int(x0), int(y0)), (int(x0 + w - 1), int(y0 + h - 1)), 255, 1)
    return image, labels


def _segmentation_dataset(store, rng: np.random.Generator) -> str:
    """A finished segmentation dataset job as the dataset job leaves one (paired image and label databases)."""
    job = store.create("dataset", "paint", {"task": "segmentation"})
    d = store.job_dir(job.id)
    images = []
    for split, n in (("train", 32), ("val", 8)):
        with (
            open_db(d / f"{split}_db", "lmdb", "new") as db,
            db.transaction() as txn,
            open_db(d / f"{split}_labels_db", "lmdb", "new") as ldb,
            ldb.transaction() as ltxn,
        ):
            for i in range(n):
                image, labels = _paint(rng)
                images.append(image)
                key = item_key(i, f"{split}/{i}.png")
                txn.put(key, array_to_datum(image.transpose(2, 0, 1)).SerializeToString())
                ltxn.put(key, array_to_datum(labels[None]).SerializeToString())
    mean = np.mean([im.transpose(2, 0, 1) for im in images[:32]], axis=0, dtype=np.float64)
    (d / "mean.binaryproto").write_bytes(array_to_blobproto(mean[None].astype(np.float32)).SerializeToString())
    (d / "labels.txt").write_text("background\nred\ngreen\n")
    result = {"task": "segmentation", "labels": ["background", "red", "green"], "classes": 3,
              "counts": {"train": 32, "val": 8}, "image_dims": [24, 24, 3]}  # fmt: skip
    store.update(job.id, status="Done", result=result)
    return job.id


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from test_studio_inference import make_client

    tmp = tmp_path_factory.mktemp("studio-segmentation-models")
    with make_client(tmp, [tmp]) as client:
        studio = client.app.state.studio
        yield client, studio, _segmentation_dataset(studio.store, np.random.default_rng(0)), tmp


def _form(dataset: str, **more: str) -> dict[str, str]:
    return {"dataset": dataset, "model_name": "paint", "method": "custom", "custom_network": PAINT_NET,
            "train_epochs": "16", "batch_size": "8", "learning_rate": "0.5", "lr_policy": "fixed",
            "val_interval": "8", "random_seed": "2", **more}  # fmt: skip


def test_form_errors_name_their_fields(env):
    client, _, dataset, _ = env
    url = "/models/images/segmentation.json"
    for extra, field in (({"crop_size": "16"}, "crop_size"), ({"method": "standard"}, "standard_networks")):
        r = client.post(url, data=_form(dataset, **extra))
        assert r.status_code == 400 and field in r.json()["fields"], (extra, r.text)
    page = client.get("/models/images/segmentation/new")
    assert page.status_code == 200 and "New Image Segmentation Model" in page.text and f'value="{dataset}"' in page.text
    assert client.get("/models/images/painting/new").status_code == 404


def test_training_from_scratch_learns_the_painted_classes(env):
    """16 epochs (64 iterations) of a two-layer per-pixel net: validation accuracy (255 ignored) above 95 %, and
    classify-one's class shares are a painted picture's own."""
    client, studio, dataset, tmp = env
    r = client.post("/models/images/segmentation.json", data=_form(dataset))
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    job = studio.scheduler.wait(job_id, 300)
    job_dir = studio.store.job_dir(job_id)
    assert job.status == "Done", (job_dir / "log.txt").read_text()[-3000:]
    solver = read_solver_param(job_dir / "solver.prototxt")
    assert (solver.max_iter, solver.test_interval, list(solver.test_iter)) == (64, 32, [1])
    summary = client.get(f"/models/{job_id}.json").json()
    accuracy = summary["val"]["accuracy"]
    assert accuracy["kind"] == "accuracy" and accuracy["value"][-1] > 0.95, accuracy
    image, labels = _paint(np.random.default_rng(99))
    cv2.imwrite(str(tmp / "paint.png"), image)
    r = client.post(
        "/models/images/classification/classify_one.json",
        data={"job_id": job_id},
        files={"image_file": ("paint.png", (tmp / "paint.png").read_bytes())},
    )
    assert r.status_code == 200, r.text
    shares = {c["label"]: c["percent"] for c in r.json()["segmentation"]}
    painted = np.where(labels == 255, -1, labels)  # the outline is its rectangle's colour in the picture
    for label, name in ((1, "red"), (2, "green")):
        truth = 100.0 * ((painted == label) | ((labels == 255) & (image == COLOURS[label]).all(axis=2))).mean()
        assert shares[name] == pytest.approx(truth, abs=2.0), (name, shares)
    # promoted to a pretrained model (its mean, input scale and labels kept), it segments the same
    promoted = client.post(f"/models/{job_id}/to_pretrained", data={"job_name": "paint, trained"})
    assert promoted.status_code == 201, promoted.text
    r = client.post(
        "/models/images/classification/classify_one.json",
        data={"job_id": promoted.json()["job_id"]},
        files={"image_file": ("paint.png", (tmp / "paint.png").read_bytes())},
    )
    assert {c["label"]: c["percent"] for c in r.json()["segmentation"]} == shares


def test_a_jobs_own_train_val_net_round_trips():
    """A previous segmentation model's train/val net (the "previous networks" choice) gives the same net back."""
    parts = _parts(FCN)
    sn.retarget(parts, 4, finetune=True)
    fill_missing_fillers(parts.body)
    transform = pb.TransformationParameter(mean_file="mean.binaryproto")
    sources = sn.SegSources("t", "tl", "v", "vl", 2, 1, transform)
    first = sn.train_val_net(parts, sources)
    again = sn.seg_parts(first)
    assert sn.classes_of(again) == 4 and sn.retarget(again, 4, finetune=True) == []
    assert sn.train_val_net(again, sources) == first


def test_in_place_layers_on_the_scores_are_walked_past():
    """Found by scripts/fuzz.py (task_networks): an in-place layer writing the score blob made the walk back to
    the score layer loop forever; the walk now passes it to the layer it modifies."""
    text = FCN + 'layer { name: "score_relu" type: "ReLU" bottom: "score" top: "score" }\n'
    parts = _parts(text)
    assert sn.classes_of(parts) == 21
    assert sn.retarget(parts, 3, finetune=True) == [("score_fr", "score_fr_retrain"), ("upscore", "upscore_retrain")]
