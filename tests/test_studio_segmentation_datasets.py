"""Studio semantic segmentation datasets: the records of both databases (same keys, same order), the class names,
palette and mean, DIGITS' colour map methods (palette, grayscale, RGB + colour map file), the resize (labels by
nearest neighbour), the split, skipped pairs, bad input, and the routes.

Every image is a tiny synthetic picture written here (noise features; label maps drawn by hand), so the expected
classes and pixel counts are known exactly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
from PIL import Image

from caffe.data.datum import datum_to_array, parse_datum
from caffe.data.db import item_key
from caffe.deploy import palette
from caffe.deploy.segmentation import nearest_resize
from caffe.errors import DataError
from caffe.proto import caffe_pb2 as pb
from caffe.studio import segmentation_datasets as sd

W, H = 12, 8  # the images' width and height
VOC = palette(256)


# ---------------------------------------------------------------------------------------------
# helpers


def _feature(path: Path, seed: int, size: tuple[int, int] = (W, H), gray: bool = False) -> np.ndarray:
    """A noise picture of ``size`` (width, height) saved at ``path`` (PNG: lossless); returns its RGB (or L) pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if gray else (size[1], size[0], 3)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _classes(seed: int, size: tuple[int, int] = (W, H), top: int = 3) -> np.ndarray:
    """A class map: blocks of classes 0..top-1, one void (255) pixel."""
    rng = np.random.default_rng(100 + seed)
    blocks = rng.integers(0, top, (2, 3), dtype=np.uint8)
    classes = nearest_resize(blocks, size[1], size[0]).copy()
    classes[0, 0] = 255
    return classes


def _label(path: Path, classes: np.ndarray, mode: str = "P", colours: np.ndarray = VOC) -> None:
    """``classes`` saved as a palette PNG, a grayscale image, or RGB (``colours[class]``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        Image.fromarray(colours[classes]).save(path)
        return
    im = Image.fromarray(classes, "L")
    if mode == "P":
        im = im.convert("P")
        im.putpalette(colours.flatten().tolist())
    im.save(path)


def _records(db_path: Path) -> list[tuple[bytes, pb.Datum]]:
    env = lmdb.open(str(db_path), readonly=True, lock=False)
    with env.begin() as txn:
        out = [(bytes(k), parse_datum(bytes(v))) for k, v in txn.cursor()]
    env.close()
    return out


def _image_of(datum: pb.Datum) -> np.ndarray:
    """A stored image as H x W x C BGR (decoded when PNG-encoded)."""
    if datum.encoded:
        return cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
    return datum_to_array(datum).transpose(1, 2, 0)


def _make(job_dir: Path, **values) -> dict:
    job_dir.mkdir(parents=True, exist_ok=True)
    return sd.create_segmentation_dataset(job_dir, sd.SegmentationParams.from_dict(values))


def _pairs(tmp_path: Path, n: int, mode: str = "P", top: int = 3) -> tuple[dict, dict]:
    """``n`` feature PNGs in f/ and label images in l/ (label images as .png whatever the feature's name);
    returns {path: RGB pixels} and {path: classes}."""
    features, labels = {}, {}
    for i in range(n):
        path = tmp_path / "f" / f"im{i}.png"
        features[str(path)] = _feature(path, i)
        labels[str(path)] = _classes(i, top=top)
        _label(tmp_path / "l" / f"im{i}.png", labels[str(path)], mode)
    return features, labels


# ---------------------------------------------------------------------------------------------
# the job's files


def test_palette_labels_give_aligned_databases_names_palette_mean_and_split(tmp_path):
    features, labels = _pairs(tmp_path, 5)
    r = _make(tmp_path / "job", feature_folder=str(tmp_path / "f"), label_folder=str(tmp_path / "l"), folder_pct_val=40)
    job = tmp_path / "job"
    assert r["task"] == "segmentation" and r["counts"] == {"train": 3, "val": 2}  # DIGITS: floor(5 * 40 / 100) val
    assert r["labels"] == ["class 0", "class 1", "class 2"] and r["classes"] == 3
    assert r["image_dims"] == [H, W, 3] and r["encoding"] == "png" and r["mean_file"] == "mean.binaryproto"
    assert r["skipped"] == [] and r["seconds"] >= 0
    assert (job / "labels.txt").read_text() == "class 0\nclass 1\nclass 2\n"
    assert json.loads((job / "palette.json").read_text()) == VOC[:3].tolist()  # the label images' palette
    train_bgr = []
    for split in ("train", "val"):
        images, maps = _records(job / f"{split}_db"), _records(job / f"{split}_labels_db")
        lines = (job / f"{split}.txt").read_text().splitlines()
        assert len(images) == len(maps) == len(lines) == r["counts"][split]
        expected_pixels = np.zeros(256, np.int64)
        for i, ((key, image), (label_key, label), line) in enumerate(zip(images, maps, lines, strict=True)):
            path, label_path = line.split(" ")
            assert key == label_key == item_key(i, path) and label_path == path.replace("/f/", "/l/")
            assert image.label == 0 and image.encoded
            assert np.array_equal(_image_of(image), features[path][:, :, ::-1])  # BGR, lossless
            assert not label.encoded and (label.channels, label.height, label.width) == (1, H, W)
            assert np.array_equal(datum_to_array(label)[0], labels[path])
            expected_pixels += np.bincount(labels[path].ravel(), minlength=256)
            if split == "train":
                train_bgr.append(features[path][:, :, ::-1].astype(np.float64))
        assert r["pixels"][split] == {f"class {c}": int(expected_pixels[c]) for c in range(3)}
        assert r["ignored_pixels"][split] == int(expected_pixels[255]) == r["counts"][split]
    mean = pb.BlobProto.FromString((job / "mean.binaryproto").read_bytes())
    assert (mean.num, mean.channels, mean.height, mean.width) == (1, 3, H, W)
    expected_mean = np.mean(train_bgr, axis=0).transpose(2, 0, 1)
    assert np.allclose(np.array(mean.data).reshape(3, H, W), expected_mean, atol=1e-3)
    # the same seed gives the same split
    again = _make(
        tmp_path / "again", feature_folder=str(tmp_path / "f"), label_folder=str(tmp_path / "l"), folder_pct_val=40
    )
    assert (tmp_path / "again" / "train.txt").read_text() == (job / "train.txt").read_text()
    assert again["pixels"] == r["pixels"]


def test_grayscale_labels_resize_nearest_raw_gray_images_val_folders_and_class_names(tmp_path):
    size = (16, 8)
    checker = (np.indices((8, 16)).sum(axis=0) % 2 * 3).astype(np.uint8)  # classes 0 and 3: bilinear would mix them
    checker[7, 15] = 255
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            _feature(tmp_path / split / "f" / "sub" / f"g{i}.bmp", i, size, gray=True)  # sub-folders are searched
            _label(tmp_path / split / "l" / f"g{i}.png", checker, "L")
    (tmp_path / "names.txt").write_text("background\ncat\n\ndog\nbird\n")  # blank lines skipped
    r = _make(
        tmp_path / "job",
        feature_folder=str(tmp_path / "train" / "f"),
        label_folder=str(tmp_path / "train" / "l"),
        has_val_folder="on",
        validation_feature_folder=str(tmp_path / "val" / "f"),
        validation_label_folder=str(tmp_path / "val" / "l"),
        class_labels_file=str(tmp_path / "names.txt"),
        resize_image_width=8,
        resize_image_height=4,
        encoding="none",
        channel_conversion="L",
    )
    assert r["counts"] == {"train": 3, "val": 2} and r["image_dims"] == [4, 8, 1] and r["encoding"] == "none"
    assert r["labels"] == ["background", "cat", "dog", "bird"] and r["classes"] == 4
    resized = nearest_resize(checker, 4, 8)
    assert set(np.unique(resized)) <= {0, 3, 255}
    per_image = np.bincount(resized.ravel(), minlength=256)
    assert r["pixels"]["train"] == {"background": 3 * per_image[0], "cat": 0, "dog": 0, "bird": 3 * per_image[3]}
    assert r["ignored_pixels"] == {"train": 3 * per_image[255], "val": 2 * per_image[255]}
    (key, image), (label_key, label) = (
        _records(tmp_path / "job" / "val_db")[0],
        _records(tmp_path / "job" / "val_labels_db")[0],
    )
    assert key == label_key and key.endswith(b"/val/f/sub/g0.bmp")
    assert not image.encoded and (image.channels, image.height, image.width) == (1, 4, 8)
    assert np.array_equal(datum_to_array(label)[0], resized)
    assert json.loads((tmp_path / "job" / "palette.json").read_text()) == palette(4).tolist()  # no palette given


def test_rgb_labels_through_a_colour_map_file(tmp_path):
    colours = np.array([[10, 20, 30], [200, 0, 0], [0, 0, 200]], np.uint8)
    (tmp_path / "colours.txt").write_text("10 20 30\n200 0 0\n\n0 0 200\n")
    for i in range(3):
        _feature(tmp_path / "f" / f"c{i}.jpg", i)  # a JPEG feature image pairs with a PNG label image
        classes = _classes(i)
        classes[0, 0] = 1  # no void: an RGB label image has only the map's colours
        _label(tmp_path / "l" / f"c{i}.png", classes, "RGB", colours)
    r = _make(
        tmp_path / "job",
        feature_folder=str(tmp_path / "f"),
        label_folder=str(tmp_path / "l"),
        colormap_method="text",  # taken for DIGITS' "textfile"
        colormap_text_file=str(tmp_path / "colours.txt"),
        folder_pct_val=0,
    )
    assert r["classes"] == 3 and r["counts"] == {"train": 3, "val": 0} and r["ignored_pixels"]["train"] == 0
    assert json.loads((tmp_path / "job" / "palette.json").read_text()) == colours.tolist()
    for key, label in _records(tmp_path / "job" / "train_labels_db"):
        i = int(key.decode()[-5])
        expected = _classes(i)
        expected[0, 0] = 1
        assert np.array_equal(datum_to_array(label)[0], expected)
    # a colour the map lacks fails the job, naming the file and the colour
    bad = np.full((H, W, 3), (10, 20, 30), np.uint8)
    bad[2, 5] = (1, 2, 3)
    Image.fromarray(bad).save(tmp_path / "l" / "c1.png")
    with pytest.raises(
        DataError, match=r"c1\.png: colour \(1, 2, 3\) \(at x=5, y=2; 1 pixel\(s\)\) is not in the colour map"
    ):
        _make(
            tmp_path / "job2",
            feature_folder=str(tmp_path / "f"),
            label_folder=str(tmp_path / "l"),
            colormap_method="textfile",
            colormap_text_file=str(tmp_path / "colours.txt"),
        )
    assert not (tmp_path / "job2" / "train_db").exists()  # nothing half-written


def test_bad_pairs_are_skipped_with_their_reason(tmp_path):
    _pairs(tmp_path, 3)
    _feature(tmp_path / "f" / "small.png", 7, (6, 4))
    _label(tmp_path / "l" / "small.png", _classes(7, (6, 4)))
    _feature(tmp_path / "f" / "mismatch.png", 8)
    _label(tmp_path / "l" / "mismatch.png", _classes(8, (6, 4)))
    _feature(tmp_path / "f" / "alone.png", 9)
    _label(tmp_path / "l" / "orphan.png", _classes(9))
    _feature(tmp_path / "f" / "rgb.png", 10)
    _label(tmp_path / "l" / "rgb.png", _classes(10), "RGB")
    _feature(tmp_path / "f" / "repainted.png", 11)
    _label(tmp_path / "l" / "repainted.png", _classes(11), "P", VOC[::-1].copy())
    (tmp_path / "f" / "notes.txt").write_text("not an image")
    r = _make(tmp_path / "job", feature_folder=str(tmp_path / "f"), label_folder=str(tmp_path / "l"), folder_pct_val=0)
    reasons = {Path(s["path"]).name: s["reason"] for s in r["skipped"]}
    assert r["counts"]["train"] == 3, reasons
    assert re.search(r"no label image named alone\.\*", reasons["alone.png"])
    assert reasons["orphan.png"] == "a label image without a feature image"
    assert reasons["notes.txt"].startswith("not an image file")
    assert reasons["mismatch.png"] == "the image is 12 x 8 pixels, its label image 6 x 4"
    assert reasons["small.png"].startswith("6 x 4 pixels, not the dataset's 12 x 8")
    assert "/l/rgb.png: a label image of mode RGB; with colormap_method 'label'" in reasons["rgb.png"]
    assert re.match(
        r".*/l/repainted\.png: its palette colours class \d .*\(all label images must share one palette\)",
        reasons["repainted.png"],
    )
    assert r["skipped_count"] == len(r["skipped"]) == 7
    # with a resize, the small pair is stored
    r = _make(
        tmp_path / "job2",
        feature_folder=str(tmp_path / "f"),
        label_folder=str(tmp_path / "l"),
        folder_pct_val=0,
        resize_image_width=W,
        resize_image_height=H,
    )
    assert r["counts"]["train"] == 4 and "small.png" not in {Path(s["path"]).name for s in r["skipped"]}


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({}, "feature_folder: the folder of feature .* is required"),
        ({"feature_folder": "f"}, "label_folder: the folder of label images is required"),
        ({"feature_folder": "f", "label_folder": "l", "has_val_folder": "true"}, "validation_feature_folder: required"),
        ({"feature_folder": "f", "label_folder": "l", "folder_pct_val": 100}, "folder_pct_val: must be a percentage"),
        ({"feature_folder": "f", "label_folder": "l", "colormap_method": "rgb"}, "colormap_method: must be one of"),
        ({"feature_folder": "f", "label_folder": "l", "colormap_method": "textfile"}, "colormap_text_file: required"),
        ({"feature_folder": "f", "label_folder": "l", "channel_conversion": "CMYK"}, "channel_conversion: must be"),
        ({"feature_folder": "f", "label_folder": "l", "encoding": "jpg"}, "encoding: must be one of png, none"),
        ({"feature_folder": "f", "label_folder": "l", "resize_image_width": 5}, "resize_image_height: give both"),
        (
            {"feature_folder": "f", "label_folder": "l", "resize_image_width": "x"},
            "resize_image_width: expected a whole",
        ),
        ({"feature_folder": "f", "label_folder": "l", "seed": -1}, "seed: must be 0 or more"),
    ],
)
def test_bad_parameters_name_their_field(values, match):
    with pytest.raises(DataError, match=match):
        sd.SegmentationParams.from_dict(values)


def test_bad_text_files_name_their_field_and_line(tmp_path):
    _pairs(tmp_path, 2)
    base = {"feature_folder": str(tmp_path / "f"), "label_folder": str(tmp_path / "l")}
    colours = tmp_path / "colours.txt"
    for text, match in [
        ("0 0 0\n1 2\n", r"colormap_text_file: colours\.txt:2: expected 'R G B' \(0-255\), got '1 2'"),
        ("0 0 0\n0 0 256\n", r"colours\.txt:2: expected 'R G B'"),
        ("0 0 0\n0 0 0\n", r"colours\.txt:2: colour \(0, 0, 0\) is already class 0"),
        ("\n", "colormap_text_file: .* holds no colour"),
    ]:
        colours.write_text(text)
        with pytest.raises(DataError, match=match):
            sd.make_plan(
                sd.SegmentationParams.from_dict(
                    {**base, "colormap_method": "textfile", "colormap_text_file": str(colours)}
                )
            )
    names = tmp_path / "names.txt"
    names.write_text("background\ncat\n")  # the label images hold class 2
    with pytest.raises(DataError, match="class_labels_file: names 2 classes, but the label images hold class 2"):
        _make(tmp_path / "job", **base, class_labels_file=str(names))
    with pytest.raises(DataError, match=r"class_labels_file: file .* does not exist"):
        sd.make_plan(sd.SegmentationParams.from_dict({**base, "class_labels_file": str(tmp_path / "nope.txt")}))
    roots = {**base, "data_roots": [str(tmp_path / "f"), str(tmp_path / "l")]}
    with pytest.raises(DataError, match=r"class_labels_file: .*outside the folders"):
        sd.make_plan(sd.SegmentationParams.from_dict({**roots, "class_labels_file": str(names)}))


def test_job_process_writes_done_or_error_events(tmp_path):
    _pairs(tmp_path, 2)
    job = tmp_path / "job"
    job.mkdir()
    (job / "params.json").write_text(json.dumps({"feature_folder": str(tmp_path / "f"), "label_folder": "/nope"}))
    assert sd.main([str(job)]) == 1
    event = json.loads((job / "events.jsonl").read_text().splitlines()[-1])
    assert event["event"] == "error" and event["message"].startswith("label_folder: folder '/nope' does not exist")
    (job / "params.json").write_text(
        json.dumps({"feature_folder": str(tmp_path / "f"), "label_folder": str(tmp_path / "l"), "folder_pct_val": 50})
    )
    assert sd.run_job(job) == 0
    event = json.loads((job / "events.jsonl").read_text().splitlines()[-1])
    assert event["event"] == "done" and event["task"] == "segmentation" and event["counts"] == {"train": 1, "val": 1}


# ---------------------------------------------------------------------------------------------
# the routes


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from fastapi.testclient import TestClient

    from caffe.studio.app import create_app

    base = tmp_path_factory.mktemp("segmentation")
    data = base / "data"
    _pairs(data / "voc", 4)
    _feature(data / "odd" / "x.png", 0)  # no label image of its name
    app = create_app({"jobs_dir": base / "jobs", "devices": ["cpu"], "data_roots": [str(data)]})
    with TestClient(app) as client:
        yield client, app.state.studio, data


def _voc(data: Path, **values: str) -> dict[str, str]:
    """The form fields of the studio's VOC-like folders, and ``values``."""
    return {"feature_folder": str(data / "voc" / "f"), "label_folder": str(data / "voc" / "l"), **values}


@pytest.fixture(scope="module")
def voc_job(studio):
    client, st, data = studio
    r = client.post("/datasets/images/segmentation.json", data=_voc(data, folder_pct_val="25"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "f" and body["status"] in ("Waiting", "Running")
    job = _done(st, body["job_id"])
    return job.id, st.store.job_dir(job.id)


def _done(st, job_id: str):
    """The job, once it has ended Done (else its log in the failure)."""
    job = st.scheduler.wait(job_id, timeout=120)
    assert job.status == "Done", (st.store.job_dir(job.id) / "log.txt").read_text()
    return job


def test_form_has_labelled_fields_and_folder_pickers(studio):
    client, _, data = studio
    html = client.get("/datasets/images/segmentation/new").text
    for name in ("feature_folder", "label_folder", "validation_feature_folder", "validation_label_folder"):
        field_id = name.replace("_", "-")
        assert re.search(f'id="{field_id}" data-folder-picker name="{name}"', html), name
        assert f'for="{field_id}"' in html
    others = "folder-pct-val has-val-folder colormap-method colormap-text-file class-labels-file channel-conversion"
    for field_id in (*others.split(), "resize-image-width", "encoding", "seed", "dataset-name"):
        assert f'id="{field_id}"' in html and f'for="{field_id}"' in html, field_id
    assert re.search(r'id="folder-pct-val"[^>]*value="10"', html)  # DIGITS' default
    assert str(data) in html


def test_dataset_json_page_and_explore_overlay(studio, voc_job):
    client, _, data = studio
    job_id, job_dir = voc_job
    info = client.get(f"/datasets/{job_id}.json").json()
    r = info["result"]
    assert info["task"] == "segmentation" and info["params"]["task"] == "segmentation"
    assert r["counts"] == {"train": 3, "val": 1} and r["classes"] == 3 and r["image_dims"] == [H, W, 3]
    assert set(r["pixels"]["train"]) == {"class 0", "class 1", "class 2"} and r["ignored_pixels"] == {
        "train": 3,
        "val": 1,
    }
    assert sum(r["pixels"]["train"].values()) + 3 == 3 * W * H
    page = client.get(f"/datasets/{job_id}").text
    assert 'id="count-train">3<' in page and 'id="count-val">1<' in page and 'id="ignored-train">3<' in page
    assert f'id="pixels-train-1">{r["pixels"]["train"]["class 1"]}<' in page
    assert 'id="dataset-mean"' in page and "train_labels_db" in page and "palette.json" in page
    assert client.get(f"/datasets/{job_id}/mean.jpg").status_code == 200
    html = client.get(f"/datasets/{job_id}/explore", params={"db": "train"}).text
    assert [int(i) for i in re.findall(r'data-index="(\d+)"', html)] == [0, 1, 2] and "(3 images)" in html
    assert re.findall(r'background: (#\w+)"></span> (class \d)', html) == [
        ("#000000", "class 0"),
        ("#800000", "class 1"),
        ("#008000", "class 2"),
    ]
    png = client.get(f"/datasets/{job_id}/explore/image", params={"db": "train", "index": 1})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    shown = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]  # RGB
    path = (job_dir / "train.txt").read_text().splitlines()[1].split(" ")[0]
    rgb = np.asarray(Image.open(path))
    classes = datum_to_array(_records(job_dir / "train_labels_db")[1][1])[0]
    expected = np.rint(0.5 * rgb + 0.5 * VOC[classes].astype(np.float64))
    expected[0, 0] = rgb[0, 0]  # void stays as it was
    assert np.array_equal(shown, expected.astype(np.uint8))
    assert client.get(f"/datasets/{job_id}/explore/image", params={"db": "train", "index": 3}).status_code == 404
    clone = client.get("/datasets/images/segmentation/new", params={"clone": job_id}).text
    assert re.search(r'id="feature-folder"[^>]*value="' + re.escape(str(data / "voc" / "f")) + '"', clone)


def test_routes_refuse_bad_input_with_4xx(studio, tmp_path):
    client, st, data = studio
    before = len(st.store.list())
    url = "/datasets/images/segmentation.json"
    f, lab = str(data / "voc" / "f"), str(data / "voc" / "l")
    (tmp_path / "colours.txt").write_text("0 0 0\n")
    cases = [
        ({"feature_folder": "/etc", "label_folder": lab}, "feature_folder: .*outside the folders"),
        ({"feature_folder": "../../etc", "label_folder": lab}, "feature_folder: .*'..' is not allowed"),
        ({"feature_folder": f, "label_folder": str(tmp_path)}, "label_folder: .*outside"),
        ({"feature_folder": f, "label_folder": f}, "label_folder: the same folder as the feature_folder"),
        (
            {
                "feature_folder": f,
                "label_folder": lab,
                "colormap_method": "textfile",
                "colormap_text_file": str(tmp_path / "colours.txt"),
            },
            "colormap_text_file: .*outside",
        ),
        ({"feature_folder": f, "label_folder": lab, "has_val_folder": "on"}, "validation_feature_folder: required"),
        ({"feature_folder": str(data / "nope"), "label_folder": lab}, "feature_folder: folder .* does not exist"),
        (
            {"feature_folder": str(data / "odd"), "label_folder": lab},
            "feature_folder: no image in .* has a label image",
        ),
        ({}, "dataset_name: give the dataset a name"),
    ]
    for values, match in cases:
        r = client.post(url, data=values)
        assert r.status_code == 400 and re.search(match, r.json()["errors"][0]), (values, r.text)
    html = client.post(
        "/datasets/images/segmentation", data={"feature_folder": "/etc", "label_folder": lab, "has_val_folder": "on"}
    )
    assert html.status_code == 400 and 'id="dataset-error"' in html.text and "feature_folder" in html.text
    assert 'value="/etc"' in html.text and re.search(r'id="has-val-folder"[^>]*checked', html.text)
    assert len(st.store.list()) == before  # nothing was created


def test_form_post_redirects_to_the_dataset_page(studio):
    client, st, data = studio
    r = client.post(
        "/datasets/images/segmentation",
        data=_voc(data, dataset_name="voc small", folder_pct_val="0", resize_image_width="6", resize_image_height="4"),
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/datasets/")
    job = _done(st, r.headers["location"].rsplit("/", 1)[1])
    assert job.name == "voc small"
    assert job.result["counts"] == {"train": 4, "val": 0} and job.result["image_dims"] == [4, 6, 3]
    stored = _records(st.store.job_dir(job.id) / "train_labels_db")
    assert [datum_to_array(d).shape for _, d in stored] == [(1, 4, 6)] * 4
