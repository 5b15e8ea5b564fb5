"""The tutorials' shell scripts, run as the tutorials run them (from the Caffe root), offline through a mirror.

MNIST: ``get_mnist.sh`` + ``create_mnist.sh`` make mnist_train_lmdb / mnist_test_lmdb, on which both
LeNet caffemodels (current and 2014 V1 format) reach their published accuracy through a Data layer.
ImageNet: ``get_ilsvrc_aux.sh`` from a mirror, ``create_imagenet.sh`` and ``make_imagenet_mean.sh``
on a small image folder. The scripts run in a temporary copy of the repository layout and find
``caffe`` on PATH (a wrapper running this checkout's ``caffe.tools.cli``).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ASSETS, ROOT, asset

import caffe
from caffe.data.db import open_db
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_binary

SCRIPTS = [
    "data/mnist/get_mnist.sh",
    "examples/mnist/create_mnist.sh",
    "data/ilsvrc12/get_ilsvrc_aux.sh",
    "examples/imagenet/create_imagenet.sh",
    "examples/imagenet/make_imagenet_mean.sh",
]
MNIST_FILES = {
    "train-images-idx3-ubyte": 47040016,
    "train-labels-idx1-ubyte": 60008,
    "t10k-images-idx3-ubyte": 7840016,
    "t10k-labels-idx1-ubyte": 10008,
}


@pytest.fixture(scope="module")
def caffe_bin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose PATH has a ``caffe`` running this checkout with this interpreter."""
    bindir = tmp_path_factory.mktemp("bin")
    wrapper = bindir / "caffe"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -c "import sys; from caffe.tools.cli import main; sys.exit(main())" "$@"\n'
    )
    wrapper.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("CAFFE_DATA_MIRROR", None)
    return env


def layout(base: Path, *scripts: str) -> Path:
    """A Caffe-root-like folder holding copies of ``scripts`` at their places."""
    for s in scripts:
        (base / s).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / s, base / s)
    return base


def sh(root: Path, script: str, env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [f"./{script}"], cwd=root, env={**env, **extra}, capture_output=True, text=True, timeout=300, check=False
    )


def test_scripts_are_executable_bash_with_set_e():
    for s in SCRIPTS:
        path = ROOT / s
        assert os.access(path, os.X_OK), f"{s} is not executable"
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "\nset -e\n" in text, s
        assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0, s


# ---------------------------------------------------------------------------------------------
# MNIST


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory: pytest.TempPathFactory, caffe_bin: dict[str, str]) -> Path:
    """get_mnist.sh (from the assets as mirror, given relative to the Caffe root) then create_mnist.sh."""
    root = layout(tmp_path_factory.mktemp("caffe_root"), SCRIPTS[0], SCRIPTS[1])
    mirror = os.path.relpath(asset("mnist"), root)
    t0 = time.perf_counter()
    got = sh(root, SCRIPTS[0], caffe_bin, CAFFE_DATA_MIRROR=mirror)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "Downloading..." in got.stdout
    t1 = time.perf_counter()
    made = sh(root, SCRIPTS[1], caffe_bin)
    assert made.returncode == 0, made.stdout + made.stderr
    assert made.stdout.splitlines() == ["Creating lmdb...", "Done."]
    assert "Processed 60000 files." in made.stderr and "Processed 10000 files." in made.stderr
    t2 = time.perf_counter()
    print(f"\nget_mnist.sh {t1 - t0:.1f}s, create_mnist.sh {t2 - t1:.1f}s")
    return root


def test_get_mnist_unpacks_the_four_files(mnist_root: Path, caffe_bin: dict[str, str]):
    data = mnist_root / "data" / "mnist"
    assert {p.name: p.stat().st_size for p in data.iterdir() if p.suffix != ".sh"} == MNIST_FILES
    for name in MNIST_FILES:
        assert (data / name).read_bytes() == gzip.decompress(asset(f"mnist/{name}.gz").read_bytes())
    again = sh(mnist_root, SCRIPTS[0], caffe_bin)  # all there: nothing fetched, no mirror needed
    assert again.returncode == 0 and again.stdout.splitlines() == ["Downloading...", "Done."]


def test_create_mnist_makes_both_lmdbs(mnist_root: Path):
    example = mnist_root / "examples" / "mnist"
    labels = np.frombuffer((mnist_root / "data/mnist/t10k-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8)
    for name, n in (("mnist_train_lmdb", 60000), ("mnist_test_lmdb", 10000)):
        assert (example / name / "data.mdb").is_file()
        with open_db(example / name, "lmdb") as db:
            assert len(db) == n
            if n == 10000:
                last = pb.Datum.FromString(db.get(b"00009999"))
                assert (last.channels, last.height, last.width, last.label) == (1, 28, 28, labels[-1])
    assert not [p for p in example.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize(
    "weights, published",
    [
        ("lenet_mnist_newformat/lenet_iter_10000.caffemodel", 0.9914),
        ("lenet_mnist_v1format_2014/lenet_iter_10000.caffemodel", 0.9905),
    ],
)
def test_lenet_models_reach_their_accuracy_on_mnist_test_lmdb(mnist_root: Path, weights: str, published: float):
    text = asset("caffe-ref/examples/mnist/lenet_train_test.prototxt").read_text()
    for split in ("train", "test"):
        text = text.replace(f'"examples/mnist/mnist_{split}_lmdb"', f'"{mnist_root}/examples/mnist/mnist_{split}_lmdb"')
    assert "scale: 0.00390625" in text
    proto = mnist_root / f"lenet_{Path(weights).parent.name}.prototxt"
    proto.write_text(text)
    net = caffe.Net(str(proto), caffe.TEST, weights=str(asset(f"models/{weights}")))
    assert net.blobs["data"].shape == (100, 1, 28, 28)
    accuracy = np.mean([float(net.forward()["accuracy"]) for _ in range(100)])  # 100 x 100 = the whole test set
    assert accuracy >= 0.99
    assert round(accuracy, 4) == published  # exactly what Caffe measured


def test_get_mnist_checksum_mismatch_fails_and_leaves_nothing(tmp_path: Path, caffe_bin: dict[str, str]):
    root = layout(tmp_path / "root", SCRIPTS[0])
    data = root / "data" / "mnist"
    for name in list(MNIST_FILES)[:3]:
        (data / name).write_bytes(b"")  # present: skipped
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not MNIST"))
    got = sh(root, SCRIPTS[0], caffe_bin, CAFFE_DATA_MIRROR=str(mirror))
    assert got.returncode != 0
    assert "t10k-labels-idx1-ubyte.gz: SHA1 mismatch" in got.stderr
    assert sorted(p.name for p in data.iterdir()) == sorted(["get_mnist.sh", *list(MNIST_FILES)[:3]])


# ---------------------------------------------------------------------------------------------
# ImageNet


def test_get_ilsvrc_aux_from_a_mirror_of_unpacked_files(tmp_path: Path, caffe_bin: dict[str, str]):
    root = layout(tmp_path / "root", SCRIPTS[2])
    mirror = asset("models/imagenet-common")
    got = sh(root, SCRIPTS[2], caffe_bin, CAFFE_DATA_MIRROR=str(mirror))
    assert got.returncode == 0, got.stdout + got.stderr
    here = root / "data" / "ilsvrc12"
    for name in ("synset_words.txt", "synsets.txt", "det_synset_words.txt", "imagenet_mean.binaryproto"):
        assert (here / name).read_bytes() == (mirror / name).read_bytes()
    for name in ("train.txt", "val.txt", "test.txt", "imagenet.bet.pickle"):
        assert name in got.stderr and not (here / name).exists()
    assert "not in the mirror" in got.stderr and got.stdout.endswith("Done.\n")


def test_get_ilsvrc_aux_from_a_mirrored_tarball(tmp_path: Path, caffe_bin: dict[str, str]):
    root = layout(tmp_path / "root", SCRIPTS[2])
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "caffe_ilsvrc12.tar.gz", "w:gz") as tar:
        for name in ("synsets.txt", "synset_words.txt"):
            tar.add(asset(f"models/imagenet-common/{name}"), arcname=name)
    got = sh(root, SCRIPTS[2], caffe_bin, CAFFE_DATA_MIRROR=mirror.as_uri())
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.splitlines() == ["Downloading...", "Unzipping...", "Done."]
    here = root / "data" / "ilsvrc12"
    assert sorted(p.name for p in here.iterdir()) == ["get_ilsvrc_aux.sh", "synset_words.txt", "synsets.txt"]


def test_create_imagenet_checks_its_folders(tmp_path: Path, caffe_bin: dict[str, str]):
    root = layout(tmp_path / "root", SCRIPTS[3])
    got = sh(root, SCRIPTS[3], caffe_bin)
    assert got.returncode == 1
    assert got.stdout.startswith("Error: TRAIN_DATA_ROOT is not a path to a directory: /path/to/imagenet/train/")
    got = sh(root, SCRIPTS[3], caffe_bin, TRAIN_DATA_ROOT=str(tmp_path), VAL_DATA_ROOT=str(tmp_path / "val"))
    assert got.returncode == 1
    assert got.stdout.startswith(f"Error: VAL_DATA_ROOT is not a path to a directory: {tmp_path}")


def test_create_imagenet_and_make_imagenet_mean(tmp_path: Path, caffe_bin: dict[str, str]):
    root = layout(tmp_path / "root", SCRIPTS[3], SCRIPTS[4])
    folder = ASSETS / "dolphins-and-seahorses"
    (root / "data" / "ilsvrc12").mkdir(parents=True)
    train = [f"dolphin/image_{i:04d}.jpg 0" for i in range(1, 7)]
    train += [f"seahorse/image_{i:04d}.jpg 1" for i in range(1, 5)]
    (root / "data/ilsvrc12/train.txt").write_text("\n".join(train) + "\n")
    (root / "data/ilsvrc12/val.txt").write_text("dolphin/image_0042.jpg 0\nseahorse/image_0042.jpg 1\n")
    env = {"TRAIN_DATA_ROOT": f"{folder}/", "VAL_DATA_ROOT": f"{folder}/", "RESIZE": "true"}
    got = sh(root, SCRIPTS[3], caffe_bin, **env)
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.splitlines() == ["Creating train lmdb...", "Creating val lmdb...", "Done."]
    assert "Shuffling data" in got.stderr
    example = root / "examples" / "imagenet"
    with open_db(example / "ilsvrc12_train_lmdb") as db:
        datums = [pb.Datum.FromString(v) for _, v in db.cursor()]
    assert len(datums) == 10 and all((d.channels, d.height, d.width) == (3, 256, 256) for d in datums)
    with open_db(example / "ilsvrc12_val_lmdb") as db:
        assert len(db) == 2

    got = sh(root, SCRIPTS[4], caffe_bin)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "Number of channels: 3" in got.stderr and got.stdout == "Done.\n"
    blob = read_binary(root / "data/ilsvrc12/imagenet_mean.binaryproto", pb.BlobProto())
    mean = np.array(blob.data, np.float32).reshape(blob.num, blob.channels, blob.height, blob.width)
    ref = np.mean([np.frombuffer(d.data, np.uint8).reshape(3, 256, 256) for d in datums], axis=0)
    assert mean.shape == (1, 3, 256, 256)
    np.testing.assert_allclose(mean[0], ref, atol=1e-4)
