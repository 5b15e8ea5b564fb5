"""Studio datasets: DIGITS' split and resize rules, the dataset job's files, bad input, and the routes.

The dolphins-and-seahorses set is made once (module fixture) through the real route, scheduler and
``python -m caffe.studio.datasets`` child process; the other cases use small synthetic images in-process.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
from conftest import asset
from PIL import Image

from caffe.data.db import item_key
from caffe.errors import DataError
from caffe.proto import caffe_pb2 as pb
from caffe.studio import datasets as ds

DOLPHINS = asset("dolphins-and-seahorses")
RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


def _records(db_path: Path) -> list[tuple[bytes, pb.Datum]]:
    env = lmdb.open(str(db_path), readonly=True, lock=False)
    with env.begin() as txn:
        out = []
        for key, value in txn.cursor():
            d = pb.Datum()
            d.ParseFromString(value)
            out.append((bytes(key), d))
    env.close()
    return out


def _bgr(datum: pb.Datum) -> np.ndarray:
    """A stored Datum's pixels, HxWxC in the stored (BGR) order, decoded with OpenCV directly."""
    if datum.encoded:
        img = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
        return img[:, :, None] if img.ndim == 2 else img
    chw = np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width)
    return chw.transpose(1, 2, 0)


def _save(path: Path, pixels: np.ndarray | tuple, size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(pixels, tuple):
        pixels = np.full((size[1], size[0], 3), pixels, np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _folder(root: Path, classes: dict[str, int]) -> Path:
    """``root/<class>/img_<i>.png`` solid-colour images (a colour per class)."""
    colors = [RED, BLUE, GREEN, WHITE]
    for c, (name, n) in enumerate(classes.items()):
        for i in range(n):
            _save(root / name / f"img_{i:02d}.png", colors[c % len(colors)])
    return root


# ---------------------------------------------------------------------------------------------
# DIGITS' arithmetic


def test_round_half_up_is_python2_round():
    assert [ds.round_half_up(x) for x in (0.5, 1.5, 2.5, 2.4999, -0.5, -2.5)] == [1, 2, 3, 2, -1, -3]


@pytest.mark.parametrize(
    ("n", "val", "test", "expected"),
    [
        (65, 25, 0, (49, 16, 0)),  # the guide's dolphins: 65 * 0.75 = 48.75 -> 49 train
        (57, 25, 0, (43, 14, 0)),  # seahorses: 42.75 -> 43
        (10, 10, 10, (8, 1, 1)),
        (3, 25, 25, (1, 1, 1)),  # train round(1.5) = 2, val 1, then a test image is taken from train
        (2, 25, 0, (1, 1, 0)),  # round(1.5) = 2 train leaves no val: one moves over
        (7, 0, 0, (7, 0, 0)),
        (7, 100, 0, (0, 7, 0)),
        (4, 50, 50, (0, 2, 2)),
    ],
)
def test_split_sizes(n, val, test, expected):
    assert ds.split_sizes(n, val, test) == expected


# ---------------------------------------------------------------------------------------------
# resize modes on hand-made images (expected pixels computed by hand)


def _rows(*colors: tuple, width: int, repeat: int = 1) -> np.ndarray:
    """An image of horizontal stripes: each colour ``repeat`` rows high, ``width`` wide."""
    return np.repeat(np.array(colors, np.uint8)[:, None, :], repeat, axis=0).repeat(width, axis=1)


# Upscaling 2 rows (red, blue) to 4 with Pillow's bilinear filter: output row centres fall at 0.25, 0.75,
# 1.25 and 1.75 input rows, so the rows are red, 3/4 red + 1/4 blue, 1/4 red + 3/4 blue, blue.
STRETCHED_RED = [255, 191, 64, 0]


def test_squash_stretches():
    out = ds.resize_image(_rows(RED, BLUE, width=4), 4, 4, "squash")  # 2x4 -> 4x4
    assert out.shape == (4, 4, 3)
    assert np.abs(out[:, :, 0].astype(int) - np.array(STRETCHED_RED)[:, None]).max() <= 1
    assert np.array_equal(out[:, :, 2].astype(int), 255 - out[:, :, 0].astype(int))
    assert (out[:, :, 1] == 0).all()


def test_crop_keeps_the_middle_with_halves_rounded_up():
    cols = np.array([[c * 10, 0, 0] for c in range(9)], np.uint8)  # 4x9, column c has red = 10c
    img = np.repeat(cols[None], 4, axis=0)
    out = ds.resize_image(img, 4, 4, "crop")
    # height ratio 1: no scaling; (9 - 4) / 2 = 2.5 rounds (Python 2) to 3 -> columns 3..6
    assert out.shape == (4, 4, 3)
    assert out[0, :, 0].tolist() == [30, 40, 50, 60]
    tall = np.ascontiguousarray(img.transpose(1, 0, 2))  # 9x4: rows cut instead
    assert ds.resize_image(tall, 4, 4, "crop")[:, 0, 0].tolist() == [30, 40, 50, 60]


def _noise_rows(seed: int, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, shape, dtype=np.uint8), rng.integers(0, 255, shape, dtype=np.uint8)


def test_fill_pads_with_seeded_noise():
    green = np.full((4, 12, 3), GREEN, np.uint8)  # 4x12 into 4x4: scaled 1.33 -> 1 row, made 2 (even padding)
    out = ds.resize_image(green, 4, 4, "fill", np.random.default_rng(5))
    assert out.shape == (4, 4, 3)
    assert (out[1:3] == GREEN).all()
    top, bottom = _noise_rows(5, (1, 4, 3))
    assert np.array_equal(out[:1], top) and np.array_equal(out[3:], bottom)
    tall = ds.resize_image(np.ascontiguousarray(green.transpose(1, 0, 2)), 4, 4, "fill", np.random.default_rng(5))
    assert (tall[:, 1:3] == GREEN).all()  # a tall image is padded left and right
    left, right = _noise_rows(5, (4, 1, 3))
    assert np.array_equal(tall[:, :1], left) and np.array_equal(tall[:, 3:], right)
    odd = ds.resize_image(np.full((5, 8, 3), GREEN, np.uint8), 4, 4, "fill", np.random.default_rng(5))
    assert (odd == GREEN).all()  # 5x8 -> 2.5 rows, rounded to 3, made 4: no room left for noise


def test_half_crop_crops_one_side_and_fills_the_other():
    green = np.full((4, 16, 3), GREEN, np.uint8)
    out = ds.resize_image(green, 4, 4, "half_crop", np.random.default_rng(1))
    # ratios 4 and 1, mean 2.5: scaled to 2x6 (round(1.6), round(6.4)), cut to 4 columns, 1 noise row each side
    assert out.shape == (4, 4, 3)
    assert (out[1:3] == GREEN).all()
    top, bottom = _noise_rows(1, (1, 4, 3))
    assert np.array_equal(out[:1], top) and np.array_equal(out[3:], bottom)


def test_same_aspect_ratio_is_squashed_in_every_mode():
    img = _rows(RED, BLUE, width=2)  # 2x2 -> 4x4
    squashed = ds.resize_image(img, 4, 4, "squash")
    for mode in ds.RESIZE_MODES:
        assert np.array_equal(ds.resize_image(img, 4, 4, mode, np.random.default_rng(0)), squashed), mode


def test_unknown_resize_mode():
    with pytest.raises(DataError, match="resize_mode"):
        ds.resize_image(np.zeros((4, 8, 3), np.uint8), 2, 2, "stretch")


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (0, 255, 0, 255)  # one opaque green pixel, the others transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    pixels = ds.image_array(ds.load_image(tmp_path / "a.png"), 3)
    assert pixels[0, 0].tolist() == list(GREEN) and pixels[1, 1].tolist() == list(WHITE)


# ---------------------------------------------------------------------------------------------
# the job on synthetic folders


def _params(folder: Path, **kw) -> ds.DatasetParams:
    return ds.DatasetParams.from_dict({"folder_train": str(folder), "resize_width": 6, "resize_height": 4, **kw})


def test_non_images_are_skipped_and_named(tmp_path):
    root = _folder(tmp_path / "imgs", {"cat": 4, "dog": 4})
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    job = tmp_path / "job"
    job.mkdir()
    result = ds.create_dataset(job, _params(root))
    skipped = {Path(s["path"]).name: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {"notes.txt", "broken.jpg"}
    assert "not an image file" in skipped["notes.txt"] and "not a readable image" in skipped["broken.jpg"]
    # broken.jpg was planned (5 dogs: 4 train, 1 val) then failed to decode; the txt was never planned
    assert sum(result["counts"].values()) == 8
    assert result["per_class"]["train"]["cat"] == 3 and result["per_class"]["val"]["cat"] == 1
    lines = (job / "train.txt").read_text().splitlines() + (job / "val.txt").read_text().splitlines()
    assert len(lines) == 8 and not any("broken" in line for line in lines)


def test_raw_gray_dataset(tmp_path):
    root = _folder(tmp_path / "imgs", {"a": 3, "b": 3})
    job = tmp_path / "job"
    job.mkdir()
    result = ds.create_dataset(job, _params(root, resize_channels=1, encoding="none", folder_pct_val=0))
    assert result["counts"] == {"train": 6, "val": 0} and result["image_dims"] == [4, 6, 1]
    recs = _records(job / "train_db")
    labels = (job / "labels.txt").read_text().splitlines()
    assert labels == ["a", "b"]
    for i, (key, d) in enumerate(recs):
        assert not d.encoded and (d.channels, d.height, d.width) == (1, 4, 6)
        gray = round(0.299 * 255) if d.label == 0 else round(0.114 * 255)  # red / blue in ITU-R 601-2 luma
        assert set(d.data) == {gray}
        assert key.startswith(b"%08d_" % i)
    mean = pb.BlobProto()
    mean.ParseFromString((job / "mean.binaryproto").read_bytes())
    assert (mean.num, mean.channels, mean.height, mean.width) == (1, 1, 4, 6)
    assert np.allclose(mean.data, (3 * round(0.299 * 255) + 3 * round(0.114 * 255)) / 6)


def test_jpg_encoding_keeps_bgr_order(tmp_path):
    root = _folder(tmp_path / "imgs", {"red": 2, "blue": 2})
    job = tmp_path / "job"
    job.mkdir()
    ds.create_dataset(job, _params(root, encoding="jpg", folder_pct_val=50))
    assert (job / "labels.txt").read_text() == "blue\nred\n"  # sorted folder names
    for _, d in _records(job / "train_db") + _records(job / "val_db"):
        assert d.encoded and bytes(d.data[:2]) == b"\xff\xd8"
        b, _, r = _bgr(d).reshape(-1, 3).mean(axis=0)
        assert (b > 200 and r < 50) if d.label == 0 else (r > 200 and b < 50)


def test_split_is_deterministic_for_a_seed(tmp_path):
    root = _folder(tmp_path / "imgs", {"a": 20, "b": 20})

    def split(seed):
        plan = ds.make_plan(_params(root, seed=seed))
        return [e.path for e in plan.splits["train"]], [e.path for e in plan.splits["val"]]

    assert split(3) == split(3)
    assert split(3) != split(4)
    train, val = split(3)
    assert len(train) == 30 and len(val) == 10 and not set(train) & set(val)
    labels_in_order = [Path(p).parent.name for p in train]
    assert labels_in_order != sorted(labels_in_order)  # classes are mixed in the training db


def test_max_and_min_per_class(tmp_path):
    root = _folder(tmp_path / "imgs", {"a": 9, "b": 4, "c": 1})
    plan = ds.make_plan(_params(root, folder_train_max_per_class=6, folder_train_min_per_class=2))
    assert plan.labels == ["a", "b"]  # c has 1 image, below the minimum: left out with a warning
    assert any("'c'" in w for w in plan.warnings) and any("keeping the first 6" in w for w in plan.warnings)
    assert len(plan.splits["train"]) + len(plan.splits["val"]) == 6 + 4


# ---------------------------------------------------------------------------------------------
# bad input


def test_one_class_is_refused(tmp_path):
    root = _folder(tmp_path / "imgs", {"only": 5})
    with pytest.raises(DataError, match=r"folder_train: .* 1 class sub-folder"):
        ds.make_plan(_params(root))


def test_no_images_is_refused(tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "b").mkdir()
    (tmp_path / "imgs" / "b" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="0 class\\(es\\) with enough images"):
        ds.make_plan(_params(tmp_path / "imgs"))


@pytest.mark.parametrize("text", ["../../etc", "/tmp/../etc", "imgs/../../etc"])
def test_path_traversal_is_refused(tmp_path, text):
    with pytest.raises(DataError, match=r"folder_train: '\.\.' is not allowed"):
        ds.make_plan(_params(Path(text), data_roots=[str(tmp_path)]))


def test_folder_outside_the_roots_is_refused(tmp_path):
    root = _folder(tmp_path / "imgs", {"a": 2, "b": 2})
    with pytest.raises(DataError, match=r"folder_train: .*outside the folders"):
        ds.make_plan(_params(root, data_roots=[str(tmp_path / "elsewhere")]))
    with pytest.raises(DataError, match="does not exist"):
        ds.make_plan(_params(tmp_path / "missing"))
    with pytest.raises(DataError, match="is not a directory"):
        ds.make_plan(_params(root / "a" / "img_00.png"))


def _lists(tmp_path: Path, train: str, labels: str = "cat\ndog\n") -> ds.DatasetParams:
    _folder(tmp_path / "imgs", {"cat": 2, "dog": 2})
    (tmp_path / "train.txt").write_text(train)
    (tmp_path / "labels.txt").write_text(labels)
    return ds.DatasetParams.from_dict(
        {
            "method": "textfile",
            "textfile_train_images": str(tmp_path / "train.txt"),
            "textfile_labels_file": str(tmp_path / "labels.txt"),
            "textfile_train_folder": str(tmp_path / "imgs"),
            "resize_width": 4,
            "resize_height": 4,
            "data_roots": [str(tmp_path)],
        }
    )


def test_list_files_make_a_dataset(tmp_path):
    lines = f"cat/img_00.png 0\ncat/img_01.png 0\n\ndog/img_00.png 1\n{tmp_path}/imgs/dog/img_01.png 1\n"
    params = _lists(tmp_path, lines)
    job = tmp_path / "job"
    job.mkdir()
    result = ds.create_dataset(job, params)
    assert result["counts"] == {"train": 4, "val": 0}
    assert result["per_class"]["train"] == {"cat": 2, "dog": 2}


def test_list_line_without_label(tmp_path):
    params = _lists(tmp_path, "cat/img_00.png 0\ncat/img_01.png\n")
    with pytest.raises(DataError, match=r"textfile_train_images: train.txt:2: expected 'path label'"):
        ds.make_plan(params)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("../../etc/passwd 0", r"train.txt:1: '\.\.' is not allowed"),
        ("/etc/passwd 0", r"train.txt:1: .*outside the folders"),
        ("cat/img_00.png 2", r"train.txt:1: label 2 is not in the labels file"),
        ("cat/img_00.png x", r"train.txt:1: the label 'x' is not a whole number"),
    ],
)
def test_bad_list_lines(tmp_path, line, match):
    with pytest.raises(DataError, match=match):
        ds.make_plan(_lists(tmp_path, line + "\n"))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("resize_mode", "stretch", "resize_mode: must be one of"),
        ("encoding", "gif", "encoding: must be one of"),
        ("folder_pct_val", "abc", "folder_pct_val: expected a number"),
        ("folder_pct_val", "120", "folder_pct_val: must be a percentage"),
        ("resize_width", "0", "resize_width: must be between"),
        ("resize_width", "inf", "resize_width: expected a whole number"),
        ("seed", "1.5", "seed: expected a whole number"),
        ("resize_channels", "2", "resize_channels: must be 1"),
        ("folder_train_max_per_class", "1", "folder_train_max_per_class: must be at least the minimum"),
    ],
)
def test_bad_form_values(field, value, match):
    with pytest.raises(DataError, match=match):
        ds.DatasetParams.from_dict({"folder_train": "/x", field: value})


# ---------------------------------------------------------------------------------------------
# the dolphins-and-seahorses dataset through the routes, the scheduler and the job process


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from fastapi.testclient import TestClient

    from caffe.studio.app import create_app

    jobs = tmp_path_factory.mktemp("jobs")
    app = create_app({"jobs_dir": jobs, "devices": ["cpu"], "data_roots": [asset("dolphins-and-seahorses").parent]})
    with TestClient(app) as client:
        yield client, app.state.studio


@pytest.fixture(scope="module")
def dolphins(studio):
    client, st = studio
    r = client.post(
        "/datasets/images/classification",
        data={"folder_train": str(asset("dolphins-and-seahorses")), "dataset_name": "dolphins-and-seahorses"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    job_id = r.headers["location"].rsplit("/", 1)[1]
    job = st.scheduler.wait(job_id, timeout=120)
    assert job.status == "Done", (st.store.job_dir(job_id) / "log.txt").read_text()
    return job_id, st.store.job_dir(job_id)


def test_form_has_labelled_fields(studio):
    client, _ = studio
    html = client.get("/datasets/images/classification/new").text
    for field_id in (
        "dataset-name",
        "folder-train",
        "folder-pct-val",
        "folder-pct-test",
        "resize-width",
        "resize-height",
        "resize-mode",
        "resize-channels",
        "encoding",
        "folder-min-per-class",
        "folder-max-per-class",
        "textfile-train-upload",
        "textfile-labels-local",
        "create-dataset",
    ):
        assert f'id="{field_id}"' in html, field_id
        if field_id not in ("create-dataset", "resize-height"):
            assert f'for="{field_id}"' in html, field_id
    assert re.search(r'id="resize-height"[^>]*aria-label="Image height"', html)
    assert re.search(r'id="folder-pct-val"[^>]*value="25"', html)
    assert re.search(r'id="resize-width"[^>]*value="256"', html)


def test_dolphins_counts_match_the_guide(studio, dolphins):
    client, _ = studio
    job_id, job_dir = dolphins
    info = client.get(f"/datasets/{job_id}.json").json()
    r = info["result"]
    assert info["status"] == "Done" and r["counts"] == {"train": 92, "val": 30}
    assert r["per_class"] == {"train": {"dolphin": 49, "seahorse": 43}, "val": {"dolphin": 16, "seahorse": 14}}
    assert r["image_dims"] == [256, 256, 3] and r["encoding"] == "png" and r["skipped"] == []
    assert (job_dir / "labels.txt").read_text() == "dolphin\nseahorse\n"
    events = [json.loads(line) for line in (job_dir / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["counts"] == {"train": 92, "val": 30}
    train_progress = [e for e in events if e["event"] == "progress" and e["stage"] == "train"]
    assert train_progress[0]["done"] == 0 and train_progress[-1]["done"] == train_progress[-1]["total"] == 92
    assert "Dataset done: 92 train, 30 val" in (job_dir / "log.txt").read_text()


def test_dolphins_db_records(dolphins):
    _, job_dir = dolphins
    listed = [line.rsplit(" ", 1) for line in (job_dir / "train.txt").read_text().splitlines()]
    recs = _records(job_dir / "train_db")
    assert len(recs) == len(listed) == 92
    for i, ((key, d), (path, label)) in enumerate(zip(recs, listed, strict=True)):
        assert key == item_key(i, path) and d.label == int(label) and d.encoded
    # a colour image: the stored planes are B, G, R of the squashed picture
    key, d = recs[0]
    expected = np.asarray(Image.open(listed[0][0]).convert("RGB").resize((256, 256), Image.Resampling.BILINEAR))
    assert np.array_equal(_bgr(d), expected[:, :, ::-1])
    # the grayscale dolphin is stored with 3 equal channels
    gray = [d for split in ("train", "val") for k, d in _records(job_dir / f"{split}_db") if b"dolphin/image_0042" in k]
    assert len(gray) == 1
    img = _bgr(gray[0])
    assert img.shape == (256, 256, 3) and np.array_equal(img[:, :, 0], img[:, :, 2])


def test_dolphins_mean_is_the_train_db_mean(dolphins):
    _, job_dir = dolphins
    total = np.zeros((256, 256, 3))
    recs = _records(job_dir / "train_db")
    for _, d in recs:
        total += _bgr(d)
    expected = (total / len(recs)).transpose(2, 0, 1)  # C x H x W, B G R
    blob = pb.BlobProto()
    blob.ParseFromString((job_dir / "mean.binaryproto").read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 256, 256)
    assert np.allclose(np.array(blob.data).reshape(3, 256, 256), expected, atol=1e-3)
    jpg = np.asarray(Image.open(job_dir / "mean.jpg"))
    assert jpg.shape == (256, 256, 3)
    assert np.abs(jpg.astype(float) - expected[::-1].transpose(1, 2, 0)).mean() < 2  # RGB, JPEG-close


def test_dataset_page_and_explore(studio, dolphins):
    client, _ = studio
    job_id, job_dir = dolphins
    page = client.get(f"/datasets/{job_id}").text
    assert 'id="count-train">92<' in page and 'id="count-val">30<' in page
    assert f"/datasets/{job_id}/explore?db=train" in page and 'id="dataset-mean"' in page
    assert client.get(f"/datasets/{job_id}/mean.jpg").headers["content-type"] == "image/jpeg"

    html = client.get(f"/datasets/{job_id}/explore", params={"db": "val", "label": 1, "size": 10, "page": 1}).text
    indexes = [int(i) for i in re.findall(r'data-index="(\d+)" data-label="1"', html)]
    val = [int(line.rsplit(" ", 1)[1]) for line in (job_dir / "val.txt").read_text().splitlines()]
    seahorses = [i for i, label in enumerate(val) if label == 1]
    assert indexes == seahorses[10:14] and "page 2 of 2 (14 images)" in html
    assert 'data-label="0"' not in html

    png = client.get(f"/datasets/{job_id}/explore/image", params={"db": "val", "index": indexes[0]})
    assert png.headers["content-type"] == "image/png"
    shown = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR)
    stored = _bgr(_records(job_dir / "val_db")[indexes[0]][1])
    assert np.array_equal(shown, stored)
    assert client.get(f"/datasets/{job_id}/explore/image", params={"db": "val", "index": 30}).status_code == 404
    assert client.get(f"/datasets/{job_id}/explore", params={"db": "../x"}).status_code == 400


def test_json_route_refuses_bad_input(studio, tmp_path):
    client, st = studio
    before = len(st.store.list())
    r = client.post("/datasets/images/classification.json", data={"folder_train": "../../etc", "dataset_name": "x"})
    assert r.status_code == 400 and "'..' is not allowed" in r.json()["errors"][0]
    r = client.post("/datasets/images/classification.json", data={"folder_train": "/etc", "dataset_name": "x"})
    assert r.status_code == 400 and "outside the folders" in r.json()["errors"][0]
    one = str(asset("dolphins-and-seahorses/dolphin"))  # a folder of images, no class sub-folders
    r = client.post("/datasets/images/classification.json", json={"folder_train": one, "dataset_name": "x"})
    assert r.status_code == 400 and "0 class sub-folder(s)" in r.json()["errors"][0]
    # list files uploaded: a line without a label, and a path leaving the roots
    files = {
        "textfile_train_images": ("train.txt", io.BytesIO(b"dolphin/image_0001.jpg 0\ndolphin/image_0002.jpg\n")),
        "textfile_labels_file": ("labels.txt", io.BytesIO(b"dolphin\nseahorse\n")),
    }
    data = {"method": "textfile", "dataset_name": "lists", "textfile_train_folder": str(DOLPHINS)}
    r = client.post("/datasets/images/classification.json", data=data, files=files)
    assert r.status_code == 400 and "train.txt:2: expected 'path label'" in r.json()["errors"][0]
    html = client.post("/datasets/images/classification", data={"folder_train": "../../etc", "dataset_name": "x"})
    assert html.status_code == 400 and 'id="dataset-error"' in html.text and "not allowed" in html.text
    assert 'value="../../etc"' in html.text  # the form keeps what was typed
    assert len(st.store.list()) == before  # nothing was created


def test_json_route_with_uploaded_lists(studio):
    client, st = studio
    files = {
        "textfile_train_images": ("t.txt", io.BytesIO(b"dolphin/image_0001.jpg 0\nseahorse/image_0001.jpg 1\n")),
        "textfile_val_images": ("v.txt", io.BytesIO(b"dolphin/image_0002.jpg 0\n")),
        "textfile_labels_file": ("l.txt", io.BytesIO(b"dolphin\nseahorse\n")),
    }
    data = {
        "method": "textfile",
        "dataset_name": "lists",
        "textfile_train_folder": str(DOLPHINS),
        "resize_width": "32",
        "resize_height": "32",
        "resize_mode": "crop",
        "encoding": "none",
    }
    r = client.post("/datasets/images/classification.json", data=data, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "lists" and body["status"] in ("Waiting", "Running")
    job = st.scheduler.wait(body["job_id"], timeout=120)
    assert job.status == "Done" and job.result["counts"] == {"train": 2, "val": 1}
    d = _records(st.store.job_dir(job.id) / "train_db")[0][1]
    assert (d.channels, d.height, d.width, d.encoded) == (3, 32, 32, False)


def test_clone_fills_the_form_and_unknown_ids_are_404(studio, dolphins):
    client, _ = studio
    job_id, _ = dolphins
    html = client.get("/datasets/images/classification/new", params={"clone": job_id}).text
    assert re.search(r'id="folder-train"[^>]*value="' + re.escape(str(DOLPHINS)) + '"', html)
    assert re.search(r'id="dataset-name"[^>]*value="dolphins-and-seahorses"', html)
    assert client.get("/datasets/20000101-000000-abcd.json").status_code == 404
    assert client.get("/datasets/images/classification/new", params={"clone": "nope"}).status_code == 404


def test_job_process_reports_bad_parameters(tmp_path):
    (tmp_path / "params.json").write_text(json.dumps({"folder_train": str(tmp_path), "resize_mode": "zoom"}))
    assert ds.main([str(tmp_path)]) == 1
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "error" and "resize_mode: must be one of" in events[-1]["message"]
    assert ds.main([]) == 1


def test_a_broken_png_chunk_is_a_data_error(tmp_path):
    """Found by scripts/fuzz.py: Pillow raises SyntaxError for a PNG whose chunk is broken (was a 500)."""
    # the fuzzer's 80-byte reproducer: an 8x8 PNG whose image data runs into a chunk with no type
    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000080000000808020000004b6d29dc0000001f49444154789c638a151191"
        "2ab22d76e060c10618151414b04ab00ca404e383f00000000049454e44ae4260"
    )
    path = tmp_path / "broken.png"
    path.write_bytes(png)
    with pytest.raises(DataError, match=r"broken\.png: not a readable image"):
        ds.load_image(path)
