"""Inference engines: the fused and compiled forward passes give the eager pass's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import asset

import caffe
from caffe.engine import ConvStep, InferencePlan, _AffineStep


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
    convs = [s for s in plan.steps if isinstance(s, ConvStep)]
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


# ---------------------------------------------------------------------------- affine chains, tiny convolutions
def ssd() -> caffe.Net:
    return caffe.Net(
        str(asset("models/res10_ssd_face_prototxt_only/deploy.prototxt")),
        caffe.TEST,
        weights=str(asset("models/res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel")),
    )


def test_fused_plan_runs_affine_chains_after_eltwise_as_one_step():
    plan = InferencePlan(ssd())
    names = plan.net._layer_names
    affine = {names[s.index]: s for s in plan.schedule if isinstance(s, _AffineStep)}
    assert [names[k] for k in affine["data_bn"].chain] == ["data_scale"] and affine["data_bn"].activation is None
    pre = affine["layer_128_1_bn1_h"]  # Eltwise -> BatchNorm -> Scale -> ReLU (pre-activation block)
    assert [names[k] for k in pre.chain] == ["layer_128_1_scale1_h", "layer_128_1_relu1"]
    assert pre.activation == ("relu", [])
    assert [names[k] for k in affine["last_bn_h"].chain] == ["last_scale_h"]  # last_relu writes fc7: not in place
    assert len(affine) == 5
    assert not any(isinstance(s, _AffineStep) for s in plan.steps)  # the compiled engine and export trace layers


def test_fused_equals_eager_on_ssd_detector_with_intermediate_blobs():
    net = ssd()
    x = np.random.default_rng(0).uniform(-120, 120, (1, 3, 300, 300)).astype(np.float32)
    blobs = ["data_bn", "layer_128_1_bn1_h", "layer_512_1_sum", "fc7", "conv4_3_norm", "conv9_2_mbox_loc"]
    eager = run(net, "eager", x, blobs)
    fused = run(net, "fused", x, blobs)
    for k in blobs:
        np.testing.assert_allclose(fused[k], eager[k], rtol=1e-4, atol=1e-4 * np.abs(eager[k]).max())
    assert fused["detection_out"].shape == eager["detection_out"].shape
    # the same rows; two of (nearly) equal confidence may come in either order (random weights make exact ties)
    want = [row for row in eager["detection_out"].reshape(-1, 7)]
    for row in fused["detection_out"].reshape(-1, 7):
        matches = [k for k, w in enumerate(want) if np.allclose(row, w, rtol=0, atol=1e-4)]
        assert matches, f"the fused engine's detection {row} is not among the eager one's"
        want.pop(matches[0])
    np.testing.assert_allclose(fused["detection_out"][..., 2], eager["detection_out"][..., 2], atol=1e-4)


FALLBACKS = """
name: "affine"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 3 dim: 3 } } }
layer { name: "bn0" type: "BatchNorm" bottom: "x" top: "a" }
layer { name: "sc0" type: "Scale" bottom: "a" top: "a" scale_param { bias_term: true } }
layer { name: "lrelu0" type: "ReLU" bottom: "a" top: "a" relu_param { negative_slope: 0.1 } }
layer { name: "bn_alone" type: "BatchNorm" bottom: "a" top: "b" }
layer { name: "bn_out" type: "BatchNorm" bottom: "b" top: "c" }
layer { name: "sc_out" type: "Scale" bottom: "c" top: "d" }
layer { name: "bn_read" type: "BatchNorm" bottom: "d" top: "e" }
layer { name: "pool" type: "Pooling" bottom: "e" top: "p" pooling_param { pool: MAX kernel_size: 2 } }
layer { name: "bn_batch" type: "BatchNorm" bottom: "e" top: "f" batch_norm_param { use_global_stats: false } }
layer { name: "sc_batch" type: "Scale" bottom: "f" top: "f" }
layer { name: "sc_two" type: "Scale" bottom: "f" bottom: "x" top: "g" scale_param { axis: 0 } }
layer { name: "bias_two" type: "Bias" bottom: "g" top: "g" }
layer { name: "conv" type: "Convolution" bottom: "g" top: "h"
        convolution_param { num_output: 5 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip" type: "InnerProduct" bottom: "h" top: "i"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn_2d" type: "BatchNorm" bottom: "i" top: "i" }
layer { name: "sc_2d" type: "Scale" bottom: "i" top: "i" scale_param { bias_term: true } }
layer { name: "sig_2d" type: "Sigmoid" bottom: "i" top: "i" }
"""


def fallback_net(dtype=None) -> caffe.Net:
    from google.protobuf import text_format

    from caffe.proto import caffe_pb2 as pb

    caffe.set_random_seed(5)
    net = caffe.Net(text_format.Parse(FALLBACKS, pb.NetParameter()), caffe.TEST, dtype=dtype)
    rng = np.random.default_rng(4)
    for layer in net.layers:
        if layer.type == "BatchNorm":
            c = layer.blobs[0].shape[0]
            layer.blobs[0].data[...] = rng.standard_normal(c)
            layer.blobs[1].data[...] = rng.random(c) + 0.5
            layer.blobs[2].data[...] = 1.0
        elif layer.type in ("Scale", "Bias"):
            for b in layer.blobs:
                b.data[...] = rng.standard_normal(b.shape)
    return net


def test_affine_chains_fuse_only_in_place_per_channel_chains():
    net = fallback_net()
    plan = InferencePlan(net)
    names = net._layer_names
    affine = {names[s.index]: [names[k] for k in s.chain] for s in plan.schedule if isinstance(s, _AffineStep)}
    # bn0 + Scale + leaky ReLU, and the 2-axis chain after InnerProduct (its Sigmoid runs on its own); not:
    # a lone BatchNorm (also when another layer reads its top), a Scale writing a new top, BatchNorm on
    # batch statistics, a Scale by a second bottom.
    assert affine == {"bn0": ["sc0", "lrelu0"], "bn_2d": ["sc_2d"]}
    step = next(s for s in plan.schedule if isinstance(s, _AffineStep) and names[s.index] == "bn0")
    assert step.activation == ("leaky_relu", [pytest.approx(0.1)])


@pytest.mark.parametrize("batch", [1, 2])
def test_fused_equals_eager_on_affine_fallbacks_and_tiny_convolutions(batch):
    net = fallback_net()
    x = np.random.default_rng(batch).standard_normal((batch, 4, 3, 3)).astype(np.float32)
    blobs = ["a", "b", "d", "e", "p", "f", "g", "h", "i"]
    eager = run(net, "eager", x, blobs)
    fused = run(net, "fused", x, blobs)
    for k in blobs:
        np.testing.assert_allclose(fused[k], eager[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_affine_chain_in_float64_and_refolded_after_weight_change():
    net = fallback_net(dtype=torch.float64)
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 3))
    before = run(net, "fused", x, ["a", "i"])
    np.testing.assert_allclose(before["a"], run(net, "eager", x, ["a"])["a"], rtol=1e-12, atol=1e-12)
    net.params["sc0"][0].data[...] *= -2.0  # net surgery through the NumPy view
    after = run(net, "fused", x, ["a", "i"])
    eager = run(net, "eager", x, ["a", "i"])
    assert np.abs(after["a"] - before["a"]).max() > 1e-3
    for k in ("a", "i"):
        np.testing.assert_allclose(after[k], eager[k], rtol=1e-12, atol=1e-12)
