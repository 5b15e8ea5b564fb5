"""Weights: .caffemodel and HDF5 read/write, copying by layer name, and interchange with cv2.dnn."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from conftest import asset

import caffe
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_net_param_binary
from caffe.weights import array_to_blob_proto, blob_proto_to_array

LENET = "models/lenet_mnist_newformat"


def lenet(weights: bool = True) -> caffe.Net:
    w = str(asset(f"{LENET}/lenet_iter_10000.caffemodel")) if weights else None
    return caffe.Net(str(asset(f"{LENET}/lenet.prototxt")), caffe.TEST, weights=w)


def digits(n: int = 64) -> np.ndarray:
    return np.random.default_rng(3).random((n, 1, 28, 28), dtype=np.float32)


def test_save_reload_identical_and_cv2_reads_it(tmp_path: Path):
    net = lenet()
    out = tmp_path / "saved.caffemodel"
    net.save(str(out))
    again = caffe.Net(str(asset(f"{LENET}/lenet.prototxt")), caffe.TEST, weights=str(out))
    for name, blobs in net.params.items():
        for a, b in zip(blobs, again.params[name], strict=True):
            np.testing.assert_array_equal(a.data, b.data)
    # the file is a plain NetParameter with `shape`d float blobs, readable by OpenCV's Caffe importer
    x = digits()
    cv = cv2.dnn.readNetFromCaffe(str(asset(f"{LENET}/lenet.prototxt")), str(out))
    cv.setInput(x)
    ref = cv.forward("prob")
    ours = net.forward(data=x)["prob"]
    assert np.abs(ours - ref).max() < 1e-5


def test_v1_weights_load_into_a_current_format_net():
    v1 = caffe.Net(
        str(asset(f"{LENET}/lenet.prototxt")),
        caffe.TEST,
        weights=str(asset("models/lenet_mnist_v1format_2014/lenet_iter_10000.caffemodel")),
    )
    raw = read_net_param_binary(asset("models/lenet_mnist_v1format_2014/lenet_iter_10000.caffemodel"))
    conv1 = next(layer for layer in raw.layer if layer.name == "conv1")
    np.testing.assert_array_equal(v1.params["conv1"][0].data, blob_proto_to_array(conv1.blobs[0]))


def test_hdf5_round_trip_and_layout(tmp_path: Path):
    net = lenet()
    path = tmp_path / "w.caffemodel.h5"
    net.save_hdf5(str(path))
    with h5py.File(path) as f:
        assert set(f["data"]["conv1"]) == {"0", "1"}
        assert f["data"]["ip1"]["0"].shape == (500, 800)
        assert "relu1" in f["data"]  # every layer gets a group, as in Caffe
    fresh = lenet(weights=False)
    fresh.load_hdf5(str(path))
    np.testing.assert_array_equal(fresh.params["ip2"][0].data, net.params["ip2"][0].data)
    # copy_from recognises HDF5 by its signature, whatever the name
    other = lenet(weights=False)
    other.copy_from(str(path))
    np.testing.assert_array_equal(other.params["conv2"][1].data, net.params["conv2"][1].data)


def test_renamed_layer_keeps_its_filler(tmp_path: Path):
    text = asset(f"{LENET}/lenet.prototxt").read_text()
    text = text.replace('name: "ip2"', 'name: "ip2_new"')
    head, tail = text.split('name: "ip2_new"')
    tail = tail.replace("num_output: 10", "num_output: 2", 1).replace(
        'type: "constant"', 'type: "constant" value: 0.5', 1
    )
    text = head + 'name: "ip2_new"' + tail
    proto = tmp_path / "renamed.prototxt"
    proto.write_text(text)
    net = caffe.Net(str(proto), caffe.TEST, weights=str(asset(f"{LENET}/lenet_iter_10000.caffemodel")))
    ref = lenet()
    np.testing.assert_array_equal(net.params["ip1"][0].data, ref.params["ip1"][0].data)
    assert (net.params["ip2_new"][1].data == 0.5).all()
    assert net.params["ip2_new"][0].shape == (2, 500)


def test_shape_mismatch_names_layer_blob_and_shapes(tmp_path: Path):
    text = asset(f"{LENET}/lenet.prototxt").read_text().replace("num_output: 20", "num_output: 21")
    proto = tmp_path / "wider.prototxt"
    proto.write_text(text)
    with pytest.raises(caffe.WeightsError) as e:
        caffe.Net(str(proto), caffe.TEST, weights=str(asset(f"{LENET}/lenet_iter_10000.caffemodel")))
    msg = str(e.value)
    assert "param 0" in msg and "'conv1'" in msg and "20 1 5 5" in msg and "21 1 5 5" in msg


def test_blob_count_mismatch_is_an_error(tmp_path: Path):
    text = asset(f"{LENET}/lenet.prototxt").read_text()
    text = text.replace("num_output: 20", "num_output: 20\n    bias_term: false", 1)
    text = text.replace("  param {\n    lr_mult: 2\n  }\n", "", 1)
    proto = tmp_path / "nobias.prototxt"
    proto.write_text(text)
    with pytest.raises(caffe.WeightsError, match="incompatible number of blobs for layer 'conv1'"):
        caffe.Net(str(proto), caffe.TEST, weights=str(asset(f"{LENET}/lenet_iter_10000.caffemodel")))


def test_deprecated_constructor_and_missing_weights(tmp_path: Path):
    net = caffe.Net(
        str(asset(f"{LENET}/lenet.prototxt")), str(asset(f"{LENET}/lenet_iter_10000.caffemodel")), caffe.TEST
    )
    assert net.phase == caffe.TEST and net.params["conv1"][0].data.any()
    with pytest.raises(caffe.CaffeError, match="Could not open file"):
        caffe.Net(str(asset(f"{LENET}/lenet.prototxt")), caffe.TEST, weights=str(tmp_path / "none.caffemodel"))


def test_blob_proto_double_and_legacy_dims():
    bp = pb.BlobProto(num=1, channels=1, height=2, width=3)
    bp.double_data.extend(range(6))
    arr = blob_proto_to_array(bp)
    assert arr.dtype == np.float64 and arr.shape == (1, 1, 2, 3)
    out = array_to_blob_proto(arr.reshape(2, 3))
    assert list(out.shape.dim) == [2, 3] and list(out.data) == list(range(6))
    bad = pb.BlobProto()
    bad.shape.dim.extend([2, 2])
    bad.data.extend([1.0, 2.0])
    with pytest.raises(caffe.WeightsError, match="holds 2 values"):
        blob_proto_to_array(bad)


@pytest.mark.parametrize("double", [False, True])
@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 4), (2, 3, 5, 7), (70000,)], ids=str)
def test_array_to_blob_proto_is_the_repeated_fields_caffe_writes(shape: tuple[int, ...], double: bool):
    """The packed-field fast path gives the message (and bytes) that filling the repeated fields value by
    value gives: same values, same field (data/diff or double_data/double_diff), from any dtype and layout."""
    rng = np.random.default_rng(sum(shape) + double)
    data = rng.standard_normal(shape).astype(">f8")  # big-endian: converted, not reinterpreted
    diff = np.asfortranarray(rng.standard_normal(shape))  # column-major: raveled in C order
    kind = np.float64 if double else np.float32
    expected = pb.BlobProto()
    expected.shape.dim.extend(shape)
    (expected.double_data if double else expected.data).extend(data.astype(kind).ravel().tolist())
    (expected.double_diff if double else expected.diff).extend(np.ascontiguousarray(diff, kind).ravel().tolist())
    got = array_to_blob_proto(data, diff, double=double)
    assert got == expected and got.SerializeToString() == expected.SerializeToString()
    alone = array_to_blob_proto(data, double=double)
    assert not alone.diff and not alone.double_diff
    assert len(alone.double_data if double else alone.data) == data.size
