"""GPU mode: Caffe's synced-memory rule and CPU/GPU agreement (skipped on machines without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import asset, requires_gpu

import caffe

pytestmark = requires_gpu
LENET = "models/lenet_mnist_newformat"


def lenet() -> caffe.Net:
    return caffe.Net(
        str(asset(f"{LENET}/lenet.prototxt")), caffe.TEST, weights=str(asset(f"{LENET}/lenet_iter_10000.caffemodel"))
    )


@pytest.fixture
def gpu():
    caffe.set_mode_gpu()
    caffe.set_device(0)
    yield
    caffe.set_mode_cpu()


def test_numpy_writes_reach_the_device_and_results_come_back(gpu):
    x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    net = lenet()
    assert net.device.type == "cuda"
    net.blobs["data"].data[...] = x
    out = net.forward()["prob"].copy()
    assert net.blobs["prob"].tensor.device.type == "cuda"
    caffe.set_mode_cpu()
    ref = lenet().forward(data=x)["prob"]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_param_surgery_through_numpy_after_a_gpu_forward(gpu):
    net = lenet()
    x = np.random.default_rng(1).random((64, 1, 28, 28), dtype=np.float32)
    net.forward(data=x)
    net.params["ip2"][1].data[...] = 100.0  # host write after the device has the head
    net.params["ip2"][1].data[3] = 200.0
    out = net.forward(data=x)["prob"]
    assert (out.argmax(1) == 3).all()


def test_mode_switch_moves_an_existing_net(gpu):
    caffe.set_mode_cpu()
    net = lenet()
    x = np.random.default_rng(2).random((64, 1, 28, 28), dtype=np.float32)
    cpu_out = net.forward(data=x)["prob"].copy()
    caffe.set_mode_gpu()
    gpu_out = net.forward(data=x)["prob"]
    assert net.device.type == "cuda"
    np.testing.assert_allclose(gpu_out, cpu_out, rtol=1e-4, atol=1e-5)


def test_backward_on_gpu_matches_cpu(gpu):
    text = asset("caffe-ref/examples/mnist/lenet_train_test.prototxt").read_text()
    from google.protobuf import text_format

    from caffe.proto import caffe_pb2 as pb

    param = text_format.Parse(text, pb.NetParameter())
    for layer in param.layer:
        if layer.type == "Data":
            layer.type = "Input"
            layer.ClearField("data_param")
            layer.ClearField("transform_param")
            layer.input_param.shape.add().dim.extend([8, 1, 28, 28])
            layer.input_param.shape.add().dim.extend([8])
    x = np.random.default_rng(3).random((8, 1, 28, 28), dtype=np.float32)
    y = np.arange(8, dtype=np.float32)
    grads = []
    for mode in (caffe.set_mode_cpu, caffe.set_mode_gpu):
        mode()
        caffe.set_random_seed(0)
        net = caffe.Net(param, caffe.TRAIN)
        net.blobs["data"].data[...] = x
        net.blobs["label"].data[...] = y
        net.forward()
        net.backward()
        grads.append([b.diff.copy() for b in net.learnable_params])
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_fused_engine_on_gpu_matches_eager(gpu):
    d = "models/open_nsfw_resnet50_1by2"
    net = caffe.Net(
        str(asset(f"{d}/deploy.prototxt")), caffe.TEST, weights=str(asset(f"{d}/resnet_50_1by2_nsfw.caffemodel"))
    )
    x = np.random.default_rng(4).standard_normal((2, 3, 224, 224)).astype(np.float32) * 50
    net.blobs["data"].reshape(*x.shape)
    net.reshape()
    outs = {}
    for engine in ("eager", "fused"):
        caffe.set_inference_engine(engine)
        outs[engine] = net.forward(data=x)["prob"].copy()
    caffe.set_inference_engine("fused")
    np.testing.assert_allclose(outs["fused"], outs["eager"], rtol=1e-3, atol=1e-5)
    torch.cuda.synchronize()
