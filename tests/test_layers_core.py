"""Core layers (InnerProduct, Embed, Scale, Bias, Parameter): Caffe's forward rules, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from gradcheck import check_gradient, layer_net, set_inputs

import caffe
from caffe.proto import caffe_pb2 as pb

GAUSS = 'type: "gaussian" std: 1'


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _run(net: caffe.Net, **inputs: np.ndarray) -> np.ndarray:
    set_inputs(net, inputs)
    net.forward()
    return net.blobs["y"].data.copy()


def _params(net: caffe.Net) -> list[np.ndarray]:
    return [b.data for b in net.layers[-1].blobs]


def _net_text(layers: str) -> pb.NetParameter:
    """A force_backward net with a (2, 3, 4, 2) input 'x' followed by ``layers``."""
    text = (
        'force_backward: true layer { name: "in" type: "Input" top: "x" '
        "input_param { shape { dim: 2 dim: 3 dim: 4 dim: 2 } } } "
    )
    return text_format.Parse(text + layers, pb.NetParameter())


# ---------------------------------------------------------------------------- InnerProduct
def _ip(num_output: int = 4, extra: str = "", bias: bool = True) -> str:
    return (
        f'type: "InnerProduct" bottom: "x" top: "y" inner_product_param {{ num_output: {num_output} '
        f"weight_filler {{ {GAUSS} }} bias_filler {{ {GAUSS} }} bias_term: {str(bias).lower()} {extra} }}"
    )


@pytest.mark.parametrize(
    ("shape", "extra", "bias", "top"),
    [
        ((2, 3, 2, 2), "", True, (2, 4)),
        ((2, 3, 2, 2), "axis: 2", True, (2, 3, 4)),
        ((2, 3, 5), "axis: -1", False, (2, 3, 4)),
        ((2, 3, 2, 2), "transpose: true", True, (2, 4)),
        ((3, 2, 5), "axis: 2 transpose: true", False, (3, 2, 4)),
    ],
)
def test_inner_product_forward_and_gradient(shape, extra, bias, top):
    net = layer_net(_ip(4, extra, bias), {"x": shape})
    x = _rand(*shape)
    y = _run(net, x=x)
    assert y.shape == top
    axis = len(top) - 1
    k = int(np.prod(shape[axis:]))
    w = _params(net)[0]
    transpose = "transpose" in extra
    assert w.shape == ((k, 4) if transpose else (4, k))
    expect = x.reshape(*shape[:axis], k) @ (w if transpose else w.T)
    if bias:
        assert _params(net)[1].shape == (4,)
        expect = expect + _params(net)[1]
    else:
        assert len(_params(net)) == 1
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12)
    check_gradient(net, {"x": x})


def test_inner_product_needs_num_output():
    with pytest.raises(caffe.LayerError, match="num_output"):
        layer_net('type: "InnerProduct" bottom: "x" top: "y"', {"x": (2, 3)})


def test_inner_product_input_size_change_is_a_shape_error():
    net = layer_net(_ip(), {"x": (2, 3, 4)})
    net.blobs["x"].reshape(2, 5, 4)
    with pytest.raises(caffe.ShapeError, match="incompatible"):
        net.reshape()
    net.blobs["x"].reshape(7, 3, 4)  # only the batch changes: fine
    net.reshape()
    assert net.blobs["y"].shape == (7, 4)


# ---------------------------------------------------------------------------- Embed
def _embed(bias: bool = True) -> str:
    return (
        'type: "Embed" bottom: "x" top: "y" embed_param { num_output: 3 input_dim: 5 '
        f"bias_term: {str(bias).lower()} weight_filler {{ {GAUSS} }} bias_filler {{ {GAUSS} }} }}"
    )


@pytest.mark.parametrize("bias", [True, False])
def test_embed_forward_and_weight_gradient(bias):
    net = layer_net(_embed(bias), {"x": (2, 4)})
    idx = np.array([[0, 4, 2, 2], [1, 4, 4, 3]], dtype=np.float64)  # repeats: gradients accumulate
    y = _run(net, x=idx)
    assert y.shape == (2, 4, 3)
    params = _params(net)
    assert params[0].shape == (5, 3)
    expect = params[0][idx.astype(int)] + (params[1] if bias else 0)
    np.testing.assert_allclose(y, expect, rtol=0, atol=0)
    assert net.bottom_need_backward[1] == [False]  # force_backward cannot reach the indices
    check_gradient(net, {"x": idx})


@pytest.mark.parametrize("bad", [5.0, -1.0])
def test_embed_index_out_of_range(bad):
    net = layer_net(_embed(), {"x": (3,)})
    with pytest.raises(caffe.LayerError, match="out of range"):
        _run(net, x=np.array([0.0, bad, 1.0]))


def test_embed_needs_sizes():
    with pytest.raises(caffe.LayerError, match="input_dim"):
        layer_net('type: "Embed" bottom: "x" top: "y" embed_param { num_output: 3 }', {"x": (3,)})
    with pytest.raises(caffe.LayerError, match="num_output"):
        layer_net('type: "Embed" bottom: "x" top: "y" embed_param { input_dim: 3 }', {"x": (3,)})


# ---------------------------------------------------------------------------- Scale / Bias, one bottom
X4 = (2, 3, 4, 2)


@pytest.mark.parametrize(
    ("axis", "num_axes", "blob_shape", "view"),
    [
        (1, 1, (3,), (1, 3, 1, 1)),
        (0, 2, (2, 3), (2, 3, 1, 1)),
        (1, -1, (3, 4, 2), (1, 3, 4, 2)),
        (-1, 1, (2,), (1, 1, 1, 2)),
        (2, 0, (), ()),
    ],
)
@pytest.mark.parametrize("kind", ["Scale", "Bias", "ScaleBias"])
def test_learned_operand_forward_and_gradient(kind, axis, num_axes, blob_shape, view):
    if kind == "Bias":
        text = f'type: "Bias" bias_param {{ axis: {axis} num_axes: {num_axes} filler {{ {GAUSS} }} }}'
    else:
        bias = f"bias_term: true bias_filler {{ {GAUSS} }}" if kind == "ScaleBias" else ""
        text = f'type: "Scale" scale_param {{ axis: {axis} num_axes: {num_axes} filler {{ {GAUSS} }} {bias} }}'
    net = layer_net(text + ' bottom: "x" top: "y"', {"x": X4})
    params = _params(net)
    assert [p.shape for p in params] == [blob_shape] * (2 if kind == "ScaleBias" else 1)
    x = _rand(*X4)
    y = _run(net, x=x)
    operand = params[0].reshape(view)
    expect = {"Bias": x + operand, "Scale": x * operand}.get(kind)
    if kind == "ScaleBias":
        expect = x * operand + params[1].reshape(view)
    np.testing.assert_allclose(y, expect, rtol=1e-14, atol=1e-14)
    check_gradient(net, {"x": x})


def test_default_fillers_are_identity():
    for text in ('type: "Scale" scale_param { bias_term: true }', 'type: "Bias"'):
        net = layer_net(text + ' bottom: "x" top: "y"', {"x": X4})
        x = _rand(*X4)
        np.testing.assert_array_equal(_run(net, x=x), x)


# ---------------------------------------------------------------------------- Scale / Bias, two bottoms
@pytest.mark.parametrize(
    ("axis", "operand", "view"),
    [
        (1, (3,), (1, 3, 1, 1)),
        (1, (3, 4), (1, 3, 4, 1)),
        (0, (2, 3, 4, 2), (2, 3, 4, 2)),
        (-2, (4, 2), (1, 1, 4, 2)),
        (3, (), ()),
    ],
)
@pytest.mark.parametrize("kind", ["Scale", "Bias", "ScaleBias"])
def test_two_bottoms_forward_and_gradient(kind, axis, operand, view):
    field = "bias_param" if kind == "Bias" else "scale_param"
    extra = f"bias_term: true bias_filler {{ {GAUSS} }}" if kind == "ScaleBias" else ""
    text = f'type: "{kind[:5]}" bottom: "x" bottom: "s" top: "y" {field} {{ axis: {axis} {extra} }}'
    net = layer_net(text, {"x": X4, "s": operand})
    x, s = _rand(*X4), _rand(*operand, seed=1)
    y = _run(net, x=x, s=s)
    expect = x + s.reshape(view) if kind == "Bias" else x * s.reshape(view)
    if kind == "ScaleBias":
        (bias,) = _params(net)
        assert bias.shape == operand  # the bias covers as many axes as bottom[1]
        expect = expect + bias.reshape(view)
    else:
        assert _params(net) == []
    np.testing.assert_allclose(y, expect, rtol=1e-14, atol=1e-14)
    check_gradient(net, {"x": x, "s": s})


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
def test_two_bottoms_shape_mismatch(kind):
    with pytest.raises(caffe.ShapeError, match=r"does not match bottom\[0\] shape"):
        layer_net(f'type: "{kind}" bottom: "x" bottom: "s" top: "y"', {"x": X4, "s": (4,)})
    with pytest.raises(caffe.ShapeError, match="does not match"):  # extends past the end
        layer_net(f'type: "{kind}" bottom: "x" bottom: "s" top: "y"', {"x": X4, "s": (3, 4, 2, 1)})


@pytest.mark.parametrize("kind", ["scale", "bias"])
def test_bad_num_axes(kind):
    layer = f'type: "{kind.capitalize()}" bottom: "x" top: "y" {kind}_param'
    with pytest.raises(caffe.LayerError, match="num_axes"):
        layer_net(f"{layer} {{ num_axes: -2 }}", {"x": X4})
    with pytest.raises(caffe.ShapeError, match="extends past"):
        layer_net(f"{layer} {{ axis: 2 num_axes: 3 }}", {"x": X4})


def test_scale_learned_shape_checked_on_reshape():
    net = layer_net('type: "Scale" bottom: "x" top: "y"', {"x": X4})
    net.blobs["x"].reshape(2, 5, 4, 2)
    with pytest.raises(caffe.ShapeError, match=r"scale parameter shape \(3,\)"):
        net.reshape()


def test_scale_in_place():
    net = caffe.Net(
        _net_text(
            'layer { name: "s" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true '
            f"filler {{ {GAUSS} }} bias_filler {{ {GAUSS} }} }} }}"
        ),
        caffe.TEST,
        dtype=torch.float64,
    )
    x = _rand(*X4)
    s, b = _params(net)
    net.blobs["x"].data[...] = x
    net.forward()
    np.testing.assert_allclose(net.blobs["x"].data, x * s[:, None, None] + b[:, None, None], rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------------------- Parameter
def test_parameter_top_is_the_blob_and_gets_its_gradient():
    net = layer_net('type: "Parameter" top: "y" parameter_param { shape { dim: 2 dim: 3 } }', {})
    (blob,) = net.layers[-1].blobs
    assert blob.shape == (2, 3)
    np.testing.assert_array_equal(blob.data, 0)
    blob.data[...] = _rand(2, 3)
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, blob.data)
    check_gradient(net, {})
    # the top's diff accumulates into the parameter's diff, as Caffe's shared diff
    net.clear_param_diffs()
    net.forward()
    net.blobs["y"].diff[...] = 2.0
    net.backward()
    np.testing.assert_array_equal(blob.diff, 2.0)


def test_parameter_feeds_a_consumer():
    text = _net_text(
        'layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 3 } } } '
        'layer { name: "s" type: "Scale" bottom: "x" bottom: "p" top: "y" }'
    )
    net = caffe.Net(text, caffe.TRAIN, dtype=torch.float64)
    net.layers[1].blobs[0].data[...] = [1.0, 2.0, 3.0]
    x = _rand(*X4)
    net.blobs["x"].data[...] = x
    net.forward()
    np.testing.assert_allclose(net.blobs["y"].data, x * np.array([1.0, 2.0, 3.0])[:, None, None])
    net.clear_param_diffs()
    net.blobs["y"].diff[...] = 1.0
    net.backward()
    np.testing.assert_allclose(net.layers[1].blobs[0].diff, x.sum(axis=(0, 2, 3)))


# ---------------------------------------------------------------------------- tracing (TEST phase)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(
    "text",
    [
        _ip(4, "axis: 1"),
        _ip(4, "transpose: true"),
        'type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true }',
        'type: "Bias" bottom: "x" top: "y"',
        _embed(),
    ],
)
def test_traceable_in_test_phase(text):
    net = layer_net(text, {"x": (2, 3, 2, 2)}, force_backward=False)
    layer = net.layers[-1]
    for blob in layer.blobs:  # a tracer takes parameters as constants
        blob.tensor.requires_grad_(False)
    x = torch.from_numpy(np.abs(_rand(2, 3, 2, 2)).round().clip(0, 3))
    with torch.no_grad():
        traced = torch.jit.trace(lambda t: layer.forward([t])[0], (x,))
        torch.testing.assert_close(traced(x + 1), layer.forward([x + 1])[0])
