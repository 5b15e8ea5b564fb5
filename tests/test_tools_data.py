"""Data tools: convert_imageset, compute_image_mean, convert_mnist_data, convert_cifar_data, extract_features,
download_data. What they write is read back through the Data layer (or the databases) and compared with
decoding the same files directly."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import logging
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import ASSETS, asset
from google.protobuf import text_format

import caffe
from caffe.data.db import open_db
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_binary
from caffe.tools import download as dl
from caffe.tools.cli import main

DS = ASSETS / "dolphins-and-seahorses"
# colour images of two sizes (179x300 and 166x300) and both classes
SOME = ["dolphin/image_0001.jpg", "dolphin/image_0002.jpg", "dolphin/image_0003.jpg", "seahorse/image_0001.jpg"]
_COLOR = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # Caffe's OpenCV never applied EXIF orientation


def decoded(path: Path, size: int = 0, gray: bool = False) -> np.ndarray:
    """A file as Caffe's tools read it: OpenCV BGR (or gray), resized bilinearly, as (C, H, W) float32."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if gray else _COLOR)
    assert img is not None, path
    if size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    if img.ndim == 2:
        img = img[:, :, None]
    return img.transpose(2, 0, 1).astype(np.float32)


def write_list(path: Path, names: list[str], labels: list[int] | None = None) -> Path:
    labels = list(range(len(names))) if labels is None else labels
    path.write_text("".join(f"{n} {lab}\n" for n, lab in zip(names, labels)))
    return path


def data_net(source: Path, batch: int, backend: str) -> caffe.Net:
    text = f"""
    layer {{ name: "data" type: "Data" top: "data" top: "label"
            data_param {{ source: "{source}" batch_size: {batch} backend: {backend.upper()} }} }}
    """
    return caffe.Net(text_format.Parse(text, pb.NetParameter()), caffe.TEST)


def records(path: Path, backend: str | None = None) -> list[tuple[bytes, pb.Datum]]:
    with open_db(path, backend, "read") as db:
        return [(k, pb.Datum.FromString(v)) for k, v in db.cursor()]


# ---------------------------------------------------------------------------------------------
# convert_imageset -> Data layer


@pytest.mark.parametrize(
    "backend, flags, size",
    [
        ("lmdb", [], 0),
        ("leveldb", [], 64),
        ("lmdb", ["--encoded"], 0),  # the JPEG files' own bytes
        ("leveldb", ["--encode_type=png"], 48),  # resized, re-encoded losslessly; encode_type implies encoded
        ("lmdb", ["-encoded", "-encode_type", "png"], 0),  # JPEGs re-encoded as PNG (extension differs)
    ],
)
def test_images_round_trip_through_the_data_layer(tmp_path: Path, backend: str, flags: list[str], size: int):
    listfile = write_list(tmp_path / "list.txt", SOME)
    db = tmp_path / f"db_{backend}"
    resize = [f"--resize_width={size}", f"--resize_height={size}"] if size else []
    assert main(["convert_imageset", *flags, *resize, f"--backend={backend}", f"{DS}/", str(listfile), str(db)]) == 0
    recs = records(db, backend)
    assert [k for k, _ in recs] == [b"%08d_%s" % (i, n.encode()) for i, n in enumerate(SOME)]
    encoded = bool(flags)
    assert all(d.encoded == encoded for _, d in recs)
    if flags == ["--encoded"]:  # stored as the file itself
        assert recs[0][1].data == (DS / SOME[0]).read_bytes()
    batch = len(SOME) if size else 1  # unresized images differ in size: one per batch, as Caffe allows
    net = data_net(db, batch, backend)
    seen = set()
    for _ in range(len(SOME) // batch):
        out = net.forward()
        for k in range(batch):
            label = int(out["label"][k])
            seen.add(label)
            np.testing.assert_array_equal(out["data"][k], decoded(DS / SOME[label], size))
    assert seen == set(range(len(SOME)))


def test_dolphins_and_seahorses_resized_to_256(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    folder = asset("dolphins-and-seahorses")
    names = [f"dolphin/{p.name}" for p in sorted((folder / "dolphin").glob("*.jpg"))]
    names += [f"seahorse/{p.name}" for p in sorted((folder / "seahorse").glob("*.jpg"))]
    assert len(names) == 122
    labels = [0 if n.startswith("dolphin") else 1 for n in names]
    listfile = write_list(tmp_path / "train.txt", names, labels)
    db = tmp_path / "train_lmdb"
    with caplog.at_level(logging.INFO, logger="caffe"):
        size = ["--resize_width", "256", "--resize_height", "256"]
        rc = main(["convert_imageset", *size, f"{folder}/", str(listfile), str(db)])
    assert rc == 0
    assert "A total of 122 images." in caplog.text and "Processed 122 files." in caplog.text
    recs = records(db)
    assert len(recs) == 122
    assert all((d.channels, d.height, d.width, len(d.data)) == (3, 256, 256, 3 * 256 * 256) for _, d in recs)
    assert [d.label for _, d in recs] == labels
    gray_key = b"%08d_dolphin/image_0042.jpg" % names.index("dolphin/image_0042.jpg")
    gray = np.frombuffer(dict(recs)[gray_key].data, np.uint8).reshape(3, 256, 256)
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()  # the grayscale file, as 3 equal channels

    # compute_image_mean over it equals NumPy's mean of the same decoded images
    mean_file = tmp_path / "mean.binaryproto"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="caffe"):
        assert main(["compute_image_mean", str(db), str(mean_file)]) == 0
    blob = read_binary(mean_file, pb.BlobProto())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 256, 256)
    mean = np.array(blob.data, np.float32).reshape(3, 256, 256)
    ref = np.mean([decoded(folder / n, 256) for n in names], axis=0, dtype=np.float64)
    np.testing.assert_allclose(mean, ref, atol=1e-4, rtol=0)
    assert "Number of channels: 3" in caplog.text
    for c in range(3):
        assert f"mean_value channel [{c}]: {ref[c].mean():g}" in caplog.text


def test_mean_of_encoded_datums_decodes_them(tmp_path: Path):
    listfile = write_list(tmp_path / "list.txt", SOME)
    db = tmp_path / "enc_leveldb"
    args = ["--encode_type=png", "--resize_width=40", "--resize_height=30", "--backend=leveldb"]
    assert main(["convert_imageset", *args, str(DS), str(listfile), str(db)]) == 0  # ROOTFOLDER without '/'
    mean_file = tmp_path / "mean.binaryproto"
    assert main(["compute_image_mean", str(db), str(mean_file)]) == 0  # backend detected
    mean = caffe.io.blobproto_to_array(read_binary(mean_file, pb.BlobProto()))
    ref = np.mean([cv2.resize(cv2.imread(str(DS / n), _COLOR), (40, 30)) for n in SOME], axis=0)
    np.testing.assert_allclose(mean[0], ref.transpose(2, 0, 1), atol=1e-4)


def test_mean_of_different_sizes_is_an_error_naming_the_key(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    listfile = write_list(tmp_path / "list.txt", SOME)
    db = tmp_path / "db"
    assert main(["convert_imageset", f"{DS}/", str(listfile), str(db)]) == 0
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["compute_image_mean", "--backend=lmdb", str(db), str(tmp_path / "m")]) == 1
    assert "00000002_dolphin/image_0003.jpg" in caplog.text and "3x166x300" in caplog.text
    assert not (tmp_path / "m").exists()


def test_gray_and_gflags_boolean_spellings(tmp_path: Path):
    listfile = write_list(tmp_path / "list.txt", SOME[:2])
    assert main(["convert_imageset", "-gray", f"{DS}/", str(listfile), str(tmp_path / "g")]) == 0
    assert main(["convert_imageset", "--gray=false", f"{DS}/", str(listfile), str(tmp_path / "c")]) == 0
    assert main(["convert_imageset", "--gray", "--nogray", f"{DS}/", str(listfile), str(tmp_path / "c2")]) == 0
    g = records(tmp_path / "g")[0][1]
    assert (g.channels, g.height, g.width) == (1, 179, 300)
    np.testing.assert_array_equal(
        np.frombuffer(g.data, np.uint8).reshape(1, 179, 300), decoded(DS / SOME[0], gray=True)
    )
    assert records(tmp_path / "c")[0][1].channels == 3 and records(tmp_path / "c2")[0][1].channels == 3


def test_shuffle_is_seeded_and_keeps_every_image(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    names = [f"dolphin/image_{i:04d}.jpg" for i in range(1, 21)]
    listfile = write_list(tmp_path / "list.txt", names)
    args = ["--shuffle", "--resize_width=8", "--resize_height=8", f"{DS}/", str(listfile)]
    with caplog.at_level(logging.INFO, logger="caffe"):
        assert main(["convert_imageset", *args, str(tmp_path / "a")]) == 0
    assert "Shuffling data" in caplog.text
    assert main(["convert_imageset", *args, str(tmp_path / "b")]) == 0
    assert main(["convert_imageset", "--random_seed=7", *args, str(tmp_path / "c")]) == 0
    a, b, c = (records(tmp_path / x) for x in "abc")
    assert [k for k, _ in a] == [k for k, _ in b]  # same seed, same order
    order = [int(d.label) for _, d in a]
    assert sorted(order) == list(range(20)) and order != list(range(20))
    assert [int(d.label) for _, d in c] != order
    for i, (key, datum) in enumerate(a):  # keys number the shuffled lines
        assert key == b"%08d_%s" % (i, names[datum.label].encode())


def test_unreadable_images_are_named_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = tmp_path / "images"
    (root / "dolphin").mkdir(parents=True)
    for n in SOME[:3]:
        (root / n).write_bytes((DS / n).read_bytes())
    (root / "dolphin" / "notes.jpg").write_text("this is not a JPEG\n")
    names = [SOME[0], "dolphin/notes.jpg", SOME[1], "dolphin/missing.jpg", SOME[2]]
    listfile = write_list(tmp_path / "list.txt", names)
    db = tmp_path / "db"
    with caplog.at_level(logging.INFO, logger="caffe"):
        assert main(["convert_imageset", f"{root}/", str(listfile), str(db)]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("notes.jpg" in w for w in warnings) and any("missing.jpg" in w for w in warnings)
    assert any("2 of 5 listed images could not be read" in w for w in warnings)
    assert "Processed 3 files." in caplog.text
    keys = [k for k, _ in records(db)]
    assert keys == [b"00000000_" + SOME[0].encode(), b"00000002_" + SOME[1].encode(), b"00000004_" + SOME[2].encode()]


def test_encoded_file_without_extension_is_stored_as_is(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = tmp_path / "images"
    root.mkdir()
    (root / "picture").write_bytes((DS / SOME[0]).read_bytes())
    listfile = write_list(tmp_path / "list.txt", ["picture"], [5])
    with caplog.at_level(logging.WARNING, logger="caffe"):
        assert main(["convert_imageset", "--encoded", f"{root}/", str(listfile), str(tmp_path / "db")]) == 0
    assert "Failed to guess the encoding of 'picture'" in caplog.text
    (key, datum), *_ = records(tmp_path / "db")
    assert key == b"00000000_picture" and datum.encoded and datum.label == 5
    assert datum.data == (DS / SOME[0]).read_bytes()


def test_progress_bar_on_a_terminal_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from caffe.util import progress

    listfile = write_list(tmp_path / "list.txt", SOME)
    assert main(["convert_imageset", f"{DS}/", str(listfile), str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "Processed 4 files." in err and "img/s" not in err and "100%" not in err
    monkeypatch.setattr(progress, "_stderr_is_tty", lambda: True)
    assert main(["convert_imageset", f"{DS}/", str(listfile), str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "4/4" in err and "100%" in err
    assert "Processed 4 files." in err  # log lines still come (above the bar)


def test_list_line_without_label_names_file_and_line(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    listfile = tmp_path / "list.txt"
    listfile.write_text(f"{SOME[0]} 0\n{SOME[1]}\n")
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["convert_imageset", f"{DS}/", str(listfile), str(tmp_path / "db")]) == 1
    assert f"{listfile}:2:" in caplog.text and "no label" in caplog.text
    assert not (tmp_path / "db").exists()
    listfile.write_text(f"{SOME[0]} zero\n")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["convert_imageset", f"{DS}/", str(listfile), str(tmp_path / "db")]) == 1
    assert f"{listfile}:1:" in caplog.text and "'zero'" in caplog.text


def test_check_size_error_leaves_no_database(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    listfile = write_list(tmp_path / "list.txt", SOME)  # the third image is 166 rows high, the others 179
    db = tmp_path / "db"
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["convert_imageset", "--check_size", f"{DS}/", str(listfile), str(db)]) == 1
    assert "dolphin/image_0003.jpg is 3x166x300" in caplog.text
    assert list(tmp_path.iterdir()) == [listfile]  # no database, no partial folder
    size = ["--resize_width=9", "--resize_height=9"]
    assert main(["convert_imageset", "--check_size", *size, f"{DS}/", str(listfile), str(db)]) == 0
    assert len(records(db)) == 4


def test_existing_database_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    listfile = write_list(tmp_path / "list.txt", SOME[:1])
    db = tmp_path / "db"
    stale = tmp_path / ".db.partial-999999999"  # left by a killed run (no such process)
    stale.mkdir()
    assert main(["convert_imageset", f"{DS}/", str(listfile), str(db)]) == 0
    assert not stale.exists()
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["convert_imageset", f"{DS}/", str(listfile), str(db)]) == 1
    assert "already exists" in caplog.text
    assert len(records(db)) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["convert_imageset", "root/", "list.txt"],
        ["convert_imageset", "--resize_width=big", "a/", "b", "c"],
        ["convert_imageset", "--gray=maybe", "a/", "b", "c"],
        ["compute_image_mean"],
        ["compute_image_mean", "a", "b", "c"],
        ["convert_mnist_data", "images"],
        ["convert_cifar_data", "in", "out"],
        ["extract_features", "w", "p", "b", "d", "1"],
        ["download_data"],
        ["download_data", "--md5=xyz", "http://example.com/f"],
    ],
)
def test_wrong_arguments_print_usage_and_fail(argv: list[str], capsys: pytest.CaptureFixture[str]):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "usage:" in err and "error:" in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


def test_tool_help_exits_zero(capsys: pytest.CaptureFixture[str]):
    assert main(["convert_imageset", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--resize_width" in out and "--encode_type" in out and "--check_size" in out


# ---------------------------------------------------------------------------------------------
# convert_mnist_data


def _idx(path: Path, magic: int, dims: list[int], payload: bytes) -> Path:
    path.write_bytes(struct.pack(f">{1 + len(dims)}I", magic, *dims) + payload)
    return path


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_convert_mnist_data_test_set(tmp_path: Path, backend: str, caplog: pytest.LogCaptureFixture):
    images_gz, labels_gz = asset("mnist/t10k-images-idx3-ubyte.gz"), asset("mnist/t10k-labels-idx1-ubyte.gz")
    db = tmp_path / f"mnist_test_{backend}"
    with caplog.at_level(logging.INFO, logger="caffe"):
        assert main(["convert_mnist_data", str(images_gz), str(labels_gz), str(db), f"--backend={backend}"]) == 0
    assert "A total of 10000 items." in caplog.text and "Rows: 28 Cols: 28" in caplog.text
    assert "Processed 10000 files." in caplog.text
    images = np.frombuffer(gzip.decompress(images_gz.read_bytes()), np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.decompress(labels_gz.read_bytes()), np.uint8, offset=8)
    with open_db(db, backend) as d:
        assert len(d) == 10000
        for i in (0, 1, 4321, 9999):
            datum = pb.Datum.FromString(d.get(b"%08d" % i))
            assert (datum.channels, datum.height, datum.width, datum.label) == (1, 28, 28, labels[i])
            assert not datum.encoded and datum.data == images[i].tobytes()
        assert next(iter(d.cursor()))[0] == b"00000000"


def test_convert_mnist_data_reads_gunzipped_or_gz_beside(tmp_path: Path):
    imgs = _idx(tmp_path / "imgs-idx3-ubyte", 2051, [2, 3, 4], bytes(range(24)))
    (tmp_path / "labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 2049, 2) + b"\x07\x03"))
    db = tmp_path / "db"
    assert main(["convert_mnist_data", str(imgs), str(tmp_path / "labels-idx1-ubyte"), str(db)]) == 0
    recs = records(db)
    assert [(k, d.label, d.height, d.width, d.data) for k, d in recs] == [
        (b"00000000", 7, 3, 4, bytes(range(12))),
        (b"00000001", 3, 3, 4, bytes(range(12, 24))),
    ]


def test_convert_mnist_data_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    imgs = _idx(tmp_path / "imgs", 2051, [3, 2, 2], bytes(12))
    labels = _idx(tmp_path / "labels", 2049, [2], bytes(2))
    short = _idx(tmp_path / "short", 2051, [3, 2, 2], bytes(10))
    cases = [
        ([str(labels), str(imgs)], "incorrect image file magic 2049"),
        ([str(imgs), str(labels)], "holds 3 images but"),
        ([str(short), str(_idx(tmp_path / "l3", 2049, [3], bytes(3)))], "truncated"),
        ([str(tmp_path / "nope"), str(labels)], "Unable to open file"),
    ]
    for args, message in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="caffe"):
            assert main(["convert_mnist_data", *args, str(tmp_path / "db")]) == 1
        assert message in caplog.text
        assert not (tmp_path / "db").exists()


# ---------------------------------------------------------------------------------------------
# convert_cifar_data


def _cifar_batch(path: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    path.write_bytes(np.concatenate([labels[:, None], images], axis=1).tobytes())
    return labels, images


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_convert_cifar_data_on_tiny_batches(tmp_path: Path, backend: str, caplog: pytest.LogCaptureFixture):
    src = tmp_path / "cifar-10-batches-bin"
    src.mkdir()
    train = [_cifar_batch(src / f"data_batch_{i}.bin", 2, i) for i in range(1, 6)]
    test = _cifar_batch(src / "test_batch.bin", 3, 0)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="caffe"):
        assert main(["convert_cifar_data", str(src), str(out), backend]) == 0
    for line in ("Writing Training data", "Training Batch 1", "Training Batch 5", "Writing Testing data"):
        assert line in caplog.text
    tr = records(out / f"cifar10_train_{backend}", backend)
    assert [k for k, _ in tr] == [b"%05d" % i for i in range(10)]
    labels = np.concatenate([lab for lab, _ in train])
    images = np.concatenate([img for _, img in train])
    for i, (_, d) in enumerate(tr):
        assert (d.channels, d.height, d.width, d.label) == (3, 32, 32, labels[i])
        assert d.data == images[i].tobytes()
    te = records(out / f"cifar10_test_{backend}", backend)
    assert [d.label for _, d in te] == list(test[0]) and te[2][1].data == test[1][2].tobytes()


def test_convert_cifar_data_checks_inputs_first(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    src = tmp_path / "bin"
    src.mkdir()
    for i in range(1, 6):
        _cifar_batch(src / f"data_batch_{i}.bin", 1, i)
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["convert_cifar_data", str(src), str(tmp_path / "out"), "lmdb"]) == 1
    assert "test_batch.bin" in caplog.text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    (src / "test_batch.bin").write_bytes(bytes(3074))  # a CIFAR-100 record
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["convert_cifar_data", str(src), str(tmp_path / "out"), "lmdb"]) == 1
    assert "3073-byte" in caplog.text


# ---------------------------------------------------------------------------------------------
# extract_features


@pytest.fixture(scope="module")
def lenet_test_net(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(prototxt reading a 10000-image MNIST test LMDB, weights)."""
    tmp = tmp_path_factory.mktemp("lenet")
    db = tmp / "mnist_test_lmdb"
    images, labels = asset("mnist/t10k-images-idx3-ubyte.gz"), asset("mnist/t10k-labels-idx1-ubyte.gz")
    assert main(["convert_mnist_data", str(images), str(labels), str(db)]) == 0
    text = asset("caffe-ref/examples/mnist/lenet_train_test.prototxt").read_text()
    text = text.replace('"examples/mnist/mnist_test_lmdb"', f'"{db}"')
    text = text.replace('"examples/mnist/mnist_train_lmdb"', f'"{db}"')
    proto = tmp / "lenet_train_test.prototxt"
    proto.write_text(text)
    return proto, asset("models/lenet_mnist_newformat/lenet_iter_10000.caffemodel")


def test_extract_features_stores_blob_items_as_float_datums(
    tmp_path: Path, lenet_test_net: tuple[Path, Path], caplog: pytest.LogCaptureFixture
):
    proto, weights = lenet_test_net
    dbs = [tmp_path / "ip1_feat", tmp_path / "ip2_feat"]
    with caplog.at_level(logging.INFO, logger="caffe"):
        rc = main(["extract_features", str(weights), str(proto), "ip1,ip2", ",".join(map(str, dbs)), "2", "lmdb"])
    assert rc == 0
    assert "Extracting Features" in caplog.text
    assert "Extracted features of 200 query images for feature blob ip2" in caplog.text
    net = caffe.Net(str(proto), caffe.TEST, weights=str(weights))
    want = {"ip1": [], "ip2": []}
    for _ in range(2):
        out = net.forward(blobs=["ip1", "ip2"])
        for name in want:
            want[name].append(out[name].copy())
    for db, name, dim in ((dbs[0], "ip1", 500), (dbs[1], "ip2", 10)):
        recs = records(db, "lmdb")
        assert [k for k, _ in recs] == [b"%010d" % i for i in range(200)]
        assert all((d.channels, d.height, d.width, len(d.float_data), d.data) == (dim, 1, 1, dim, b"") for _, d in recs)
        got = np.array([d.float_data for _, d in recs], np.float32)
        np.testing.assert_allclose(got, np.concatenate(want[name]), rtol=1e-5, atol=1e-5)


def test_extract_features_legacy_dims_leveldb_and_errors(
    tmp_path: Path, lenet_test_net: tuple[Path, Path], caplog: pytest.LogCaptureFixture
):
    proto, weights = lenet_test_net
    db = tmp_path / "pool2_leveldb"
    assert main(["extract_features", str(weights), str(proto), "pool2", str(db), "1", "leveldb", "CPU"]) == 0
    recs = records(db, "leveldb")
    assert len(recs) == 100 and (recs[0][1].channels, recs[0][1].height, recs[0][1].width) == (50, 4, 4)
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["extract_features", str(weights), str(proto), "fc9", str(tmp_path / "x"), "1", "lmdb"]) == 1
    assert "Unknown feature blob name fc9" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["extract_features", str(weights), str(proto), "ip1,ip2", str(tmp_path / "x"), "1", "lmdb"]) == 1
    assert "must be equal" in caplog.text
    assert not (tmp_path / "x").exists()

    # GPU mode where there is a GPU; a one-line error where there is none. The mode is restored.
    caplog.clear()
    argv = ["extract_features", str(weights), str(proto), "ip2", str(tmp_path / "gpu_feat"), "1", "lmdb", "GPU", "0"]
    with caplog.at_level(logging.ERROR, logger="caffe"):
        rc = main(argv)
    if torch.cuda.is_available():
        assert rc == 0 and len(records(tmp_path / "gpu_feat")) == 100
    else:
        assert rc == 1 and "no CUDA device" in caplog.text and not (tmp_path / "gpu_feat").exists()
    assert caffe.common.mode() == "CPU"


def test_mean_of_float_datums(tmp_path: Path, lenet_test_net: tuple[Path, Path]):
    proto, weights = lenet_test_net
    db = tmp_path / "ip2"
    assert main(["extract_features", str(weights), str(proto), "ip2", str(db), "3", "leveldb"]) == 0
    feats = np.array([d.float_data for _, d in records(db)], np.float64)
    mean_file = tmp_path / "mean.binaryproto"
    assert main(["compute_image_mean", "--backend", "leveldb", str(db), str(mean_file)]) == 0
    mean = caffe.io.blobproto_to_array(read_binary(mean_file, pb.BlobProto()))
    assert mean.shape == (1, 10, 1, 1)
    np.testing.assert_allclose(mean.ravel(), feats.mean(axis=0), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# download_data


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files like http.server, plus 'Range: bytes=N-' (which http.server ignores); records requests."""

    requests: list[tuple[str, str | None]] = []  # noqa: RUF012 - one list per test (reset by the fixture)
    ranges = True

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).requests.append((self.path, self.headers.get("Range")))
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not (self.ranges and rng and path.is_file()):
            return super().do_GET()
        data = path.read_bytes()
        start = int(rng.split("=")[1].split("-")[0])
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return None
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])
        return None


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str, type[_RangeHandler]]]:
    """A folder served over http on 127.0.0.1 by a thread: (folder, base URL, handler class)."""
    served = tmp_path / "served"
    served.mkdir()

    class Handler(_RangeHandler):
        requests: list[tuple[str, str | None]] = []  # noqa: RUF012

        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(served), **kwargs)  # type: ignore[misc]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}", Handler
    finally:
        server.shutdown()
        server.server_close()


def test_download_from_a_mirror_folder_verifies_and_gunzips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    mirror = asset("mnist")
    out = tmp_path / "out"
    url = "http://yann.lecun.com/exdb/mnist/t10k-labels-idx1-ubyte.gz"
    assert main(["download_data", f"--mirror={mirror}", f"--output_dir={out}", url]) == 0
    assert (out / "t10k-labels-idx1-ubyte.gz").read_bytes() == (mirror / "t10k-labels-idx1-ubyte.gz").read_bytes()
    monkeypatch.setenv("CAFFE_DATA_MIRROR", mirror.as_uri())  # file:// URL, from the environment
    out2 = tmp_path / "out2"
    assert main(["download_data", "--gunzip", f"--output_dir={out2}", url]) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["t10k-labels-idx1-ubyte"]
    assert (out2 / "t10k-labels-idx1-ubyte").stat().st_size == 10008
    assert main(["download_data", "--gunzip", f"--output_dir={out2}", url]) == 0  # already there: nothing to do


def test_known_checksums_are_the_published_ones():
    for name, known in dl.KNOWN_FILES.items():
        data = asset(f"mnist/{name}").read_bytes()
        assert hashlib.md5(data).hexdigest() == known.md5 and hashlib.sha1(data).hexdigest() == known.sha1
    assert dl.KNOWN_FILES["train-images-idx3-ubyte.gz"].md5 == "f68b3c2dcbeaaa9fbdd348bbdeb94873"


def test_checksum_mismatch_is_an_error_and_removes_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "train-labels-idx1-ubyte.gz").write_bytes(b"not the MNIST labels")
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR, logger="caffe"):
        url = "http://yann.lecun.com/exdb/mnist/train-labels-idx1-ubyte.gz"
        rc = main(["download_data", "--mirror", str(mirror), "--output_dir", str(out), url])
    assert rc == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "SHA1 mismatch" in errors[0] and "removed" in errors[0]
    assert list(out.iterdir()) == []


def test_http_sha1_mismatch_and_missing_mirror_file(
    tmp_path: Path, http_dir: tuple[Path, str, type[_RangeHandler]], caplog: pytest.LogCaptureFixture
):
    served, base, _ = http_dir
    (served / "blob.bin").write_bytes(b"x" * 1000)
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["download_data", "--sha1", "0" * 40, "--output_dir", str(out), f"{base}/blob.bin"]) == 1
    assert "SHA1 mismatch" in caplog.text and not any(out.iterdir())
    good = hashlib.sha1(b"x" * 1000).hexdigest()
    assert main(["download_data", "--sha1", good, "--output_dir", str(out), f"{base}/blob.bin"]) == 0
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["download_data", "--mirror", str(served), "--output_dir", str(out), f"{base}/other.bin"]) == 1
    assert "not found in the mirror" in caplog.text


def test_http_mirror_and_download_failure(
    tmp_path: Path, http_dir: tuple[Path, str, type[_RangeHandler]], caplog: pytest.LogCaptureFixture
):
    served, base, handler = http_dir
    (served / "sub").mkdir()
    (served / "sub" / "file.txt").write_text("hello")
    out = tmp_path / "out"
    url = "http://nowhere.invalid/file.txt"  # only its name is used: the mirror serves it
    assert main(["download_data", f"--mirror={base}/sub/", f"--output_dir={out}", url]) == 0
    assert (out / "file.txt").read_text() == "hello" and handler.requests[-1][0] == "/sub/file.txt"
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["download_data", f"--output_dir={out}", f"{base}/absent.txt"]) == 1
    assert "HTTP 404" in caplog.text


def test_resume_of_a_partial_download(tmp_path: Path, http_dir: tuple[Path, str, type[_RangeHandler]]):
    served, base, handler = http_dir
    payload = np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    (served / "big.bin").write_bytes(payload)
    sha1 = hashlib.sha1(payload).hexdigest()
    out = tmp_path / "out"
    out.mkdir()
    (out / "big.bin.part").write_bytes(payload[:1_234_567])  # an interrupted earlier download
    assert main(["download_data", f"--sha1={sha1}", f"--output_dir={out}", f"{base}/big.bin"]) == 0
    assert handler.requests == [("/big.bin", "bytes=1234567-")]
    assert (out / "big.bin").read_bytes() == payload and not (out / "big.bin.part").exists()

    # a server that ignores ranges sends everything again: the partial file is replaced, not appended to
    handler.ranges = False
    (out / "big.bin").unlink()
    (out / "big.bin.part").write_bytes(b"garbage" * 1000)
    assert main(["download_data", f"--sha1={sha1}", f"--output_dir={out}", f"{base}/big.bin"]) == 0
    assert (out / "big.bin").read_bytes() == payload

    # a complete file that fails verification is continued as a partial one (as wget -c would)
    handler.ranges = True
    (out / "big.bin").write_bytes(payload[:2_000_000])
    handler.requests.clear()
    assert main(["download_data", f"--sha1={sha1}", f"--output_dir={out}", f"{base}/big.bin"]) == 0
    assert handler.requests == [("/big.bin", "bytes=2000000-")] and (out / "big.bin").read_bytes() == payload
