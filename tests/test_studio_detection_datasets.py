"""Studio object detection datasets: DIGITS' KITTI labels, the job's records and files, DIGITS' rules (custom
classes, padding, resize, minimum validation box size), bad input, and the routes.

Every image is a small synthetic picture written here with OpenCV, labelled with VOC XML, KITTI text or the SSD
fork's JSON; the expected normalized boxes are computed by hand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
from google.protobuf import text_format

import caffe
from caffe.data.annotation import label_map_names, read_kitti_objects, read_label_map
from caffe.data.db import item_key
from caffe.deploy.drawing import class_colour
from caffe.errors import CaffeError, DataError
from caffe.proto import caffe_pb2 as pb
from caffe.studio import detection_datasets as dd

W, H = 40, 20  # the images' width and height


# ---------------------------------------------------------------------------------------------
# helpers


def _image(path: Path, seed: int, size: tuple[int, int] = (W, H)) -> np.ndarray:
    """A noise picture (BGR) of ``size`` (width, height) saved at ``path``; returns its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return pixels


def _voc(path: Path, objects: list[tuple], size: tuple[int, int] = (W, H)) -> None:
    """A VOC XML file: ``objects`` are (name, xmin, ymin, xmax, ymax[, difficult])."""
    body = "".join(
        f"<object><name>{o[0]}</name><difficult>{int(len(o) > 5 and o[5])}</difficult><bndbox><xmin>{o[1]}</xmin>"
        f"<ymin>{o[2]}</ymin><xmax>{o[3]}</xmax><ymax>{o[4]}</ymax></bndbox></object>"
        for o in objects
    )
    path.write_text(f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{body}</annotation>")


def _kitti(path: Path, objects: list[tuple]) -> None:
    """A KITTI label file: ``objects`` are (type, left, top, right, bottom)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(f"{o[0]} 0.00 0 -1.5 {o[1]} {o[2]} {o[3]} {o[4]} 1.5 1.6 3.9 1 2 30 0.1\n" for o in objects)
    )


def _json(path: Path, objects: list[tuple], size: tuple[int, int] | None = None) -> None:
    """The fork's JSON: ``objects`` are (category_id, x, y, width, height)."""
    doc: dict = {"annotation": [{"category_id": o[0], "bbox": list(o[1:5])} for o in objects]}
    if size:
        doc["image"] = {"width": size[0], "height": size[1]}
    path.write_text(json.dumps(doc))


def _records(db_path: Path) -> list[tuple[bytes, pb.AnnotatedDatum]]:
    env = lmdb.open(str(db_path), readonly=True, lock=False)
    with env.begin() as txn:
        out = [(bytes(k), pb.AnnotatedDatum.FromString(v)) for k, v in txn.cursor()]
    env.close()
    return out


def _boxes(anno: pb.AnnotatedDatum) -> list[tuple]:
    """(label, xmin, ymin, xmax, ymax, difficult) of each stored box, rounded to float32 precision."""
    return [
        (g.group_label, *(round(v, 5) for v in (a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax)), a.bbox.difficult)
        for g in anno.annotation_group
        for a in g.annotation
    ]


def _pixels(anno: pb.AnnotatedDatum) -> np.ndarray:
    assert anno.type == pb.AnnotatedDatum.BBOX and anno.datum.encoded
    return cv2.imdecode(np.frombuffer(anno.datum.data, np.uint8), cv2.IMREAD_COLOR)


def _make(job_dir: Path, **values) -> dict:
    job_dir.mkdir(parents=True, exist_ok=True)
    return dd.create_detection_dataset(job_dir, dd.DetectionParams.from_dict(values))


# ---------------------------------------------------------------------------------------------
# DIGITS' KITTI label files


def test_kitti_reader_reads_type_and_box(tmp_path):
    path = tmp_path / "000001.txt"
    path.write_text(
        "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n\n"
        "DontCare -1 -1 -10 0.0 1.5 30 40 -1 -1 -1 -1000 -1000 -1000 -10 0.97\n"  # a 16th value: the score
    )
    objects = read_kitti_objects(path)
    assert [(o.name, o.xmin, o.ymin, o.xmax, o.ymax) for o in objects] == [
        ("car", 587.01, 173.33, 614.12, 200.12),
        ("dontcare", 0.0, 1.5, 30.0, 40.0),
    ]
    path.write_text("Car 0 0 0 1 2 3 4 1 1 1 0 0 0 0\nCar 0 0 0 1 2 3 4\n")
    with pytest.raises(DataError, match=r"000001\.txt:2: 8 values, a KITTI label line has 15"):
        read_kitti_objects(path)
    path.write_text("Car 0 0 0 1 nan 3 4 1 1 1 0 0 0 0\n")
    with pytest.raises(DataError, match=r"000001\.txt:1: the box .* is not 4 finite numbers"):
        read_kitti_objects(path)
    path.write_bytes(b"Car \xff 0 0 1 2 3 4 1 1 1 0 0 0 0\n")
    with pytest.raises(DataError, match=r"000001\.txt: not a UTF-8 text label file"):
        read_kitti_objects(path)
    path.write_text("Car 0 0 0 1 2 3 4 1 1 1 0 0 0 0\n" * 10)
    with pytest.raises(CaffeError, match="larger than the 100 bytes allowed for the label file"):
        read_kitti_objects(path, max_bytes=100)


# ---------------------------------------------------------------------------------------------
# the job, in-process


def test_voc_dataset_records_labelmap_and_split(tmp_path):
    data = tmp_path / "voc"
    pictures = {}
    for i in range(4):
        pictures[str(data / f"img{i}.png")] = _image(data / f"img{i}.png", i)
        _voc(data / f"img{i}.xml", [("Dog", 4, 2, 20, 10), ("cat", 0, 0, 40, 20, True), ("dog", 10, 5, 30, 15)])
    result = _make(tmp_path / "job", train_image_folder=str(data), folder_pct_val=25, val_min_box_size=0, seed=3)
    job = tmp_path / "job"
    assert result["task"] == "object-detection"
    assert result["labels"] == ["dontcare", "cat", "dog"] and result["classes"] == 3
    assert result["counts"] == {"train": 3, "val": 1}
    assert result["boxes"] == {"train": {"cat": 3, "dog": 6}, "val": {"cat": 1, "dog": 2}}
    assert result["image_dims"] is None and result["encoding"] == "png" and result["skipped"] == []
    assert result["difficult_boxes"] == {"train": 3, "val": 1} and result["ignored_boxes"] == {"train": 0, "val": 0}
    assert (job / "labels.txt").read_text() == "dontcare\ncat\ndog\n"
    assert label_map_names(read_label_map(job / "labelmap.prototxt")) == {"dontcare": 0, "cat": 1, "dog": 2}
    train = (job / "train.txt").read_text().splitlines()
    val = (job / "val.txt").read_text().splitlines()
    assert sorted(train + val) == sorted(pictures) and len(val) == 1
    for split, listed in (("train", train), ("val", val)):
        records = _records(job / f"{split}_db")
        assert [k for k, _ in records] == [item_key(i, p) for i, p in enumerate(listed)]
        for (_, anno), path in zip(records, listed, strict=True):
            assert np.array_equal(_pixels(anno), pictures[path])  # PNG: the very pixels
            # grouped by class in order of first appearance; corners / (40, 20)
            assert _boxes(anno) == [
                (2, 0.1, 0.1, 0.5, 0.5, False),
                (2, 0.25, 0.25, 0.75, 0.75, False),
                (1, 0, 0, 1, 1, True),
            ]
            assert [a.instance_id for g in anno.annotation_group for a in g.annotation] == [0, 1, 0]
    # the AnnotatedData layer (SSD's training input) reads the records: one label row per box
    text = f"""layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
        data_param {{ source: "{job / "train_db"}" batch_size: 3 backend: LMDB }} }}"""
    net = caffe.Net(text_format.Parse(text, pb.NetParameter()), caffe.TEST)
    net.forward()
    assert net.blobs["data"].data.shape == (3, 3, H, W)
    assert np.array_equal(net.blobs["data"].data[1], pictures[train[1]].transpose(2, 0, 1))
    rows = net.blobs["label"].data[0, 0]
    expected = [[0, 2, 0, 0.1, 0.1, 0.5, 0.5, 0], [0, 2, 1, 0.25, 0.25, 0.75, 0.75, 0], [0, 1, 0, 0, 0, 1, 1, 1]]
    assert rows.shape == (9, 8) and np.allclose(rows[:3], expected) and rows[3:, 0].tolist() == [1, 1, 1, 2, 2, 2]
    again = _make(tmp_path / "job2", train_image_folder=str(data), folder_pct_val=25, val_min_box_size=0, seed=3)
    assert again["counts"] == result["counts"]
    assert (tmp_path / "job2" / "train.txt").read_text() == (job / "train.txt").read_text()  # seeded


def test_kitti_folders_custom_classes_padding_resize_and_min_box(tmp_path):
    """DIGITS' rules: custom classes (unlisted names -> class 0, left out), the padding canvas, then the squash,
    validation boxes under val_min_box_size marked difficult (DIGITS: don't care)."""
    root = tmp_path / "kitti"
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            _image(root / split / "images" / f"{split}{i}.png", i)
            objects = [("Pedestrian", 4, 2, 20, 10), ("Car", 0, 0, 10, 10), ("Pedestrian", 0, 0, 40, 20)]
            _kitti(root / split / "labels" / f"{split}{i}.txt", objects)
    result = _make(
        tmp_path / "job",
        train_image_folder=str(root / "train" / "images"),
        train_label_folder=str(root / "train" / "labels"),
        val_image_folder=str(root / "val" / "images"),
        val_label_folder=str(root / "val" / "labels"),
        custom_classes=" DontCare, pedestrian ",
        padding_image_width=80,
        padding_image_height=40,
        resize_image_width=16,
        resize_image_height=8,
        val_min_box_size=10,
        encoding="jpg",
    )
    assert result["labels"] == ["dontcare", "pedestrian"] and result["warnings"] == []
    assert result["counts"] == {"train": 2, "val": 1} and result["image_dims"] == [8, 16, 3]
    assert result["boxes"] == {"train": {"pedestrian": 4}, "val": {"pedestrian": 2}}
    assert result["ignored_boxes"] == {"train": 2, "val": 1} and result["difficult_boxes"] == {"train": 0, "val": 1}
    # corners over the 80 x 40 canvas; the 16 x 8 pedestrian box is under 10 pixels high in the val set
    (_, train0), *_ = _records(tmp_path / "job" / "train_db")
    assert _boxes(train0) == [(1, 0.05, 0.05, 0.25, 0.25, False), (1, 0, 0, 0.5, 0.5, False)]
    (_, val0), *_ = _records(tmp_path / "job" / "val_db")
    assert _boxes(val0) == [(1, 0.05, 0.05, 0.25, 0.25, True), (1, 0, 0, 0.5, 0.5, False)]
    picture = _pixels(val0)
    assert picture.shape == (8, 16, 3) and picture[5:, 9:].max() < 40  # the black padding, squashed (JPEG-close)


def test_json_and_auto_formats_side_by_side_and_skipped_files(tmp_path):
    data = tmp_path / "mixed"
    _image(data / "a.png", 0)
    _json(data / "a.json", [("boat", 4, 2, 16, 8)])  # no size in the file: the image's own (40 x 20)
    _image(data / "b.png", 1)
    _json(data / "b.json", [("boat", 8, 4, 32, 16)], size=(80, 40))  # measured at 80 x 40: halved
    _image(data / "c.png", 2)
    _kitti(data / "c.txt", [("Boat", 0, 0, 20, 10)])
    _image(data / "d.png", 3)  # no label file
    _image(data / "e.png", 4)
    (data / "e.txt").write_text("Boat 0 0 0 1 2\n")  # a bad label file
    (data / "f.png").write_bytes(b"not a png")
    _kitti(data / "f.txt", [("boat", 0, 0, 1, 1)])
    (data / "notes.md").write_text("not an image")
    _image(data / ("n" * 251 + ".png"), 5)  # its .json label file's name would be too long: no label file
    result = _make(tmp_path / "job", train_image_folder=str(data), folder_pct_val=0, val_min_box_size=0)
    assert result["counts"] == {"train": 3, "val": 0} and result["labels"] == ["dontcare", "boat"]
    listed = (tmp_path / "job" / "train.txt").read_text().splitlines()
    records = {p: anno for p, (_, anno) in zip(listed, _records(tmp_path / "job" / "train_db"), strict=True)}
    assert _boxes(records[str(data / "a.png")]) == [(1, 0.1, 0.1, 0.5, 0.5, False)]
    assert _boxes(records[str(data / "b.png")]) == [(1, 0.1, 0.1, 0.5, 0.5, False)]
    assert _boxes(records[str(data / "c.png")]) == [(1, 0, 0, 0.5, 0.5, False)]
    reasons = {Path(s["path"]).name: s["reason"] for s in result["skipped"]}
    assert set(reasons) == {"d.png", "e.txt", "f.png", "notes.md", "n" * 251 + ".png"}, reasons
    assert "no label file (d{.xml/.json/.txt})" in reasons["d.png"]
    assert reasons["e.txt"] == f"{data / 'e.txt'}:1: 6 values, a KITTI label line has 15 (type ... rotation_y)"
    assert "not a readable image" in reasons["f.png"]
    assert not (tmp_path / "job" / "val_db").exists() and (tmp_path / "job" / "val.txt").read_text() == ""
    # label_format "voc" looks for .xml files only: no image has one
    with pytest.raises(DataError, match=r"train_image_folder: no image in .* has a label file"):
        _make(tmp_path / "job3", train_image_folder=str(data), label_format="voc")


def test_custom_classes_not_starting_with_dontcare_warns(tmp_path):
    data = tmp_path / "d"
    for i in range(2):
        _image(data / f"{i}.png", i)
        _kitti(data / f"{i}.txt", [("car", 0, 0, 10, 10), ("van", 0, 0, 40, 20), ("tram", 1, 1, 2, 2)])
    result = _make(tmp_path / "job", train_image_folder=str(data), custom_classes="car,van", folder_pct_val=50)
    assert result["labels"] == ["car", "van"] and "'car' is class 0, the background" in result["warnings"][0]
    assert result["boxes"] == {"train": {"van": 1}, "val": {"van": 1}}
    assert result["ignored_boxes"] == {"train": 2, "val": 2}
    with pytest.raises(DataError, match=r"custom_classes: no object .* of these classes \(found: car, tram, van\)"):
        _make(tmp_path / "job2", train_image_folder=str(data), custom_classes="dontcare,bus", folder_pct_val=0)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"train_image_folder": ""}, "train_image_folder: the folder of training images is required"),
        ({"label_format": "yaml"}, "label_format: must be one of"),
        ({"encoding": "none"}, "encoding: must be one of png, jpg"),
        ({"resize_image_width": "32"}, "resize_image_height: give both"),
        ({"padding_image_height": "32"}, "padding_image_width: give both"),
        ({"resize_image_width": "0", "resize_image_height": "8"}, "resize_image_width: must be between"),
        ({"padding_image_width": "1.5", "padding_image_height": "8"}, "padding_image_width: expected a whole number"),
        ({"val_min_box_size": "-1"}, "val_min_box_size: must be 0"),
        ({"seed": "-1"}, "seed: must be 0 or more"),
        ({"folder_pct_val": "100"}, "folder_pct_val: must be a percentage"),
        ({"val_label_folder": "/x"}, "val_image_folder: required"),
        ({"custom_classes": "dontcare,,car"}, "custom_classes: an empty class name"),
        ({"custom_classes": "car,Car"}, "custom_classes: 'car' listed more than once"),
        ({"custom_classes": "dontcare"}, "custom_classes: name the background"),
    ],
)
def test_bad_parameters_name_their_field(values, match):
    with pytest.raises(DataError, match=match):
        dd.DetectionParams.from_dict({"train_image_folder": "/x", **values})


def test_job_process_reports_bad_input_as_an_error_event(tmp_path):
    (tmp_path / "params.json").write_text(json.dumps({"train_image_folder": str(tmp_path / "nope")}))
    assert dd.main([str(tmp_path)]) == 1
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "error" and "train_image_folder: folder" in events[-1]["message"]
    (tmp_path / "params.json").write_text("[1, 2]")
    assert dd.main([str(tmp_path)]) == 1
    assert "not a JSON object" in (tmp_path / "events.jsonl").read_text().splitlines()[-1]
    assert dd.main([]) == 1


# ---------------------------------------------------------------------------------------------
# the routes, the scheduler and the job process


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from fastapi.testclient import TestClient

    from caffe.studio.app import create_app

    base = tmp_path_factory.mktemp("detection")
    data = base / "data"
    for i in range(5):  # 200 x 100 pictures, VOC labels beside them
        _image(data / "voc" / f"p{i}.png", i, size=(200, 100))
        _voc(data / "voc" / f"p{i}.xml", [("person", 20, 40, 120, 90), ("bike", 100, 10, 190, 60)], size=(200, 100))
    app = create_app({"jobs_dir": base / "jobs", "devices": ["cpu"], "data_roots": [str(data)]})
    with TestClient(app) as client:
        yield client, app.state.studio, data


@pytest.fixture(scope="module")
def voc_job(studio):
    client, st, data = studio
    r = client.post(
        "/datasets/images/object-detection.json",
        data={"train_image_folder": str(data / "voc"), "folder_pct_val": "40", "val_min_box_size": "0"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "voc" and body["status"] in ("Waiting", "Running")
    job = st.scheduler.wait(body["job_id"], timeout=120)
    assert job.status == "Done", (st.store.job_dir(job.id) / "log.txt").read_text()
    return job.id, st.store.job_dir(job.id)


def test_form_has_labelled_fields_and_folder_pickers(studio):
    client, _, data = studio
    html = client.get("/datasets/images/object-detection/new").text
    for name in ("train_image_folder", "train_label_folder", "val_image_folder", "val_label_folder"):
        field_id = name.replace("_", "-")
        assert re.search(f'id="{field_id}" data-folder-picker name="{name}"', html), name
        assert f'for="{field_id}"' in html
    others = "folder-pct-val label-format custom-classes val-min-box-size padding-image-width resize-image-width"
    for field_id in (*others.split(), "encoding", "seed", "dataset-name"):
        assert f'id="{field_id}"' in html and f'for="{field_id}"' in html, field_id
    assert re.search(r'id="val-min-box-size"[^>]*value="25"', html)  # DIGITS' default
    assert str(data) in html  # the allowed folders are named


def test_dataset_json_and_page(studio, voc_job):
    client, _, data = studio
    job_id, job_dir = voc_job
    info = client.get(f"/datasets/{job_id}.json").json()
    r = info["result"]
    assert info["task"] == "object-detection" and info["params"]["task"] == "object-detection"
    assert r["task"] == "object-detection" and r["labels"] == ["dontcare", "bike", "person"] and r["classes"] == 3
    assert r["counts"] == {"train": 3, "val": 2}
    assert r["boxes"] == {"train": {"bike": 3, "person": 3}, "val": {"bike": 2, "person": 2}}
    assert r["image_dims"] is None and r["encoding"] == "png" and r["skipped"] == [] and r["seconds"] >= 0
    events = [json.loads(line) for line in (job_dir / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["boxes"] == r["boxes"]
    assert "Dataset done: 3 train, 2 val" in (job_dir / "log.txt").read_text()
    page = client.get(f"/datasets/{job_id}").text
    assert 'id="count-train">3<' in page and 'id="count-val">2<' in page
    assert 'id="boxes-train-2">3<' in page and "labelmap.prototxt" in page and 'id="dataset-mean"' not in page
    assert f"/datasets/{job_id}/explore?db=val" in page
    clone = client.get("/datasets/images/object-detection/new", params={"clone": job_id}).text
    assert re.search(r'id="train-image-folder"[^>]*value="' + re.escape(str(data / "voc")) + '"', clone)


def test_explore_draws_the_boxes(studio, voc_job):
    client, _, _ = studio
    job_id, job_dir = voc_job
    html = client.get(f"/datasets/{job_id}/explore", params={"db": "train"}).text
    assert [int(i) for i in re.findall(r'data-index="(\d+)"', html)] == [0, 1, 2] and "(3 images)" in html
    png = client.get(f"/datasets/{job_id}/explore/image", params={"db": "train", "index": 1})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    shown = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR)
    stored = _pixels(_records(job_dir / "train_db")[1][1])
    assert shown.shape == stored.shape == (100, 200, 3)
    # the person box (label 2: 20,40 - 120,90) is outlined in its class colour; far from the boxes nothing changed
    assert tuple(shown[90, 70][::-1]) == class_colour(2) and tuple(shown[65, 20][::-1]) == class_colour(2)
    assert np.array_equal(shown[95:, :15], stored[95:, :15])
    assert client.get(f"/datasets/{job_id}/explore/image", params={"db": "train", "index": 3}).status_code == 404


def test_routes_refuse_bad_input_with_4xx(studio, tmp_path):
    client, st, data = studio
    before = len(st.store.list())
    url = "/datasets/images/object-detection.json"
    voc = str(data / "voc")
    cases = [
        ({"train_image_folder": "/etc"}, "train_image_folder: .*outside the folders"),
        ({"train_image_folder": "../../etc"}, "train_image_folder: .*'..' is not allowed"),
        ({"train_image_folder": voc, "val_image_folder": "/etc"}, "val_image_folder: .*outside"),
        ({"train_image_folder": voc, "train_label_folder": str(tmp_path)}, "train_label_folder: .*outside"),
        ({"train_image_folder": voc, "label_format": "kitti"}, "train_image_folder: no image in .* has a label"),
        ({"train_image_folder": voc, "resize_image_width": "abc"}, "resize_image_width: expected a whole number"),
        ({"train_image_folder": voc, "custom_classes": "a,a"}, "custom_classes: 'a' listed more than once"),
        ({"train_image_folder": str(data / "nope")}, "train_image_folder: folder .* does not exist"),
        ({}, "dataset_name: give the dataset a name"),
    ]
    for values, match in cases:
        r = client.post(url, data=values)
        assert r.status_code == 400 and re.search(match, r.json()["errors"][0]), (values, r.text)
    r = client.post(url, json={"train_image_folder": ["x"], "dataset_name": "x"})
    assert r.status_code == 400
    html = client.post("/datasets/images/object-detection", data={"train_image_folder": "/etc", "dataset_name": "x"})
    assert html.status_code == 400 and 'id="dataset-error"' in html.text and "train_image_folder" in html.text
    assert 'value="/etc"' in html.text  # the form keeps what was typed
    assert len(st.store.list()) == before  # nothing was created


def test_form_post_redirects_to_the_dataset_page(studio):
    client, st, data = studio
    r = client.post(
        "/datasets/images/object-detection",
        data={
            "train_image_folder": str(data / "voc"),
            "dataset_name": "people",
            "folder_pct_val": "0",
            "resize_image_width": "64",
            "resize_image_height": "32",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/datasets/")
    job = st.scheduler.wait(r.headers["location"].rsplit("/", 1)[1], timeout=120)
    assert job.status == "Done" and job.name == "people"
    assert job.result["counts"] == {"train": 5, "val": 0} and job.result["image_dims"] == [32, 64, 3]
    # val_min_box_size (25 by default) only marks validation boxes: no val set here
    assert job.result["difficult_boxes"] == {"train": 0, "val": 0}
    assert _pixels(_records(st.store.job_dir(job.id) / "train_db")[0][1]).shape == (32, 64, 3)


def test_digits_generic_dataset_addresses(studio):
    """DIGITS' REST addresses of its object-detection extension create the same job as the studio's own."""
    client, st, data = studio
    form = client.get("/datasets/generic/new/image-object-detection")
    assert form.status_code == 200 and 'id="detection-dataset-form"' in form.text
    r = client.post(
        "/datasets/generic/create/image-object-detection.json",
        data={"train_image_folder": str(data / "voc"), "dataset_name": "generic", "val_min_box_size": "0"},
    )
    assert r.status_code == 200, r.text
    job = st.store.get(r.json()["job_id"])
    assert job.params["task"] == "object-detection" and job.params["train_image_folder"] == str(data / "voc")
    assert job.params["detector"] == "detectnet"  # DIGITS stored its object-detection datasets for DetectNet
    assert (job.params["padding_image_width"], job.params["padding_image_height"]) == (1248, 384)  # DIGITS' default
    bad = client.post("/datasets/generic/create/image-object-detection.json", data={"train_image_folder": "/nope"})
    assert bad.status_code == 400 and "train_image_folder" in bad.text
    assert client.post("/datasets/generic/create/image-unknown.json", data={}).status_code in (404, 405)
    st.scheduler.wait(job.id, timeout=120)
