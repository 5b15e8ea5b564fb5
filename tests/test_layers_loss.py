"""Loss layers and Accuracy: forward values computed by hand in NumPy from Caffe's formulas,
gradients against finite differences, loss weights through a plain net, and bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from gradcheck import check_gradient, layer_net, set_inputs

import caffe
from caffe.layer import Layer, register
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import write_binary
from caffe.weights import array_to_blob_proto

RNG = np.random.default_rng(20240601)
FLT_MIN = np.finfo(np.float32).tiny


@register("LossTestShift")
class _ShiftLayer(Layer):
    """Test-only: top = bottom + b with a learnable scalar b, so a plain net needs backward."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom):
        self.add_param((1,), pb.FillerParameter(type="constant", value=0))

    def reshape(self, bottom):
        return [bottom[0]]

    def forward(self, bottom):
        return [bottom[0] + self.param_tensor(0)]


def forward(layer_text: str, inputs: dict[str, np.ndarray], top: str = "loss") -> np.ndarray:
    net = layer_net(layer_text, {k: v.shape for k, v in inputs.items()})
    set_inputs(net, inputs)
    net.forward()
    return net.blobs[top].data.copy()


def labels(shape, num_classes, ignored=()):
    y = RNG.integers(0, num_classes, shape).astype(np.float64)
    for pos in ignored:
        y[pos] = 255
    return y


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def normalizer(mode, outer, inner, valid):
    value = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return max(1.0, value)


def softmax_loss_ref(x, y, axis=1, ignore=None, mode="VALID"):
    p = np.moveaxis(softmax(x, axis), axis, -1)  # (outer..., inner..., C) in label order
    p = p.reshape(-1, p.shape[-1])
    y = y.reshape(-1).astype(int)
    keep = y != ignore if ignore is not None else np.ones(y.shape, bool)
    loss = -np.sum(np.log(np.maximum(p[keep.nonzero()[0], y[keep]], FLT_MIN)))
    outer = int(np.prod(x.shape[:axis]))
    return loss / normalizer(mode, outer, y.size // outer, keep.sum())


# ---------------------------------------------------------------------------- SoftmaxWithLoss
SWL = 'type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" '


@pytest.mark.parametrize(
    ("loss_param", "divisor"),
    [
        ("normalization: VALID", 4),
        ("normalization: FULL", 6),
        ("normalization: BATCH_SIZE", 2),
        ("normalization: NONE", 1),
        ("", 4),  # default VALID
        ("normalize: true", 4),
        ("normalize: false", 2),
        ("normalize: false normalization: FULL", 6),  # normalization wins
    ],
)
def test_softmax_loss_normalization_with_ignore(loss_param, divisor):
    x = RNG.standard_normal((2, 5, 3))
    y = labels((2, 3), 5, ignored=[(0, 1), (1, 2)])  # 2 of 6 ignored
    got = forward(SWL + f"loss_param {{ ignore_label: 255 {loss_param} }}", {"x": x, "y": y})
    total = softmax_loss_ref(x, y, ignore=255, mode="NONE")
    np.testing.assert_allclose(got, total / divisor, rtol=1e-12)


def test_softmax_loss_without_ignore_label_valid_is_full():
    x, y = RNG.standard_normal((3, 4)), labels((3,), 4)
    np.testing.assert_allclose(forward(SWL, {"x": x, "y": y}), softmax_loss_ref(x, y), rtol=1e-12)


def test_softmax_loss_axis2_spatial_labels():
    x = RNG.standard_normal((2, 3, 4, 5))
    y = labels((2, 3, 5), 4, ignored=[(1, 1, 1)])
    text = SWL + "softmax_param { axis: 2 } loss_param { ignore_label: 255 }"
    np.testing.assert_allclose(forward(text, {"x": x, "y": y}), softmax_loss_ref(x, y, axis=2, ignore=255), rtol=1e-12)
    text_neg = SWL + "softmax_param { axis: -2 } loss_param { ignore_label: 255 }"
    np.testing.assert_allclose(forward(text_neg, {"x": x, "y": y}), forward(text, {"x": x, "y": y}), rtol=1e-14)


def test_softmax_loss_clamps_like_caffe():
    x = np.array([[0.0, 200.0]])
    y = np.array([0.0])
    np.testing.assert_allclose(forward(SWL, {"x": x, "y": y}), -np.log(FLT_MIN), rtol=1e-6)


@pytest.mark.parametrize(
    "extra",
    [
        "loss_param { ignore_label: 255 }",
        "loss_param { ignore_label: 255 normalization: BATCH_SIZE }",
        "softmax_param { axis: 2 } loss_param { normalization: FULL }",
    ],
)
def test_softmax_loss_gradient(extra):
    axis2 = "axis: 2" in extra
    x = RNG.standard_normal((2, 3, 4) if axis2 else (2, 5, 3))
    y = labels((2, 3), 4) if axis2 else labels((2, 3), 5, ignored=[(0, 0), (1, 1)])
    net = layer_net(SWL + extra, {"x": x.shape, "y": y.shape})
    assert net.bottom_need_backward[-1] == [True, False]  # no gradient to labels, even forced
    check_gradient(net, {"x": x, "y": y})


def test_softmax_loss_gradient_ignores_forward_clamp():
    # Caffe's backward is prob - onehot even where the forward clamps at FLT_MIN.
    x, y = np.array([[0.0, 200.0]]), np.array([0.0])
    net = layer_net(SWL, {"x": x.shape, "y": y.shape})
    set_inputs(net, {"x": x, "y": y})
    net.forward()
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, softmax(x, 1) - np.array([[1.0, 0.0]]), atol=1e-12)


def test_softmax_loss_prob_top_is_detached_softmax():
    x, y = RNG.standard_normal((2, 4, 3)), labels((2, 3), 4)
    text = 'type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" top: "prob"'
    net = layer_net(text, {"x": x.shape, "y": y.shape})
    assert net.blob_loss_weights["loss"] == 1 and net.blob_loss_weights["prob"] == 0
    set_inputs(net, {"x": x, "y": y})
    net.forward()
    np.testing.assert_allclose(net.blobs["prob"].data, softmax(x, 1), rtol=1e-12)
    np.testing.assert_allclose(net.blobs["loss"].data, softmax_loss_ref(x, y), rtol=1e-12)
    assert not net.blobs["prob"].tensor.requires_grad
    # Caffe ignores prob's diff in backward: the bottom diff is the loss gradient alone.
    net.blobs["prob"].diff[...] = RNG.standard_normal(x.shape)
    net._backward(len(net.layers) - 1, len(net.layers) - 1)
    p = softmax(x, 1)
    onehot = np.moveaxis(np.eye(4)[y.astype(int)], -1, 1)
    np.testing.assert_allclose(net.blobs["x"].diff, (p - onehot) / 6, atol=1e-12)


def test_loss_layer_automatic_top():
    # Caffe gives a loss layer without tops an anonymous top: counted in the loss, not a net output.
    x, y = RNG.standard_normal((2, 3)), labels((2,), 3)
    net = layer_net('type: "SoftmaxWithLoss" bottom: "x" bottom: "y"', {"x": x.shape, "y": y.shape})
    set_inputs(net, {"x": x, "y": y})
    assert net.outputs == []
    np.testing.assert_allclose(net.forward_backward(), softmax_loss_ref(x, y), rtol=1e-12)
    np.testing.assert_allclose(net.blobs["x"].diff, (softmax(x, 1) - np.eye(3)[y.astype(int)]) / 2, atol=1e-12)


# ---------------------------------------------------------------------------- loss weight via a plain net
def plain_net(layer_text: str, inputs: dict[str, np.ndarray], shifted: tuple[str, ...]) -> caffe.Net:
    """Input -> LossTestShift on ``shifted`` bottoms -> the loss layer (reading ``<name>s``); no force_backward."""
    net = pb.NetParameter(name="plain")
    inp = net.layer.add(name="input", type="Input")
    for name, value in inputs.items():
        inp.top.append(name)
        inp.input_param.shape.add().dim.extend(value.shape)
    for name in shifted:
        net.layer.add(name=f"shift_{name}", type="LossTestShift", bottom=[name], top=[name + "s"])
    layer = net.layer.add()
    text_format.Parse(layer_text, layer)
    layer.name = "loss_layer"
    result = caffe.Net(net, caffe.TRAIN, dtype=torch.float64)
    set_inputs(result, inputs)
    return result


def test_loss_weight_scales_gradient_without_force_backward():
    x, y = RNG.standard_normal((3, 4)), labels((3,), 4)
    text = 'type: "SoftmaxWithLoss" bottom: "xs" bottom: "y" top: "loss" loss_weight: 3'
    net = plain_net(text, {"x": x, "y": y}, ("x",))
    assert not net.force_backward and net.layer_need_backward[-1]
    loss = net.forward_backward()
    np.testing.assert_allclose(loss, 3 * softmax_loss_ref(x, y), rtol=1e-12)
    np.testing.assert_allclose(net.blobs["loss"].data, softmax_loss_ref(x, y), rtol=1e-12)
    expected = 3 * (softmax(x, 1) - np.eye(4)[y.astype(int)]) / 3
    np.testing.assert_allclose(net.blobs["xs"].diff, expected, atol=1e-12)
    np.testing.assert_allclose(net.params["shift_x"][0].diff, [expected.sum()], atol=1e-12)


@pytest.mark.parametrize(
    ("text", "bottoms", "inputs", "grads"),
    [
        (
            'type: "EuclideanLoss" bottom: "as" bottom: "bs"',
            ("a", "b"),
            {"a": RNG.standard_normal((3, 2)), "b": RNG.standard_normal((3, 2))},
            lambda a, b: (a - b) / 3,  # d/da; d/db is the negative
        ),
        (
            'type: "SigmoidCrossEntropyLoss" bottom: "as" bottom: "b"',
            ("a",),
            {"a": RNG.standard_normal((3, 2)), "b": RNG.integers(0, 2, (3, 2)).astype(float)},
            lambda a, b: (1 / (1 + np.exp(-a)) - b) / 3,
        ),
    ],
)
def test_loss_weight_other_losses(text, bottoms, inputs, grads):
    net = plain_net(text + " top: 'loss' loss_weight: 2.5", inputs, bottoms)
    net.forward_backward()
    g = grads(inputs["a"], inputs["b"])
    np.testing.assert_allclose(net.blobs["as"].diff, 2.5 * g, atol=1e-12)
    if "b" in bottoms:
        np.testing.assert_allclose(net.blobs["bs"].diff, -2.5 * g, atol=1e-12)


# ---------------------------------------------------------------------------- MultinomialLogisticLoss
MLL = 'type: "MultinomialLogisticLoss" bottom: "p" bottom: "y" top: "loss"'


def test_multinomial_logistic_loss_forward_and_gradient():
    p = RNG.uniform(0.1, 1.0, (4, 5, 1, 1))
    y = labels((4, 1, 1, 1), 5)
    expected = -np.log(p.reshape(4, 5)[np.arange(4), y.reshape(4).astype(int)]).sum() / 4
    np.testing.assert_allclose(forward(MLL, {"p": p, "y": y}), expected, rtol=1e-12)
    check_gradient(layer_net(MLL, {"p": p.shape, "y": y.shape}), {"p": p, "y": y})


def test_multinomial_logistic_loss_threshold():
    p = np.array([[0.0, 1.0], [0.5, 0.5]])
    y = np.array([0.0, 1.0])
    net = layer_net(MLL, {"p": p.shape, "y": y.shape})
    set_inputs(net, {"p": p, "y": y})
    net.forward()
    np.testing.assert_allclose(net.blobs["loss"].data, (-np.log(1e-20) - np.log(0.5)) / 2, rtol=1e-12)
    net.backward()
    np.testing.assert_allclose(net.blobs["p"].diff, [[-1 / 1e-20 / 2, 0], [0, -1 / 0.5 / 2]], rtol=1e-12)


def test_multinomial_logistic_loss_rejects_multi_label_blob():
    with pytest.raises(caffe.ShapeError, match=r"\(4, 2\)"):
        layer_net(MLL, {"p": (4, 5), "y": (4, 2)})


# ---------------------------------------------------------------------------- InfogainLoss
def infogain_ref(x, y, h, axis=1, ignore=None, mode="VALID"):
    logp = np.log(np.maximum(softmax(x, axis), 1e-20))
    logp = np.moveaxis(logp, axis, -1).reshape(-1, x.shape[axis])
    y = y.reshape(-1).astype(int)
    keep = y != ignore if ignore is not None else np.ones(y.shape, bool)
    loss = -np.sum(h[y[keep]] * logp[keep])
    outer = int(np.prod(x.shape[:axis]))
    return loss / normalizer(mode, outer, y.size // outer, keep.sum())


@pytest.fixture
def h_file(tmp_path):
    def write(h):
        path = tmp_path / "H.binaryproto"
        write_binary(path, array_to_blob_proto(h[None, None]))  # 1 x 1 x C x C, as Caffe tools write it
        return path

    return write


def test_infogain_identity_equals_multinomial_logistic_of_softmax(h_file):
    x, y = RNG.standard_normal((4, 5)), labels((4,), 5)
    path = h_file(np.eye(5))
    info = forward(
        f'type: "InfogainLoss" bottom: "x" bottom: "y" top: "loss" infogain_loss_param {{ source: "{path}" }}',
        {"x": x, "y": y},
    )
    mll = forward(MLL, {"p": softmax(x, 1).astype(np.float32).astype(np.float64), "y": y})
    np.testing.assert_allclose(info, mll, rtol=1e-6)
    np.testing.assert_allclose(info, softmax_loss_ref(x, y), rtol=1e-12)


@pytest.mark.parametrize("mode", ["VALID", "FULL", "BATCH_SIZE", "NONE"])
def test_infogain_from_file_forward_and_gradient(h_file, mode):
    x = RNG.standard_normal((2, 4, 3))
    y = labels((2, 3), 4, ignored=[(0, 2), (1, 0)])
    h = RNG.uniform(0, 1, (4, 4)).astype(np.float32).astype(np.float64)
    text = (
        f'type: "InfogainLoss" bottom: "x" bottom: "y" top: "loss" infogain_loss_param {{ source: "{h_file(h)}" }} '
        f"loss_param {{ ignore_label: 255 normalization: {mode} }}"
    )
    np.testing.assert_allclose(
        forward(text, {"x": x, "y": y}), infogain_ref(x, y, h, ignore=255, mode=mode), rtol=1e-12
    )
    if mode == "VALID":
        check_gradient(layer_net(text, {"x": x.shape, "y": y.shape}), {"x": x, "y": y})


def test_infogain_from_bottom_with_axis_and_prob_top():
    x = RNG.standard_normal((2, 3, 4))  # classes on axis 2
    y = labels((2, 3), 4)
    h = RNG.uniform(0, 1, (4, 4))
    text = (
        'type: "InfogainLoss" bottom: "x" bottom: "y" bottom: "h" top: "loss" top: "prob" '
        "loss_weight: 1 loss_weight: 0 infogain_loss_param { axis: 2 }"
    )
    inputs = {"x": x, "y": y, "h": h.reshape(1, 1, 4, 4)}
    net = layer_net(text, {k: v.shape for k, v in inputs.items()})
    assert net.bottom_need_backward[-1] == [True, False, False]
    set_inputs(net, inputs)
    net.forward()
    np.testing.assert_allclose(net.blobs["loss"].data, infogain_ref(x, y, h, axis=2), rtol=1e-12)
    np.testing.assert_allclose(net.blobs["prob"].data, softmax(x, 2), rtol=1e-12)
    single = text.replace(' top: "prob"', "").replace(" loss_weight: 1 loss_weight: 0", "")
    check_gradient(layer_net(single, {k: v.shape for k, v in inputs.items()}), inputs)


def test_infogain_gradient_matches_caffe_formula():
    # Caffe: d/dx_l = (p_l * sum_m H[y, m] - H[y, l]) / normalizer.
    x, y = RNG.standard_normal((3, 4)), labels((3,), 4)
    h = RNG.uniform(0, 2, (4, 4))
    inputs = {"x": x, "y": y, "h": h}
    net = layer_net(
        'type: "InfogainLoss" bottom: "x" bottom: "y" bottom: "h" top: "loss"', {k: v.shape for k, v in inputs.items()}
    )
    set_inputs(net, inputs)
    net.forward()
    net.backward()
    yi = y.astype(int)
    expected = (softmax(x, 1) * h[yi].sum(1, keepdims=True) - h[yi]) / 3
    np.testing.assert_allclose(net.blobs["x"].diff, expected, atol=1e-12)


def test_infogain_errors(h_file, tmp_path):
    text = 'type: "InfogainLoss" bottom: "x" bottom: "y" '
    with pytest.raises(caffe.ShapeError, match=r"H must be 4x4.*\(3, 3\)"):
        layer_net(text + 'bottom: "h"', {"x": (2, 4), "y": (2,), "h": (3, 3)})
    with pytest.raises(caffe.ShapeError, match=r"H must be 4x4.*\(1, 1, 5, 5\)"):
        layer_net(text + f'infogain_loss_param {{ source: "{h_file(np.eye(5))}" }}', {"x": (2, 4), "y": (2,)})
    with pytest.raises(caffe.LayerError, match="source must be specified"):
        layer_net(text, {"x": (2, 4), "y": (2,)})
    with pytest.raises(caffe.LayerError, match="normalize is deprecated"):
        layer_net(text + 'bottom: "h" loss_param { normalize: true }', {"x": (2, 4), "y": (2,), "h": (4, 4)})
    with pytest.raises(caffe.CaffeError, match=r"missing\.binaryproto"):
        layer_net(
            text + f'infogain_loss_param {{ source: "{tmp_path}/missing.binaryproto" }}', {"x": (2, 4), "y": (2,)}
        )


# ---------------------------------------------------------------------------- EuclideanLoss
EUC = 'type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss"'


def test_euclidean_loss_forward_and_gradients_to_both():
    a, b = RNG.standard_normal((4, 3, 2)), RNG.standard_normal((4, 6))
    np.testing.assert_allclose(forward(EUC, {"a": a, "b": b}), np.sum((a.reshape(4, 6) - b) ** 2) / 8, rtol=1e-12)
    net = layer_net(EUC, {"a": a.shape, "b": b.shape})
    assert net.bottom_need_backward[-1] == [True, True]
    check_gradient(net, {"a": a, "b": b})


def test_euclidean_loss_dimension_mismatch():
    with pytest.raises(caffe.ShapeError, match=r"same dimension.*\(4, 3\).*\(4, 2\)"):
        layer_net(EUC, {"a": (4, 3), "b": (4, 2)})


# ---------------------------------------------------------------------------- HingeLoss
def away_from_kinks(shape):
    mag = np.where(RNG.random(shape) < 0.5, RNG.uniform(0.05, 0.8, shape), RNG.uniform(1.2, 2.0, shape))
    return mag * RNG.choice([-1.0, 1.0], shape)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm):
    x = away_from_kinks((4, 5))
    y = labels((4,), 5)
    t = -np.ones((4, 5))
    t[np.arange(4), y.astype(int)] = 1
    margin = np.maximum(0, 1 - t * x)
    expected = (margin if norm == "L1" else margin**2).sum() / 4
    text = f'type: "HingeLoss" bottom: "x" bottom: "y" top: "loss" hinge_loss_param {{ norm: {norm} }}'
    np.testing.assert_allclose(forward(text, {"x": x, "y": y}), expected, rtol=1e-12)
    check_gradient(layer_net(text, {"x": x.shape, "y": y.shape}), {"x": x, "y": y})


def test_hinge_loss_default_is_l1_and_4d_input():
    x, y = away_from_kinks((3, 2, 2, 1)), labels((3, 1, 1, 1), 4)
    t = -np.ones((3, 4))
    t[np.arange(3), y.reshape(3).astype(int)] = 1
    expected = np.maximum(0, 1 - t * x.reshape(3, 4)).sum() / 3
    np.testing.assert_allclose(
        forward('type: "HingeLoss" bottom: "x" bottom: "y" top: "loss"', {"x": x, "y": y}), expected
    )


# ---------------------------------------------------------------------------- SigmoidCrossEntropyLoss
SCE = 'type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" '


def sce_ref(x, t):
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


@pytest.mark.parametrize(
    ("loss_param", "divisor"),
    [
        ("", 2),  # unset: BATCH_SIZE for historical reasons
        ("normalization: VALID", 4),
        ("normalization: FULL", 6),
        ("normalization: BATCH_SIZE", 2),
        ("normalization: NONE", 1),
        ("normalize: true", 4),
        ("normalize: false", 2),
    ],
)
def test_sigmoid_cross_entropy_normalization_with_ignore(loss_param, divisor):
    x = RNG.standard_normal((2, 3))
    t = RNG.uniform(0, 1, (2, 3)).round()
    t[0, 0] = t[1, 2] = -1  # 2 of 6 ignored
    keep = t != -1
    expected = np.sum(sce_ref(x, t)[keep]) / divisor
    got = forward(SCE + f"loss_param {{ ignore_label: -1 {loss_param} }}", {"x": x, "t": t})
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_sigmoid_cross_entropy_is_stable_for_large_inputs():
    x = np.array([[1000.0, -1000.0, 1000.0, -1000.0, 0.0, 80.0]])
    t = np.array([[0.0, 1.0, 1.0, 0.0, 1.0, 0.5]])
    got = forward(SCE + "loss_param { normalization: NONE }", {"x": x, "t": t})
    expected = 1000 + 1000 + 0 + 0 + np.log(2) + (80 - 40 + np.log1p(np.exp(-80)))
    assert np.isfinite(got)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_sigmoid_cross_entropy_gradient():
    x = RNG.standard_normal((3, 2, 2)) * 3
    t = RNG.uniform(0, 1, (3, 4))
    t[1, 1] = 7  # int(7) == ignore_label
    text = SCE + "loss_param { ignore_label: 7 normalization: VALID }"
    net = layer_net(text, {"x": x.shape, "t": t.shape})
    assert net.bottom_need_backward[-1] == [True, False]
    check_gradient(net, {"x": x, "t": t})
    # Caffe's gradient: (sigmoid(x) - t) / normalizer, zero where ignored, also at x == 0.
    x[0, 0, 0] = 0.0
    set_inputs(net, {"x": x, "t": t})
    net.forward()
    net.backward()
    expected = (1 / (1 + np.exp(-x)) - t.reshape(x.shape)) / 11
    expected.reshape(3, 4)[1, 1] = 0
    np.testing.assert_allclose(net.blobs["x"].diff, expected, atol=1e-12)


def test_sigmoid_cross_entropy_count_mismatch():
    with pytest.raises(caffe.ShapeError, match=r"same count.*\(2, 3\).*\(2, 4\)"):
        layer_net(SCE, {"x": (2, 3), "t": (2, 4)})


# ---------------------------------------------------------------------------- ContrastiveLoss
def contrastive_inputs(n=6, c=3, margin=2.0):
    a, b = RNG.standard_normal((n, c)), RNG.standard_normal((n, c))
    # keep every dissimilar distance away from the margin (kink)
    d = np.linalg.norm(a - b, axis=1)
    for i in range(n):
        while abs(d[i] - margin) < 0.2 or abs(d[i] ** 2 - margin) < 0.2:
            b[i] = RNG.standard_normal(c)
            d[i] = np.linalg.norm(a[i] - b[i])
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])[:n].reshape(n, 1, 1, 1)
    return a.reshape(n, c, 1, 1), b.reshape(n, c, 1, 1), y


def contrastive_ref(a, b, y, margin, legacy):
    n = a.shape[0]
    d2 = np.sum((a - b).reshape(n, -1) ** 2, axis=1)
    sim = y.reshape(n).astype(int) != 0
    dis = np.maximum(margin - d2, 0) if legacy else np.maximum(margin - np.sqrt(d2), 0) ** 2
    return np.sum(np.where(sim, d2, dis)) / (2 * n)


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss(legacy):
    a, b, y = contrastive_inputs()
    flag = "true" if legacy else "false"
    text = (
        'type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y" top: "loss" '
        f"contrastive_loss_param {{ margin: 2 legacy_version: {flag} }}"
    )
    inputs = {"a": a, "b": b, "y": y}
    np.testing.assert_allclose(forward(text, inputs), contrastive_ref(a, b, y, 2.0, legacy), rtol=1e-12)
    net = layer_net(text, {k: v.shape for k, v in inputs.items()})
    assert net.bottom_need_backward[-1] == [True, True, False]
    # The non-legacy Caffe gradient divides by (d + 1e-4), so it is only close to the true one.
    check_gradient(net, inputs, threshold=1e-5 if legacy else 1e-3)
    # Caffe's exact backward, by hand.
    set_inputs(net, inputs)
    net.forward()
    net.backward()
    n = a.shape[0]
    diff = (a - b).reshape(n, -1)
    d2 = (diff**2).sum(1)
    sim = y.reshape(n) != 0
    if legacy:
        scale = np.where(sim, 1.0, np.where(2 - d2 > 0, -1.0, 0.0))
    else:
        d = np.sqrt(d2)
        scale = np.where(sim, 1.0, np.where(2 - d > 0, -(2 - d) / (d + 1e-4), 0.0))
    expected = (scale[:, None] * diff / n).reshape(a.shape)
    np.testing.assert_allclose(net.blobs["a"].diff, expected, atol=1e-12)
    np.testing.assert_allclose(net.blobs["b"].diff, -expected, atol=1e-12)


def test_contrastive_loss_default_margin_and_coincident_points():
    a = np.zeros((2, 3))
    y = np.array([0.0, 0.7])  # int(0.7) == 0: both dissimilar
    text = 'type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y" top: "loss"'
    net = layer_net(text, {"a": a.shape, "b": a.shape, "y": y.shape})
    set_inputs(net, {"a": a, "b": a.copy(), "y": y})
    net.forward()
    np.testing.assert_allclose(net.blobs["loss"].data, 1.0 / 2)  # (1 - 0)^2 * 2 pairs / (2 * 2)
    net.backward()
    assert np.all(net.blobs["a"].diff == 0) and np.all(np.isfinite(net.blobs["b"].diff))


def test_contrastive_loss_bad_shapes():
    text = 'type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y"'
    with pytest.raises(caffe.ShapeError, match=r"\(4, 3\), \(4, 2\), \(4,\)"):
        layer_net(text, {"a": (4, 3), "b": (4, 2), "y": (4,)})
    with pytest.raises(caffe.ShapeError, match=r"\(4, 3, 2\)"):
        layer_net(text, {"a": (4, 3, 2), "b": (4, 3, 2), "y": (4,)})


# ---------------------------------------------------------------------------- Accuracy
ACC = 'type: "Accuracy" bottom: "x" bottom: "y" top: "acc" '


def accuracy_ref(x, y, top_k=1, axis=1, ignore=None):
    s = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    y = y.reshape(-1).astype(int)
    keep = y != ignore if ignore is not None else np.ones(y.shape, bool)
    c = x.shape[axis]
    hits, counts = np.zeros(c), np.zeros(c)
    for row, label, k in zip(s, y, keep):
        if not k:
            continue
        correct = np.sum(row >= row[label]) <= top_k  # ties count against the true class
        hits[label] += correct
        counts[label] += 1
    per_class = np.where(counts > 0, hits / np.maximum(counts, 1), 0)
    return hits.sum() / max(counts.sum(), 1), per_class


@pytest.mark.parametrize("top_k", [1, 3])
def test_accuracy_top_k_and_per_class(top_k):
    x, y = RNG.standard_normal((50, 6)), labels((50,), 6)
    y[y == 5] = 4  # class 5 has no samples: per-class accuracy 0
    text = ACC + f'top: "per_class" accuracy_param {{ top_k: {top_k} }}'
    net = layer_net(text, {"x": x.shape, "y": y.shape})
    set_inputs(net, {"x": x, "y": y})
    net.forward()
    acc, per_class = accuracy_ref(x, y, top_k)
    np.testing.assert_allclose(net.blobs["acc"].data, acc, rtol=1e-12)
    assert net.blobs["per_class"].shape == (6,)
    np.testing.assert_allclose(net.blobs["per_class"].data, per_class, rtol=1e-12)
    assert per_class[5] == 0


def test_accuracy_ties_count_against_true_class():
    x = np.array([[1.0, 1.0, 0.0], [2.0, 1.0, 1.0], [0.0, 3.0, 3.0], [0.0, 3.0, 3.0]])
    y = np.array([0.0, 0.0, 1.0, 0.0])
    # row 0: tie with class 1 -> wrong at top-1; row 1: strictly best -> right;
    # row 2: tie for best -> wrong at top-1, right at top-2; row 3: class 0 is last -> wrong at top-2.
    np.testing.assert_allclose(forward(ACC, {"x": x, "y": y}, "acc"), 1 / 4)
    np.testing.assert_allclose(forward(ACC + "accuracy_param { top_k: 2 }", {"x": x, "y": y}, "acc"), 3 / 4)


def test_accuracy_ignore_label_and_axis():
    x = RNG.standard_normal((2, 3, 4))  # classes on axis 2
    y = labels((2, 3), 4, ignored=[(0, 0), (1, 2)])
    y[0, 0] = y[1, 2] = -1
    text = ACC + "accuracy_param { axis: 2 ignore_label: -1 }"
    expected, _ = accuracy_ref(x, y, axis=2, ignore=-1)
    np.testing.assert_allclose(forward(text, {"x": x, "y": y}, "acc"), expected, rtol=1e-12)
    all_ignored = np.full((2, 3), -1.0)
    assert forward(text, {"x": x, "y": all_ignored}, "acc") == 0


def test_accuracy_has_no_gradient():
    x, y = RNG.standard_normal((4, 3)), labels((4,), 3)
    net = layer_net(ACC, {"x": x.shape, "y": y.shape})  # force_backward: true
    assert net.blob_loss_weights["acc"] == 0
    assert net.bottom_need_backward[-1] == [False, False]
    set_inputs(net, {"x": x, "y": y})
    net.forward()
    assert not net.blobs["acc"].tensor.requires_grad


def test_accuracy_top_k_larger_than_classes_is_always_correct(caplog):
    # BVLC Caffe refuses this; DIGITS' Caffe accepted it and the beginners' guide relies on it.
    with caplog.at_level(logging.WARNING, logger="caffe"):
        net = layer_net(ACC + "accuracy_param { top_k: 4 }", {"x": (2, 3), "y": (2,)})
    assert any("larger than the number of classes" in r.getMessage() for r in caplog.records)
    net.blobs["x"].data[...] = np.random.default_rng(0).standard_normal((2, 3))
    net.blobs["y"].data[...] = [0, 2]
    net.forward()
    assert float(net.blobs["acc"].data) == 1.0


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "text",
    [
        SWL,
        'type: "MultinomialLogisticLoss" bottom: "x" bottom: "y"',
        'type: "HingeLoss" bottom: "x" bottom: "y"',
        'type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "y"',
        'type: "EuclideanLoss" bottom: "x" bottom: "y"',
        'type: "InfogainLoss" bottom: "x" bottom: "y" bottom: "h"',
    ],
)
def test_first_dimension_mismatch(text):
    shapes = {"x": (4, 3), "y": (3, 4)}
    if "Infogain" in text:
        shapes["h"] = (3, 3)
    with pytest.raises(caffe.ShapeError, match=r"same first dimension.*\(4, 3\).*\(3, 4\)"):
        layer_net(text, shapes)


@pytest.mark.parametrize("text", [SWL, ACC])
def test_label_count_mismatch(text):
    with pytest.raises(caffe.ShapeError, match=r"Number of labels must match.*\(2, 5, 3\).*\(2, 4\)"):
        layer_net(text, {"x": (2, 5, 3), "y": (2, 4)})


def test_label_count_mismatch_after_reshape():
    net = layer_net(SWL, {"x": (2, 5), "y": (2,)})
    net.blobs["x"].reshape(2, 5, 2)
    with pytest.raises(caffe.ShapeError, match="Number of labels must match"):
        net.reshape()


@pytest.mark.parametrize(
    ("text", "num_classes"),
    [
        (SWL, 5),
        (SWL + "loss_param { ignore_label: 255 }", 5),
        ('type: "MultinomialLogisticLoss" bottom: "x" bottom: "y" top: "out"', 5),
        ('type: "HingeLoss" bottom: "x" bottom: "y" top: "out"', 5),
        ('type: "InfogainLoss" bottom: "x" bottom: "y" bottom: "h" top: "out"', 5),
        ('type: "Accuracy" bottom: "x" bottom: "y" top: "out"', 5),
    ],
)
def test_label_out_of_range(text, num_classes):
    inputs = {"x": RNG.uniform(0.1, 1, (3, num_classes)), "y": np.array([1.0, 5.0, 0.0])}
    if "Infogain" in text:
        inputs["h"] = np.eye(num_classes)
    net = layer_net(text, {k: v.shape for k, v in inputs.items()})
    set_inputs(net, inputs)
    with pytest.raises(caffe.LayerError, match=r"label value 5 .*outside \[0, 5\)"):
        net.forward()
    inputs["y"][1] = -1
    set_inputs(net, inputs)
    with pytest.raises(caffe.LayerError, match=r"label value -1 .*outside \[0, 5\)"):
        net.forward()


def test_ignored_label_may_be_out_of_range():
    x, y = RNG.standard_normal((3, 5)), np.array([1.0, 255.0, -1.0])
    with pytest.raises(caffe.LayerError, match="label value -1"):
        forward(SWL + "loss_param { ignore_label: 255 }", {"x": x, "y": y})
    y[2] = 2
    np.testing.assert_allclose(
        forward(SWL + "loss_param { ignore_label: 255 }", {"x": x, "y": y}), softmax_loss_ref(x, y, ignore=255)
    )


# ---------------------------------------------------------------------------- compiling
COMPILE_CASES = {
    "SoftmaxWithLoss": (SWL + 'top: "prob" loss_param { ignore_label: 255 }', [(2, 5, 3), (2, 3)]),
    "InfogainLoss": ('type: "InfogainLoss" top: "l" loss_param { ignore_label: 255 }', [(2, 5, 3), (2, 3), (5, 5)]),
    "MultinomialLogisticLoss": ('type: "MultinomialLogisticLoss" top: "l"', [(2, 5), (2,)]),
    "HingeLoss": ('type: "HingeLoss" top: "l" hinge_loss_param { norm: L2 }', [(2, 5), (2,)]),
    "SigmoidCrossEntropyLoss": (
        'type: "SigmoidCrossEntropyLoss" top: "l" loss_param { ignore_label: 255 }',
        [(2, 5), (2, 5)],
    ),
    "EuclideanLoss": ('type: "EuclideanLoss" top: "l"', [(2, 5), (2, 5)]),
    "ContrastiveLoss": ('type: "ContrastiveLoss" top: "l"', [(2, 5), (2, 5), (2,)]),
    "Accuracy": (ACC + 'top: "per_class" accuracy_param { ignore_label: 255 top_k: 2 }', [(2, 5, 3), (2, 3)]),
}


@pytest.mark.parametrize("kind", list(COMPILE_CASES))
def test_forward_compiles_without_graph_breaks(kind):
    # No .item() / value-dependent branching: the whole forward is one graph (TEST-phase compile).
    text, shapes = COMPILE_CASES[kind]
    names = ["x", "y", "z"][: len(shapes)]
    if "bottom:" not in text:
        text += "".join(f' bottom: "{n}"' for n in names)
    layer = layer_net(text, dict(zip(names, shapes, strict=True))).layers[-1]
    inputs = [torch.from_numpy(RNG.uniform(0.1, 1, s)) for s in shapes]
    ignored = [(0,) * len(shapes[1])] if "ignore_label" in text else []
    inputs[1] = torch.from_numpy(labels(shapes[1], 2, ignored=ignored))
    compiled = torch.compile(lambda *a: layer.forward(list(a)), backend="eager", fullgraph=True)
    for got, want in zip(compiled(*inputs), layer.forward(inputs), strict=True):
        torch.testing.assert_close(got, want)
    if kind in ("SoftmaxWithLoss", "Accuracy"):
        inputs[1][-1, -1] = 9  # unchecked while compiled: NaN instead of reading out of bounds
        assert torch.isnan(compiled(*inputs)[0])


def test_float32_net_matches_float64_reference():
    x, y = RNG.standard_normal((4, 10)) * 5, labels((4,), 10)
    net = caffe.Net(layer_net(SWL, {"x": x.shape, "y": y.shape}).net_param, caffe.TEST)
    set_inputs(net, {"x": x.astype(np.float32), "y": y.astype(np.float32)})
    net.forward()
    assert net.blobs["loss"].data.dtype == np.float32
    np.testing.assert_allclose(net.blobs["loss"].data, softmax_loss_ref(x.astype(np.float32), y), rtol=1e-5)


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd")
def test_label_pick_is_the_same_gather_when_compiled():
    """SoftmaxWithLoss picks each label's log-probability by a gather eagerly and by a masked sum when
    compiled (its gradient fused, not ATen's scatter): the same values and gradients."""
    from capture import eager_and_compiled_grads

    from caffe.layers.loss import at_labels

    values = torch.randn(5, 7, 3, dtype=torch.float64)
    index = torch.randint(0, 7, (5, 3))
    weights = torch.randn(5, 3, dtype=torch.float64)
    eager, compiled, forward, backward = eager_and_compiled_grads(
        lambda v: (at_labels(v, index) * weights).sum(), values
    )
    assert "gather" not in forward and "scatter" not in backward
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    picked = torch.take_along_dim(values, index.unsqueeze(1), dim=1).squeeze(1)
    torch.testing.assert_close(at_labels(values, index), picked, rtol=0, atol=0)
