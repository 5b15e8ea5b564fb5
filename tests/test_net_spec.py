"""caffe.net_spec: the LeNet of the 01-learning-lenet notebook, naming, parameter routing, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from conftest import asset
from google.protobuf import text_format

import caffe
from caffe.data.datum import array_to_datum
from caffe.data.db import item_key, open_db
from caffe.net_spec import layers as L
from caffe.net_spec import params as P
from caffe.proto import caffe_pb2 as pb


def lenet(lmdb: str, batch_size: int) -> pb.NetParameter:
    """The notebook's function, as written there."""
    n = caffe.NetSpec()
    n.data, n.label = L.Data(
        batch_size=batch_size, backend=P.Data.LMDB, source=lmdb, transform_param=dict(scale=1.0 / 255), ntop=2
    )
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n.to_proto()


# What the notebook's lenet_auto_train.prototxt holds (written out by hand here).
EXPECTED_LENET = """
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.00392156862745 }
  data_param { source: "SOURCE" batch_size: 64 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 50 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool2" top: "fc1"
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "score" type: "InnerProduct" bottom: "fc1" top: "score"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""


def parse(text: str) -> pb.NetParameter:
    return text_format.Parse(text, pb.NetParameter())


def mnist_lmdb(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(asset("mnist/t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    with gzip.open(asset("mnist/t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    with open_db(path, "lmdb", "new") as db:
        txn = db.transaction()
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            txn.put(item_key(i, f"{i:05d}"), array_to_datum(image, int(label)).SerializeToString())
        txn.commit()
    return images, labels


def test_lenet_text_parses_back_to_the_expected_net():
    proto = lenet("mnist/mnist_train_lmdb", 64)
    assert parse(str(proto)) == parse(EXPECTED_LENET.replace("SOURCE", "mnist/mnist_train_lmdb"))


def test_lenet_builds_a_net_that_trains_on_mnist(tmp_path: Path):
    images, labels = mnist_lmdb(tmp_path / "mnist_train_lmdb", 64)
    prototxt = tmp_path / "lenet_auto_train.prototxt"
    prototxt.write_text(str(lenet(str(tmp_path / "mnist_train_lmdb"), 64)))
    net = caffe.Net(str(prototxt), caffe.TRAIN)
    shapes = {name: blob.data.shape for name, blob in net.blobs.items()}
    assert shapes["conv1"] == (64, 20, 24, 24) and shapes["pool2"] == (64, 50, 4, 4)
    assert shapes["fc1"] == (64, 500) and shapes["score"] == (64, 10)
    loss = float(net.forward()["loss"])
    np.testing.assert_allclose(net.blobs["data"].data, images.astype(np.float32) * np.float32(1 / 255), rtol=1e-6)
    np.testing.assert_array_equal(net.blobs["label"].data, labels)
    assert (net.blobs["fc1"].data >= 0).all()  # the ReLU ran in place on fc1
    score = net.blobs["score"].data.astype(np.float64)
    log_z = np.log(np.exp(score - score.max(1, keepdims=True)).sum(1)) + score.max(1)
    assert loss == pytest.approx(np.mean(log_z - score[np.arange(64), labels]), rel=1e-5)


def test_tops_layers_and_unnamed_tops_are_named_as_pycaffe_names_them():
    n = caffe.NetSpec()
    n["data"] = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    hidden = L.ReLU(L.Convolution(n.data, num_output=4, kernel_size=3))
    n.a, n.b = L.Slice(hidden, ntop=2, slice_point=2)
    n.silence = L.Silence(n.b, ntop=0)
    n.out = L.Eltwise(n.a, L.TanH(n.a))
    proto = n.to_proto()
    assert [(x.name, x.type, list(x.bottom), list(x.top)) for x in proto.layer] == [
        ("data", "Input", [], ["data"]),
        ("Convolution1", "Convolution", ["data"], ["Convolution1"]),
        ("ReLU1", "ReLU", ["Convolution1"], ["ReLU1"]),
        ("a", "Slice", ["ReLU1"], ["a", "b"]),
        ("silence", "Silence", ["b"], []),
        ("TanH1", "TanH", ["a"], ["TanH1"]),
        ("out", "Eltwise", ["a", "TanH1"], ["out"]),
    ]
    assert "a" in n and n["a"] is n.a and "nope" not in n
    net = caffe.Net(proto, caffe.TEST)
    assert net.blobs["out"].data.shape == (1, 2, 6, 6)
    # A top alone: every name generated, counted per type.
    alone = caffe.to_proto(L.ReLU(L.InnerProduct(L.DummyData(shape=dict(dim=[2, 3])), num_output=1)))
    assert [x.name for x in alone.layer] == ["DummyData1", "InnerProduct1", "ReLU1"]


def test_parameters_go_to_the_right_messages():
    data = L.Input(shape=[dict(dim=[1, 3, 8, 8])])
    conv = L.Convolution(
        data,
        kernel_size=[3, 5],
        stride=np.int64(2),
        num_output=np.int32(8),
        param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
        bias_filler=dict(type="constant", value=0.5),
        engine="CAFFE",
        include=dict(phase=caffe.TEST),
        propagate_down=False,
    )
    deconv = L.Deconvolution(conv, kernel_size=4, stride=2, num_output=3, bias_term=False)
    pool = L.Pooling(deconv, pool="AVE", global_pooling=True)
    loss = L.SoftmaxWithLoss(pool, L.DummyData(shape=dict(dim=[1])), normalization=P.Loss.VALID, axis=1,
                             ignore_label=3, loss_weight=0.5)  # fmt: skip
    python = L.Python(loss, module="mymodule", layer="MyLayer", param_str="{'k': 1}", ntop=0)
    got = {layer.type: layer for layer in caffe.to_proto(python).layer}
    expected = """
      convolution_param { kernel_size: 3 kernel_size: 5 stride: 2 num_output: 8 engine: CAFFE
                          bias_filler { type: "constant" value: 0.5 } }
      param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
      include { phase: TEST } propagate_down: false"""
    want = text_format.Parse(expected, pb.LayerParameter())
    conv_layer = got["Convolution"]
    for field in ("convolution_param", "param", "include", "propagate_down"):
        assert getattr(conv_layer, field) == getattr(want, field), field
    assert list(got["Input"].input_param.shape[0].dim) == [1, 3, 8, 8]
    assert got["Deconvolution"].convolution_param.kernel_size == [4]
    assert not got["Deconvolution"].convolution_param.bias_term
    assert got["Pooling"].pooling_param.pool == pb.PoolingParameter.AVE
    assert got["Pooling"].pooling_param.global_pooling
    sm = got["SoftmaxWithLoss"]
    assert (sm.loss_param.normalization, sm.loss_param.ignore_label) == (pb.LossParameter.VALID, 3)
    assert sm.softmax_param.axis == 1 and list(sm.loss_weight) == [0.5]
    assert (got["Python"].python_param.module, got["Python"].python_param.layer) == ("mymodule", "MyLayer")


def test_params_constants_and_param_name_dict():
    assert (P.Pooling.MAX, P.Pooling.AVE, P.Pooling.STOCHASTIC) == (0, 1, 2)
    assert (P.Data.LMDB, P.Eltwise.PROD, P.Deconvolution.CAFFE) == (1, 0, 1)
    names = caffe.net_spec.param_name_dict()
    assert names["Convolution"] == "convolution" and names["InnerProduct"] == "inner_product"
    assert names["Transformation"] == "transform" and names["Python"] == "python"
    with pytest.raises(AttributeError, match="PoolingParameter has no constant 'MEDIAN'"):
        _ = P.Pooling.MEDIAN
    with pytest.raises(AttributeError, match="no NopeParameter"):
        _ = P.Nope


def test_errors_name_the_layer_and_field():
    data = L.Input(shape=dict(dim=[1, 2]))
    with pytest.raises(AttributeError, match=r"InnerProduct layer 'ip': 'kernel_size' is not a field of inner_product"):
        n = caffe.NetSpec()
        n.ip = L.InnerProduct(data, kernel_size=3)
        n.to_proto()
    with pytest.raises(ValueError, match=r"layer 'Pooling1': caffe\.PoolingParameter\.pool: unknown value 'MEDIAN'"):
        caffe.to_proto(L.Pooling(data, pool="MEDIAN"))
    with pytest.raises(TypeError, match=r"InnerProduct layer 'InnerProduct1': .*num_output is not a repeated field"):
        caffe.to_proto(L.InnerProduct(data, num_output=[1, 2]))
    with pytest.raises(TypeError, match=r"layer 'Convolution1': caffe\.ConvolutionParameter\.kernel_size: 'str'"):
        caffe.to_proto(L.Convolution(data, kernel_size="three"))
    with pytest.raises(TypeError, match="ReLU input 0 is not a Top"):
        L.ReLU("data")
    with pytest.raises(ValueError, match="ntop must be a non-negative integer"):
        L.Slice(data, ntop=-1)
    n = caffe.NetSpec()
    with pytest.raises(TypeError, match=r"n.a, n.b = L.Type\(..., ntop=2\)"):
        n.pair = L.Slice(data, ntop=2)
    with pytest.raises(AttributeError, match="NetSpec has no top named 'missing'"):
        _ = n.missing
    with pytest.raises(KeyError):
        _ = n["missing"]


def test_pycaffe_import_form():
    """``from caffe import layers as L, params as P``, as the notebooks write it."""
    from caffe import layers as L2
    from caffe import params as P2

    n = caffe.NetSpec()
    n.data = L2.Input(shape=dict(dim=[1, 1, 4, 4]))
    n.pool = L2.Pooling(n.data, kernel_size=2, stride=2, pool=P2.Pooling.MAX)
    assert [layer.type for layer in n.to_proto().layer] == ["Input", "Pooling"]
