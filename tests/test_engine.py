"""Inference engines: the fused and compiled forward passes give the eager pass's numbers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import asset

import caffe
from caffe.engine import InferencePlan, _ConvStep


@pytest.fixture(autouse=True)
def _restore_engine():
    before = caffe.inference_engine()
    yield
    caffe.set_inference_engine(before)


def run(net: caffe.Net, engine: str, x: np.ndarray, blobs: list[str] | None = None) -> dict[str, np.ndarray]:
    caffe.set_inference_engine(engine)
    name = net.inputs[0]
    net.blobs[name].reshape(*x.shape)
    net.reshape()
    out = net.forward(blobs=blobs, **{name: x})
    return {k: v.copy() for k, v in out.items()}


def resnet() -> caffe.Net:
    d = "models/open_nsfw_resnet50_1by2"
    return caffe.Net(
        str(asset(f"{d}/deploy.prototxt")), caffe.TEST, weights=str(asset(f"{d}/resnet_50_1by2_nsfw.caffemodel"))
    )


def test_fused_plan_folds_batchnorm_scale_relu_chains():
    plan = InferencePlan(resnet())
    convs = [s for s in plan.steps if isinstance(s, _ConvStep)]
    assert len(convs) == 53
    names = plan.net._layer_names
    first = convs[0]
    assert [names[k] for k in first.chain] == ["bn_1", "scale_1", "relu_1"] and first.activation == ("relu", [])
    assert all(plan.net._layers[k].type in ("BatchNorm", "Scale", "ReLU") for s in convs for k in s.chain)


def test_fused_equals_eager_on_resnet_with_intermediate_blobs():
    net = resnet()
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32) * 50
    blobs = ["conv_1", "pool1", "eltwise_stage1_block0"]
    eager = run(net, "eager", x, blobs)
    fused = run(net, "fused", x, blobs)
    for k in eager:
        np.testing.assert_allclose(fused[k], eager[k], rtol=1e-4, atol=1e-4 * np.abs(eager[k]).max())


@pytest.mark.parametrize(
    "prototxt",
    [
        "models/mobilenet_caffe_shicai/mobilenet_deploy.prototxt",
        "caffe-ref/models/bvlc_googlenet/deploy.prototxt",
        "models/mtcnn_face_caffe/det3.prototxt",
    ],
)
def test_fused_equals_eager_random_weights(prototxt: str):
    caffe.set_random_seed(3)
    net = caffe.Net(str(asset(prototxt)), caffe.TEST)
    for layer in net.layers:
        if layer.type == "BatchNorm":  # random but sane statistics, so that folding is exercised
            c = layer.blobs[0].shape[0]
            layer.blobs[0].data[...] = np.random.default_rng(1).standard_normal(c) * 2
            layer.blobs[1].data[...] = np.random.default_rng(2).random(c) + 0.5
            layer.blobs[2].data[...] = 2.0
    shape = (1, *net.blobs[net.inputs[0]].shape[1:])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    eager = run(net, "eager", x)
    fused = run(net, "fused", x)
    for k in eager:
        np.testing.assert_allclose(fused[k], eager[k], rtol=1e-3, atol=1e-5)


def test_weights_changed_through_numpy_are_refolded():
    net = resnet()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32) * 50
    before = run(net, "fused", x)["prob"]
    net.params["scale_1"][0].data[...] *= 0.5  # net surgery through the NumPy view
    after = run(net, "fused", x)["prob"]
    eager = run(net, "eager", x)["prob"]
    assert np.abs(after - before).max() > 1e-4
    np.testing.assert_allclose(after, eager, rtol=1e-4, atol=1e-6)


def test_unknown_engine_is_an_error():
    with pytest.raises(caffe.CaffeError, match="unknown inference engine 'fast'"):
        caffe.set_inference_engine("fast")


@pytest.mark.slow
def test_compiled_engine_matches_and_materializes_intermediates_lazily():
    d = "models/lenet_mnist_newformat"
    net = caffe.Net(
        str(asset(f"{d}/lenet.prototxt")), caffe.TEST, weights=str(asset(f"{d}/lenet_iter_10000.caffemodel"))
    )
    x = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    eager = run(net, "eager", x, ["ip1"])
    net.blobs["pool2"].data[...] = 0  # any old value
    compiled = run(net, "compiled", x)
    np.testing.assert_allclose(compiled["prob"], eager["prob"], rtol=1e-4, atol=1e-6)
    assert net.blobs["ip1"]._refresh is not None  # not computed by the compiled graph...
    np.testing.assert_allclose(net.blobs["ip1"].data, eager["ip1"], rtol=1e-4, atol=1e-5)  # ...until read
    requested = run(net, "compiled", x, ["ip1"])
    np.testing.assert_allclose(requested["ip1"], eager["ip1"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_engine_recompiles_only_when_weights_really_change():
    d = "models/lenet_mnist_newformat"
    net = caffe.Net(
        str(asset(f"{d}/lenet.prototxt")), caffe.TEST, weights=str(asset(f"{d}/lenet_iter_10000.caffemodel"))
    )
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    first = run(net, "compiled", x)["prob"]
    runner = net._runner
    compiled = dict(runner._compiled)
    _ = net.params["conv1"][0].data.sum()  # reading a NumPy view moves the version...
    run(net, "compiled", x)
    assert runner._compiled == compiled  # ...but nothing is recompiled
    net.params["ip2"][1].data[0] += 10.0  # a real change is seen
    second = run(net, "compiled", x)["prob"]
    assert runner._compiled != compiled
    assert second[:, 0].mean() > first[:, 0].mean()
    np.testing.assert_allclose(second, run(net, "eager", x)["prob"], rtol=1e-4, atol=1e-6)
