"""``caffe detect``, ``caffe.Detector.detect_ssd``, ``caffe serve``'s ``/detect`` and ``caffe segment``.

Truth for detection: OpenCV's own pipeline on the same image (``cv2.imread`` + ``cv2.dnn.blobFromImage(img,
1.0, (300, 300), (104, 177, 123))`` + ``cv2.dnn``) running OpenCV's res10 SSD face detector, its relative
boxes times the image's width and height. Truth for segmentation: an independent forward of the same net on
the image resized by ``cv2.resize``, its argmax taken back to the image under each pixel's centre.
"""

from __future__ import annotations

import csv
import io
import json
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import asset
from PIL import Image

import caffe
from caffe import deploy
from caffe.tools.cli import main

PROTO = "models/res10_ssd_face_prototxt_only/deploy.prototxt"
WEIGHTS = "models/res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel"
FACES = {"test1.jpg": 2, "test2.jpg": 1}
MEAN = "104,177,123"
LOW = 0.05  # a low threshold compares many rows, not only the confident faces


def _image(name: str) -> Path:
    return asset(f"models/mtcnn_face_caffe/{name}")


def _face_flags() -> list[str]:
    return ["--model", str(asset(PROTO)), "--weights", str(asset(WEIGHTS)), "--mean", MEAN]


_CV2: dict[str, np.ndarray] = {}


def cv2_detections(name: str, threshold: float) -> np.ndarray:
    """OpenCV's detections of an image above ``threshold``: rows (label, confidence, xmin, ymin, xmax, ymax)
    with the box in pixels, clipped to the image."""
    if name not in _CV2:
        img = cv2.imread(str(_image(name)), cv2.IMREAD_COLOR)
        net = cv2.dnn.readNetFromCaffe(str(asset(PROTO)), str(asset(WEIGHTS)))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setInput(cv2.dnn.blobFromImage(img, 1.0, (300, 300), (104.0, 177.0, 123.0)))
        rows = net.forward()[0, 0].astype(np.float64)
        h, w = img.shape[:2]
        scale = np.array([w, h, w, h], dtype=np.float64)
        boxes = np.clip(rows[:, 3:7] * scale, 0, scale)
        _CV2[name] = np.column_stack([rows[:, 1:3], boxes])
    rows = _CV2[name]
    return rows[rows[:, 1] > threshold]


def assert_same(found: list[tuple[int, float, list[float]]], name: str, threshold: float) -> None:
    """``found`` (label, confidence, box) equals OpenCV's detections: boxes to 1e-4 of the image's size
    (the acceptance's relative 1e-4), confidences to 1e-5, the same ones and in the same order."""
    ref = cv2_detections(name, threshold)
    assert len(found) == len(ref) > 0
    h, w = cv2.imread(str(_image(name))).shape[:2]
    np.testing.assert_array_equal([f[0] for f in found], ref[:, 0])
    np.testing.assert_allclose([f[1] for f in found], ref[:, 1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array([f[2] for f in found]) / [w, h, w, h], ref[:, 2:] / [w, h, w, h], atol=1e-4)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def face_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SSD label map naming the face class."""
    path = tmp_path_factory.mktemp("labels") / "labelmap_faces.prototxt"
    path.write_text(
        "# the face detector's classes\n"
        'item {\n  name: "none_of_the_above"\n  label: 0\n  display_name: "background"\n}\n'
        'item {\n  name: "face"\n  label: 1\n  display_name: "Face"\n}\n'
    )
    return path


# ---------------------------------------------------------------------------------------------- caffe detect


def test_detect_json_matches_cv2(capsys):
    names = list(FACES)
    code, out, _ = run_cli(capsys, "detect", *_face_flags(), "--format=json", *(str(_image(n)) for n in names))
    assert code == 0
    records = json.loads(out)
    assert [Path(r["input"]).name for r in records] == names
    for rec, name in zip(records, names, strict=True):
        h, w = cv2.imread(str(_image(name))).shape[:2]
        assert (rec["width"], rec["height"]) == (w, h)
        found = [(d["index"], d["confidence"], d["box"]) for d in rec["detections"]]
        assert len(found) == FACES[name]
        assert_same(found, name, 0.5)
        assert {d["label"] for d in rec["detections"]} == {"1"}  # no labels: the class number


def test_detect_low_threshold_csv_matches_cv2(capsys, face_labels):
    code, out, _ = run_cli(
        capsys, "detect", *_face_flags(), f"--threshold={LOW}", "--format", "csv", "--labels", str(face_labels),
        str(_image("test1.jpg")),
    )  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert set(rows[0]) == {"input", "index", "label", "confidence", "xmin", "ymin", "xmax", "ymax"}
    found = [
        (int(r["index"]), float(r["confidence"]), [float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")]) for r in rows
    ]
    assert len(found) > FACES["test1.jpg"]
    assert {r["label"] for r in rows} == {"Face"}  # the label map's display_name
    assert_same([(lab, c, b) for lab, c, b in found], "test1.jpg", LOW)


def test_detect_text_lines_and_draw(capsys, tmp_path, face_labels):
    draw = tmp_path / "drawn"
    code, out, _ = run_cli(
        capsys, "detect", *_face_flags(), "--labels", str(face_labels), "--draw", str(draw),
        str(_image("test1.jpg")), str(_image("test2.jpg")),
    )  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == sum(FACES.values())
    assert all('- "Face" [' in line for line in lines)
    assert lines[0].startswith(f"{_image('test1.jpg')}: 0.99")
    for name in FACES:
        drawn = cv2.imread(str(draw / name))
        original = cv2.imread(str(_image(name)))
        assert drawn.shape == original.shape
        diff = np.abs(drawn.astype(int) - original.astype(int)).max(axis=2)
        inside = np.zeros(diff.shape, bool)
        for _, _, x0, y0, x1, y1 in cv2_detections(name, 0.5):
            x0, y0, x1, y1 = (round(v) for v in (x0, y0, x1, y1))
            assert diff[y0:y1, x0].mean() > 40 and diff[y1, x0:x1].mean() > 40  # the box's edges
            inside[max(0, y0 - 30) : y1 + 5, max(0, x0 - 5) : x1 + 5] = True
        assert diff[~inside].mean() < 3  # elsewhere only the JPEG re-encoding differs


def test_detect_bad_inputs_and_flags(capsys, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    code, out, err = run_cli(
        capsys, "detect", *_face_flags(), str(tmp_path / "missing.jpg"), str(text), str(_image("test2.jpg"))
    )
    assert code == 1  # some inputs could not be read
    assert len(out.splitlines()) == FACES["test2.jpg"]
    assert "missing.jpg: no such file" in err and "notes.txt" in err
    code, _, err = run_cli(capsys, "detect", *_face_flags(), "--threshold=1.5", str(_image("test2.jpg")))
    assert code == 1 and "--threshold must be between 0 and 1" in err
    code, _, err = run_cli(capsys, "detect")
    assert code == 1 and "no model given" in err


def test_detect_refuses_a_classifier(capsys, classifier):
    code, _, err = run_cli(capsys, "detect", str(classifier), str(_image("test1.jpg")))
    assert code == 1 and "not a detector" in err and "Softmax" in err


# ---------------------------------------------------------------------------------------------- labels


def test_labelmap_and_plain_labels_read_by_the_one_reader(tmp_path, face_labels):
    assert deploy.read_labels(face_labels) == ["background", "Face"]
    gaps = tmp_path / "labelmap.prototxt"
    gaps.write_text('item { name: "a" label: 0 }\nitem { name: "c" label: 2 display_name: "C \\"x\\"" }\n')
    assert deploy.read_labels(gaps) == ["a", "1", 'C "x"']
    plain = tmp_path / "labels.txt"
    plain.write_text("background\nface\n\n")
    assert deploy.read_labels(plain) == ["background", "face"]
    bad = tmp_path / "bad_labelmap.prototxt"
    bad.write_text('item { name: "a" label: 0 }\nitem { name: "b" label: 0 }\n')
    with pytest.raises(deploy.ModelFilesError, match=r"bad_labelmap\.prototxt: not a valid label map .*twice"):
        deploy.read_labels(bad)


def test_a_model_folder_finds_its_labelmap(tmp_path, face_labels):
    folder = tmp_path / "res10"
    folder.mkdir()
    for src in (asset(PROTO), asset(WEIGHTS), face_labels):
        (folder / src.name).symlink_to(src)
    model = deploy.DetectionModel(deploy.find_model(folder), deploy.Settings(mean=MEAN))
    assert model.labels == ["background", "Face"] and model.classes == 2
    assert model.preprocessing.interpolation == "opencv" and model.describe()["kind"] == "detection"


# ---------------------------------------------------------------------------------------------- Detector API


def test_detector_detect_ssd_same_numbers():
    det = caffe.Detector(
        str(asset(PROTO)), str(asset(WEIGHTS)), mean=np.array([104, 177, 123]), raw_scale=255, channel_swap=(2, 1, 0)
    )
    images = [str(_image("test1.jpg")), caffe.io.load_image(str(_image("test2.jpg")))]  # a file and an array
    found = det.detect_ssd(images)
    assert [len(f) for f in found] == list(FACES.values())
    for f, name in zip(found, FACES, strict=True):
        assert_same([(d.label, d.confidence, list(d.box)) for d in f], name, 0.5)
        label, confidence, box = f[0]  # plain (label, confidence, box) tuples
        assert isinstance(label, int) and 0.5 < confidence <= 1 and len(box) == 4
    low = det.detect_ssd([str(_image("test1.jpg"))], threshold=LOW)[0]
    assert_same([(d.label, d.confidence, list(d.box)) for d in low], "test1.jpg", LOW)
    with pytest.raises(caffe.CaffeError, match="use detect_ssd"):
        det.detect_windows([(str(_image("test1.jpg")), [[0, 0, 10, 10]])])


# ---------------------------------------------------------------------------------------------- serve


def _tiny_net(folder: Path, body: str, shape: tuple[int, ...]) -> Path:
    """A model folder (deploy.prototxt + random weights) of ``body`` layers after an Input of ``shape``."""
    folder.mkdir(parents=True, exist_ok=True)
    dims = " ".join(f"dim: {d}" for d in shape)
    proto = folder / "deploy.prototxt"
    proto.write_text(f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n{body}')
    caffe.Net(str(proto), caffe.TEST).save(str(folder / "weights.caffemodel"))
    return folder


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    body = (
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        'inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.01 } } }\n'
        'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n'
    )
    return _tiny_net(tmp_path_factory.mktemp("cls") / "tiny", body, (1, 3, 8, 8))


def test_serve_detect_same_numbers_and_wrong_kinds(face_labels, classifier):
    from fastapi.testclient import TestClient

    from caffe.serve import create_app, load_model

    faces = load_model(f"faces={asset(PROTO)},{asset(WEIGHTS)}", mean=MEAN, labels=str(face_labels))
    tiny = load_model(f"tiny={classifier}")
    assert faces.kind == "detection" and tiny.kind == "classification"
    data = _image("test1.jpg").read_bytes()
    with TestClient(create_app([faces, tiny])) as c:
        r = c.post("/models/faces/detect", files={"file": ("test1.jpg", data, "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["model"], body["width"], body["height"]) == ("faces", 450, 344)
        assert_same([(d["index"], d["confidence"], d["box"]) for d in body["detections"]], "test1.jpg", 0.5)
        assert {d["label"] for d in body["detections"]} == {"Face"}
        low = c.post(f"/detect?threshold={LOW}", content=data, headers={"content-type": "image/jpeg"}).json()
        assert_same([(d["index"], d["confidence"], d["box"]) for d in low["detections"]], "test1.jpg", LOW)
        b64 = __import__("base64").b64encode(_image("test2.jpg").read_bytes()).decode()
        two = c.post("/models/faces/detect", json={"base64": b64, "threshold": 0.5}).json()
        assert_same([(d["index"], d["confidence"], d["box"]) for d in two["detections"]], "test2.jpg", 0.5)
        # the wrong kind of model: 400 naming the right route
        r = c.post("/models/faces/predict", files={"file": ("test1.jpg", data, "image/jpeg")})
        assert r.status_code == 400 and "/models/faces/detect" in r.json()["detail"]
        r = c.post("/models/tiny/detect", files={"file": ("test1.jpg", data, "image/jpeg")})
        assert r.status_code == 400 and "/models/tiny/predict" in r.json()["detail"]
        r = c.post(
            "/models/images/classification/classify_one.json",
            data={"job_id": "faces"},
            files={"image_file": ("a.jpg", data)},
        )
        assert r.status_code == 400
        assert c.post("/models/tiny/predict", files={"file": ("t.jpg", data, "image/jpeg")}).status_code == 200
        # bad input: 4xx with a message
        for kwargs, status in (
            ({"json": {"base64": b64, "threshold": 2}}, 422),
            ({"json": {"base64": b64, "threshold": "high"}}, 422),
            ({"json": {"base64": b64, "top_k": 3}}, 422),
            ({"files": {"file": ("x.jpg", b"this is text")}}, 400),
            ({"files": {"file": ("x.jpg", b"")}}, 400),
            ({"json": {"base64": b64, "extra": 1}}, 422),
        ):
            r = c.post("/models/faces/detect", **kwargs)
            assert r.status_code == status, (kwargs.keys(), r.text)
            assert r.json()["detail"]
        assert c.post("/models/none/detect", content=data).status_code == 404
        info = c.get("/models/faces").json()
        assert info["kind"] == "detection" and info["preprocessing"]["interpolation"] == "opencv"
        assert "/models/{name}/detect" in c.get("/openapi.json").json()["paths"]


# ---------------------------------------------------------------------------------------------- caffe segment

FCN = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "score" type: "Convolution" bottom: "pool1" top: "score"
  convolution_param { num_output: CLASSES kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 }
  bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "up" type: "Deconvolution" bottom: "score" top: "up"
  convolution_param { num_output: CLASSES group: CLASSES kernel_size: 2 stride: 2 bias_term: false
  weight_filler { type: "constant" value: 1 } } }
"""


def _scene(h: int, w: int) -> np.ndarray:
    """An RGB test picture: gradients and blocks, so that classes vary."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, ((x // 7 + y // 5) % 2) * 200], axis=2)
    return img.astype(np.uint8)


def _expected_classes(folder: Path, rgb: np.ndarray) -> np.ndarray:
    net = caffe.Net(str(folder / "deploy.prototxt"), caffe.TEST, weights=str(folder / "weights.caffemodel"))
    _, _, ih, iw = net.blobs["data"].data.shape
    bgr = cv2.resize(rgb[:, :, ::-1].copy(), (iw, ih), interpolation=cv2.INTER_LINEAR)
    net.blobs["data"].data[...] = bgr.transpose(2, 0, 1)[np.newaxis].astype(np.float32)
    scores = net.forward()["up"][0]
    labels = np.argmax(scores, axis=0)
    h, w = labels.shape
    height, width = rgb.shape[:2]
    out = np.zeros((height, width), dtype=np.int64)
    for y in range(height):  # the output pixel under each image pixel's centre, in exact arithmetic
        for x in range(width):
            out[y, x] = labels[int(Fraction(2 * y + 1, 2) * h / height), int(Fraction(2 * x + 1, 2) * w / width)]
    return out


def test_segment_writes_the_class_map_and_overlay(capsys, tmp_path):
    folder = _tiny_net(tmp_path / "fcn", FCN.replace("CLASSES", "5"), (1, 3, 32, 48))
    rgb = _scene(50, 70)
    image = tmp_path / "scene.png"
    Image.fromarray(rgb).save(image)
    out = tmp_path / "out"
    code, text, err = run_cli(capsys, "segment", str(folder), str(image), "--out", str(out), "--format=json")
    assert code == 0, err
    rec = json.loads(text)[0]
    classes = cv2.imread(rec["classes"], cv2.IMREAD_UNCHANGED)
    assert Path(rec["classes"]) == out / "scene_classes.png" and classes.dtype == np.uint8
    expected = _expected_classes(folder, rgb)
    assert classes.shape == (50, 70) and len(np.unique(expected)) > 1
    np.testing.assert_array_equal(classes, expected)
    overlay = np.asarray(Image.open(rec["overlay"]).convert("RGB")).astype(int)
    colours = deploy.palette(5)[classes].astype(int)
    np.testing.assert_allclose(overlay, 0.5 * rgb + 0.5 * colours, atol=0.51)
    assert sum(c["share"] for c in rec["top"]) == pytest.approx(1.0, abs=1e-3)
    assert "no mean" in err


def test_segment_more_than_256_classes_is_16_bit(capsys, tmp_path):
    folder = _tiny_net(tmp_path / "fcn300", FCN.replace("CLASSES", "300"), (1, 3, 8, 8))
    rgb = _scene(12, 10)
    image = tmp_path / "small.png"
    Image.fromarray(rgb).save(image)
    code, _, err = run_cli(capsys, "segment", str(folder), str(image), "--out", str(tmp_path / "o"), "--mean", "1,2,3")
    assert code == 0, err
    classes = cv2.imread(str(tmp_path / "o" / "small_classes.png"), cv2.IMREAD_UNCHANGED)
    assert classes.dtype == np.uint16 and classes.shape == (12, 10)
    model = deploy.SegmentationModel(deploy.find_model(folder), deploy.Settings(mean="1,2,3"))
    np.testing.assert_array_equal(classes, model.segment([rgb])[0])
    assert model.classes == 300


def test_segment_usage_errors(capsys, tmp_path, classifier):
    code, _, err = run_cli(capsys, "segment", str(classifier), str(_image("test1.jpg")))
    assert code == 1 and "--out DIR is required" in err
    code, _, err = run_cli(capsys, "segment", str(classifier), str(_image("test1.jpg")), "--out", str(tmp_path))
    assert code == 1 and "gives N x C x H x W" in err


# ---------------------------------------------------------------------------------------------- preprocessing


def test_opencv_interpolation_is_cv2_resize():
    rgb = _scene(37, 53)
    prep = deploy.Preprocessing((3, 20, 30), interpolation="opencv")
    np.testing.assert_array_equal(prep.resize(rgb), cv2.resize(rgb, (30, 20), interpolation=cv2.INTER_LINEAR))
    assert deploy.Preprocessing((3, 20, 30)).interpolation == "pillow"  # the classifiers' default is unchanged
    with pytest.raises(caffe.CaffeError, match="interpolation"):
        deploy.Preprocessing((3, 20, 30), interpolation="cubic")
