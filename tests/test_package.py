"""``caffe package`` / ``caffe.deploy``: DIGITS' archive layout, model discovery, and the beginners' guide's
Python example running on an archive this project wrote (a tiny dolphin/seahorse net trained here)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import asset

import caffe
from caffe import deploy
from caffe.tools.cli import main

#: "Clicking Download Model downloads a tar.gz archive containing the following files" (the guide).
DIGITS_FILES = {
    "deploy.prototxt",
    "mean.binaryproto",
    "solver.prototxt",
    "info.json",
    "original.prototxt",
    "labels.txt",
    "snapshot_iter_6.caffemodel",
    "train_val.prototxt",
}

NET = """name: "tiny"
layer {{ name: "data" type: "{data}" top: "data" {extra} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 4 kernel_size: 5 stride: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
{tail}
"""
TRAIN_DATA = 'top: "label" image_data_param {{ source: "{list}" root_folder: "{root}/" batch_size: 8 shuffle: true \
new_height: 32 new_width: 32 }} transform_param {{ mean_value: 100 mean_value: 110 mean_value: 120 }}'
TRAIN_TAIL = 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }'
DEPLOY_DATA = "input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } }"
DEPLOY_TAIL = 'layer { name: "softmax" type: "Softmax" bottom: "fc" top: "softmax" }'

#: The guide's "Using our Model" Python example, typed as the guide shows it. Only what Python 3 and
#: NumPy 2 require changes: print() is a function, and np.loadtxt no longer takes delimiter='\n'.
GUIDE = """
import os, sys
import numpy as np

caffe_root = '/path/to/your/caffe_root'
sys.path.insert(0, os.path.join(caffe_root, 'python'))
import caffe
from caffe.proto import caffe_pb2

caffe.set_mode_cpu()

model_dir = 'model'
deploy_file = os.path.join(model_dir, 'deploy.prototxt')
weights_file = os.path.join(model_dir, 'snapshot_iter_6.caffemodel')
net = caffe.Net(deploy_file, caffe.TEST, weights=weights_file)

transformer = caffe.io.Transformer({'data': net.blobs['data'].data.shape})
transformer.set_transpose('data', (2, 0, 1))
transformer.set_raw_scale('data', 255)
transformer.set_channel_swap('data', (2, 1, 0))

mean_file = os.path.join(model_dir, 'mean.binaryproto')
with open(mean_file, 'rb') as infile:
    blob = caffe_pb2.BlobProto()
    blob.MergeFromString(infile.read())
    if blob.HasField('shape'):
        blob_dims = blob.shape
        assert len(blob_dims) == 4, 'Shape should have 4 dimensions - shape is %s' % blob.shape
    elif blob.HasField('num') and blob.HasField('channels') and \\
            blob.HasField('height') and blob.HasField('width'):
        blob_dims = (blob.num, blob.channels, blob.height, blob.width)
    else:
        raise ValueError('blob does not provide shape or 4d dimensions')
    pixel = np.reshape(blob.data, blob_dims[1:]).mean(1).mean(1)
    transformer.set_mean('data', pixel)

labels_file = os.path.join(model_dir, 'labels.txt')
labels = np.loadtxt(labels_file, str)

fullpath = sys.argv[1]
image = caffe.io.load_image(fullpath)
net.blobs['data'].data[...] = transformer.preprocess('data', image)

out = net.forward()
softmax_layer = out['softmax']
dolphin_prob = softmax_layer.item(0)
seahorse_prob = softmax_layer.item(1)

label = labels[0] if dolphin_prob > seahorse_prob else labels[1]
filename = os.path.basename(fullpath)
print('%s is a %s dolphin=%.3f%% seahorse=%.3f%%' % (filename, label, dolphin_prob*100, seahorse_prob*100))
"""


@pytest.fixture(scope="module")
def training(tmp_path_factory) -> Path:
    """A tiny net trained 6 iterations on the guide's images (ImageData from a list file), DIGITS-style files."""
    d = tmp_path_factory.mktemp("training")
    root = asset("dolphins-and-seahorses")
    images = [(f"dolphin/{p.name}", 0) for p in sorted((root / "dolphin").glob("*.jpg"))[:24]]
    images += [(f"seahorse/{p.name}", 1) for p in sorted((root / "seahorse").glob("*.jpg"))[:24]]
    (d / "train.txt").write_text("".join(f"{name} {label}\n" for name, label in images))
    extra = TRAIN_DATA.format(list=d / "train.txt", root=root)
    (d / "train_val.prototxt").write_text(NET.format(data="ImageData", extra=extra, tail=TRAIN_TAIL))
    (d / "deploy.prototxt").write_text(NET.format(data="Input", extra=DEPLOY_DATA, tail=DEPLOY_TAIL))
    (d / "solver.prototxt").write_text(
        f'net: "{d}/train_val.prototxt"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 6\n'
        f'display: 0\nsnapshot: 3\nsnapshot_prefix: "{d}/snapshot"\nrandom_seed: 7\n'
    )
    caffe.get_solver(str(d / "solver.prototxt")).solve()
    assert (d / "snapshot_iter_3.caffemodel").is_file() and (d / "snapshot_iter_6.caffemodel").is_file()
    np.save(d / "mean.npy", np.array([100, 110, 120], np.float32)[:, None, None] * np.ones((3, 32, 32), np.float32))
    (d / "labels.txt").write_text("dolphin\nseahorse\n")
    return d


@pytest.fixture(scope="module")
def archive(training: Path) -> Path:
    out = training / "model.tar.gz"
    argv = ["package", f"--solver={training / 'solver.prototxt'}", f"--deploy={training / 'deploy.prototxt'}"]
    argv += [f"--mean={training / 'mean.npy'}", f"--labels={training / 'labels.txt'}", f"--output={out}"]
    assert main(argv) == 0
    return out


def test_package_writes_digits_file_list(archive: Path, training: Path):
    with tarfile.open(archive) as t:
        assert {m.name for m in t.getmembers()} == DIGITS_FILES
        assert all(m.isfile() and m.mode == 0o644 for m in t.getmembers())
        info = json.loads(t.extractfile("info.json").read())
        weights = t.extractfile("snapshot_iter_6.caffemodel").read()
        blob = caffe.proto.caffe_pb2.BlobProto.FromString(t.extractfile("mean.binaryproto").read())
        train_val = t.extractfile("train_val.prototxt").read()
    assert weights == (training / "snapshot_iter_6.caffemodel").read_bytes()  # the newest snapshot
    assert train_val == (training / "train_val.prototxt").read_bytes()
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 32, 32)  # DIGITS' legacy fields
    np.testing.assert_array_equal(np.reshape(blob.data, (3, 32, 32)).mean((1, 2)), [100, 110, 120])
    assert info["framework"] == "caffe" and info["image dimensions"] == [32, 32, 3]
    assert info["snapshot file"] == "snapshot_iter_6.caffemodel" and info["labels file"] == "labels.txt"
    assert info["mean file"] == "mean.binaryproto" and info["name"] == "model"
    assert info["caffe version"] == caffe.__version__


def test_guide_python_example_runs_on_the_archive(archive: Path, tmp_path: Path):
    with tarfile.open(archive) as t:
        t.extractall(tmp_path / "model", filter="data")
    image = asset("dolphins-and-seahorses/dolphin/image_0001.jpg")
    run = subprocess.run([sys.executable, "-c", GUIDE, str(image)], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    name, _, _, label, *probs = run.stdout.strip().splitlines()[-1].split()
    assert name == "image_0001.jpg" and label in ("dolphin", "seahorse")
    dolphin, seahorse = (float(v.split("=")[1].rstrip("%")) for v in probs)
    assert abs(dolphin + seahorse - 100.0) < 0.01
    # the same net, weights and preprocessing computed here without the archive: same probabilities
    weights = str(archive.parent / "snapshot_iter_6.caffemodel")
    net = caffe.Net(str(archive.parent / "deploy.prototxt"), caffe.TEST, weights=weights)
    rgb = caffe.io.load_image(str(image))
    bgr = caffe.io.resize_image(rgb, (32, 32))[:, :, ::-1] * 255.0 - np.array([100, 110, 120], np.float32)
    prob = net.forward(data=bgr.transpose(2, 0, 1)[np.newaxis])["softmax"].ravel()
    assert dolphin == pytest.approx(prob[0] * 100, abs=1e-3) and seahorse == pytest.approx(prob[1] * 100, abs=1e-3)


def test_find_model_on_archive_and_classify(archive: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("CAFFE_CACHE_DIR", str(tmp_path / "cache"))
    files = deploy.find_model(archive)
    assert files.deploy.name == "deploy.prototxt" and files.weights.name == "snapshot_iter_6.caffemodel"
    assert files.mean.name == "mean.binaryproto" and files.labels.name == "labels.txt"
    assert files.info["framework"] == "caffe" and files.name == "model"
    assert deploy.read_labels(files.labels) == ["dolphin", "seahorse"]
    assert deploy.find_model(archive).folder == files.folder  # unpacked once, then reused
    image = asset("dolphins-and-seahorses/seahorse/image_0001.jpg")
    assert main(["classify", str(archive), str(image), "--format=csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "input,rank,index,label,probability" and len(rows) == 3
    assert {r.split(",")[3] for r in rows[1:]} == {"dolphin", "seahorse"}
    assert abs(sum(float(r.split(",")[4]) for r in rows[1:]) - 1.0) < 1e-4  # the net's softmax


def test_package_zip_and_find_model(training: Path, tmp_path: Path):
    out = deploy.package_model(
        tmp_path / "m.zip",
        deploy=training / "deploy.prototxt",
        weights=training / "snapshot_iter_3.caffemodel",
        labels=training / "labels.txt",
        info={"name": "renamed", "image resize mode": "crop"},
    )
    with zipfile.ZipFile(out) as z:
        assert set(z.namelist()) == {"deploy.prototxt", "labels.txt", "snapshot_iter_3.caffemodel", "info.json"}
        info = json.loads(z.read("info.json"))
    assert info["name"] == "renamed" and info["image resize mode"] == "crop" and "mean file" not in info
    files = deploy.find_model(out, cache_dir=tmp_path / "cache")
    assert files.weights.name == "snapshot_iter_3.caffemodel" and files.mean is None


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as t:
        ok = tarfile.TarInfo("deploy.prototxt")
        ok.size = 0
        t.addfile(ok, io.BytesIO(b""))
        t.addfile(member, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize("name", ["../evil.caffemodel", "/tmp/evil.caffemodel", "a/../../evil.caffemodel"])
def test_traversal_members_are_refused(tmp_path: Path, name: str):
    member = tarfile.TarInfo(name)
    member.size = 4
    hostile = _tar_with(tmp_path / "hostile.tar.gz", member, b"evil")
    with pytest.raises(deploy.ModelFilesError, match="unsafe member"):
        deploy.find_model(hostile, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "evil.caffemodel").exists() and not (tmp_path / "cache").exists()


def test_link_members_and_zip_traversal_are_refused(tmp_path: Path):
    link = tarfile.TarInfo("w.caffemodel")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(deploy.ModelFilesError, match="link or special file"):
        deploy.check_archive(_tar_with(tmp_path / "link.tgz", link))
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        z.writestr("../../z.caffemodel", b"evil")
    assert main(["classify", str(tmp_path / "z.zip"), "x.jpg"]) == 1


def test_two_candidate_caffemodels_is_a_clear_error(tmp_path: Path, training: Path, capsys):
    for name in ("deploy.prototxt", "labels.txt"):
        (tmp_path / name).write_bytes((training / name).read_bytes())
    for name in ("a.caffemodel", "b.caffemodel"):
        (tmp_path / name).write_bytes((training / "snapshot_iter_3.caffemodel").read_bytes())
    with pytest.raises(deploy.ModelFilesError, match=r"2 candidate weights files \(a.caffemodel, b.caffemodel\)"):
        deploy.find_model(tmp_path)
    image = asset("dolphins-and-seahorses/dolphin/image_0001.jpg")
    assert main(["classify", str(tmp_path), str(image)]) == 1
    assert "a.caffemodel, b.caffemodel" in capsys.readouterr().err
    # naming the weights settles it; snapshots of one training: the newest wins
    assert deploy.find_model(tmp_path, weights=tmp_path / "b.caffemodel").weights.name == "b.caffemodel"
    assert deploy.find_model(training).weights.name == "snapshot_iter_6.caffemodel"


def test_package_errors(tmp_path: Path, training: Path, capsys):
    assert main(["package", f"--output={tmp_path / 'x.tar.gz'}"]) == 1
    assert "--deploy are required" in capsys.readouterr().err
    argv = ["package", f"--output={tmp_path / 'x.tar.gz'}", f"--deploy={training / 'deploy.prototxt'}"]
    assert main([*argv, f"--weights={tmp_path / 'missing.caffemodel'}"]) == 1
    assert "missing.caffemodel: not found" in capsys.readouterr().err
    assert not (tmp_path / "x.tar.gz").exists()
