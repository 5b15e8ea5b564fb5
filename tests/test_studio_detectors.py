"""Studio detectors and Caffe2 uploads: an SSD face detector uploaded as a pretrained model shows its boxes on
classify-one (JSON and page) and lists them per image on classify-many; a Caffe2 pair (init_net.pb +
predict_net.pb [+ value_info.json]) uploads through the pretrained form and classifies as its Caffe twin."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import asset
from test_detectnet import brightness_detector
from test_studio_inference import TINY_MEAN, TINY_NET, make_client, tiny_weights

import caffe
from caffe.caffe2.from_caffe import from_caffe
from caffe.proto import caffe2_pb2 as c2
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import parse_text

CLASSIFY = "/models/images/classification"
SSD_DEPLOY = "models/res10_ssd_face_prototxt_only/deploy.prototxt"
SSD_WEIGHTS = "models/res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel"
FACES = "models/mtcnn_face_caffe/test1.jpg"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("studio_det")
    with make_client(tmp, [asset("."), tmp]) as client:
        yield client, tmp


@pytest.fixture(scope="module")
def face_job(env):
    client, _ = env
    if not asset(SSD_WEIGHTS).is_file():
        pytest.skip("the res10 SSD face weights are not in the assets")
    r = client.post(
        "/pretrained_models.json",
        data={
            "job_name": "faces",
            "width": "300",
            "height": "300",
            "mean_values": "104,177,123",
        },
        files={
            "weights_file": ("res10.caffemodel", asset(SSD_WEIGHTS).read_bytes()),
            "deploy_file": ("deploy.prototxt", asset(SSD_DEPLOY).read_bytes()),
        },
    )
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def _faces(body: dict) -> list[dict]:
    return [d for d in body["detections"] if d["confidence"] > 0.5]


def test_detector_classify_one_json_and_page(env, face_job):
    client, _ = env
    image = asset(FACES).read_bytes()
    r = client.post(
        f"{CLASSIFY}/classify_one.json", data={"job_id": face_job}, files={"image_file": ("test1.jpg", image)}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    faces = _faces(body)
    assert len(faces) == 2, body
    from PIL import Image

    w, h = Image.open(asset(FACES)).size
    for d in faces:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert d["label"] == "1" and d["label_id"] == 1
    assert [p[1] for p in body["predictions"]] == [round(d["confidence"] * 100, 2) for d in body["detections"]]

    # the same boxes as caffe.deploy's DetectionModel gives for the files
    from caffe import deploy

    files = deploy.ModelFiles(asset(SSD_DEPLOY), asset(SSD_WEIGHTS), folder=asset(SSD_DEPLOY).parent)
    model = deploy.open_model(files, deploy.Settings(mean=np.array([104, 177, 123], np.float32)), warn=False)
    assert isinstance(model, deploy.DetectionModel)
    want = model.detect([deploy.decode_image(image, 3, "test1.jpg")], 0.5)[0]
    assert [round(d.confidence, 4) for d in want] == [d["confidence"] for d in body["detections"]]

    # a higher threshold keeps fewer; a bad one is a 400
    r = client.post(
        f"{CLASSIFY}/classify_one.json",
        data={"job_id": face_job, "threshold": "0.999999"},
        files={"image_file": ("test1.jpg", image)},
    )
    assert r.status_code == 200 and len(r.json()["detections"]) < 2
    for bad in ("2", "-0.1", "x", "nan"):
        r = client.post(
            f"{CLASSIFY}/classify_one.json",
            data={"job_id": face_job, "threshold": bad},
            files={"image_file": ("test1.jpg", image)},
        )
        assert r.status_code == 400, (bad, r.text)

    page = client.post(
        f"{CLASSIFY}/classify_one", data={"job_id": face_job}, files={"image_file": ("test1.jpg", image)}
    )
    assert page.status_code == 200, page.text
    html = page.text
    assert 'id="detected-image"' in html and "data:image/png;base64," in html
    assert html.count('class="detection"') == 2 and 'id="detection-2"' in html
    form = client.get(f"{CLASSIFY}/classify_one?job_id={face_job}")
    assert 'name="threshold"' in form.text and "csrf" in form.text.lower()


def test_detector_classify_many_and_top_n(env, face_job):
    client, _ = env
    listing = f"{asset(FACES)}\n{asset('models/mtcnn_face_caffe/test2.jpg')}\n"
    r = client.post(
        f"{CLASSIFY}/classify_many.json",
        data={"job_id": face_job},
        files={"image_list": ("list.txt", listing.encode())},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert "classifications" not in body and "top1_accuracy" not in body
    assert set(body["detections"]) == {str(asset(FACES)), str(asset("models/mtcnn_face_caffe/test2.jpg"))}
    assert len([d for d in body["detections"][str(asset(FACES))] if d["confidence"] > 0.5]) == 2

    page = client.post(
        f"{CLASSIFY}/classify_many", data={"job_id": face_job}, files={"image_list": ("list.txt", listing.encode())}
    )
    assert page.status_code == 200, page.text
    assert page.text.count('class="detected"') == 2 and page.text.count('class="detection"') >= 2

    r = client.post(
        f"{CLASSIFY}/top_n.json", data={"job_id": face_job}, files={"image_list": ("list.txt", listing.encode())}
    )
    assert r.status_code == 400 and "detector" in r.text


def test_a_digits_detectnet_upload_shows_its_boxes_and_log_votes(env):
    """A DetectNet model (its clustering a Python layer of NVIDIA/caffe's, built in: no consent needed) uploads as a
    pretrained model; classify-one and classify-many show its box and its confidence as log votes, not a percent."""
    client, tmp = env
    model = brightness_detector(tmp / "detectnet")
    r = client.post(
        "/pretrained_models.json",
        data={"job_name": "detectnet", "width": "128", "height": "64"},
        files={
            "weights_file": ("w.caffemodel", (model / "weights.caffemodel").read_bytes()),
            "deploy_file": ("deploy.prototxt", (model / "deploy.prototxt").read_bytes()),
        },
    )
    assert r.status_code == 201, r.text
    job = r.json()["job_id"]
    image = np.zeros((64, 128, 3), np.uint8)
    image[16:48, 32:64] = 255
    (tmp / "square.png").write_bytes(cv2.imencode(".png", image)[1].tobytes())
    png = (tmp / "square.png").read_bytes()
    r = client.post(f"{CLASSIFY}/classify_one.json", data={"job_id": job}, files={"image_file": ("s.png", png)})
    assert r.status_code == 200, r.text
    (found,) = r.json()["detections"]
    assert found["box"] == [32.0, 16.0, 64.0, 48.0] and found["shown"] == f"{np.float16(np.log(4)):.2f}"
    page = client.post(f"{CLASSIFY}/classify_one", data={"job_id": job}, files={"image_file": ("s.png", png)})
    assert '<td class="detection-confidence">1.39</td>' in page.text
    listing = f"{tmp / 'square.png'}\n".encode()
    page = client.post(f"{CLASSIFY}/classify_many", data={"job_id": job}, files={"image_list": ("l.txt", listing)})
    assert page.status_code == 200 and "0 (1.39) [32.0, 16.0, 64.0, 48.0]" in page.text


# --------------------------------------------------------------------------------------- Caffe2 uploads
def _caffe2_pair(tmp) -> tuple[bytes, bytes, bytes, bytes]:
    """The tiny studio net as Caffe2 files (init_net, predict_net, value_info) and its Caffe weights."""
    deploy, weights = tiny_weights(tmp / "c2src", seed=5)
    net = caffe.Net(str(deploy), caffe.TEST, weights=str(weights))
    model = from_caffe(parse_text(TINY_NET, pb.NetParameter()), net, "tiny")
    value_info = json.dumps({k: [1, list(v)] for k, v in model.value_info.items()}).encode()
    assert isinstance(model.init_net, c2.NetDef)
    return (model.init_net.SerializeToString(), model.predict_net.SerializeToString(), value_info, weights.read_bytes())


def test_caffe2_upload_classifies_as_its_caffe_twin(env):
    client, tmp = env
    init_net, predict_net, value_info, weights = _caffe2_pair(tmp)
    common = {"width": "24", "height": "24", "mean_values": ",".join(map(str, TINY_MEAN))}
    r = client.post(
        "/pretrained_models.json",
        data={"job_name": "tiny c2", **common},
        files={
            "init_net_file": ("init_net.pb", init_net),
            "predict_net_file": ("predict_net.pb", predict_net),
            "value_info_file": ("value_info.json", value_info),
            "labels_file": ("labels.txt", b"dolphin\nseahorse\n"),
        },
    )
    assert r.status_code == 201, r.text
    c2_job = r.json()["job_id"]
    r = client.post(
        "/pretrained_models.json",
        data={"job_name": "tiny caffe", **common},
        files={
            "weights_file": ("w.caffemodel", weights),
            "deploy_file": ("d.prototxt", TINY_NET),
            "labels_file": ("labels.txt", b"dolphin\nseahorse\n"),
        },
    )
    assert r.status_code == 201, r.text
    caffe_job = r.json()["job_id"]
    image = asset(FACES).read_bytes()
    got = {}
    for job in (c2_job, caffe_job):
        r = client.post(
            f"{CLASSIFY}/classify_one.json", data={"job_id": job}, files={"image_file": ("test1.jpg", image)}
        )
        assert r.status_code == 200, r.text
        got[job] = r.json()["predictions"]
    assert [p[0] for p in got[c2_job]] == [p[0] for p in got[caffe_job]]
    np.testing.assert_allclose([p[1] for p in got[c2_job]], [p[1] for p in got[caffe_job]], atol=0.02)
    assert "init_net_file" in client.get("/pretrained_models/new").text

    # without value_info.json the form's image settings (24 x 24, color) give the input shape
    r = client.post(
        "/pretrained_models.json",
        data={"job_name": "tiny c2 bare", **common},
        files={"init_net_file": ("init_net.pb", init_net), "predict_net_file": ("predict_net.pb", predict_net)},
    )
    assert r.status_code == 201, r.text
    bare = r.json()["job_id"]
    r = client.post(f"{CLASSIFY}/classify_one.json", data={"job_id": bare}, files={"image_file": ("test1.jpg", image)})
    assert r.status_code == 200, r.text  # (no labels uploaded: class numbers)
    assert [p[1] for p in r.json()["predictions"]] == [p[1] for p in got[c2_job]]


@pytest.mark.parametrize(
    "files, message",
    [
        ({"init_net_file": ("init_net.pb", b"x")}, "predict_net_file"),
        ({"predict_net_file": ("predict_net.pb", b"x")}, "init_net_file"),
        (
            {
                "init_net_file": ("init_net.pb", b"\xff\xfe garbage"),
                "predict_net_file": ("predict_net.pb", b"\x00\x01 no"),
            },
            "",
        ),
    ],
)
def test_caffe2_upload_refusals_are_4xx(env, files, message):
    client, _ = env
    r = client.post("/pretrained_models.json", data={"job_name": "bad c2"}, files=files)
    assert 400 <= r.status_code < 500, r.text
    assert message in r.text


def test_caffe2_and_caffe_files_together_refused(env):
    client, tmp = env
    init_net, predict_net, _, weights = _caffe2_pair(tmp)
    r = client.post(
        "/pretrained_models.json",
        data={"job_name": "both"},
        files={
            "init_net_file": ("init_net.pb", init_net),
            "predict_net_file": ("predict_net.pb", predict_net),
            "weights_file": ("w.caffemodel", weights),
        },
    )
    assert r.status_code == 400 and "not both" in r.text
    r = client.post(
        "/pretrained_models",
        data={"job_name": "both"},
        files={"init_net_file": ("init_net.pb", init_net)},
        headers={"accept": "text/html"},
    )
    assert r.status_code in (400, 403) and "predict_net" in r.text
